"""Build the demo dataset: synthetic clips in the AI Hub layout (label JSON + wav).

`make_demo_data(out, per_class, seed)` writes `out/Training/[라벨]N.<class>/<stem>.json` and
`out/Training/[원천]N.<class>_1/<stem>.wav`, and returns the truth of every clip (class, segment,
transcript, speaker) so that an import can be checked against it. One seed, the same bytes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.progress import progress as progress_bar
from ensemble.demodata import recipes
from ensemble.demodata.scripts import (
    EMERGENCY_LINES,
    EVERYDAY,
    EVERYDAY_LINES,
    GENERIC_CALLS,
    N_SETS,
    line_set,
    session,
)
from ensemble.demodata.sources import SourcePool, load_pool
from ensemble.demodata.speakers import Speaker, make_speakers
from ensemble.demodata.synth import active_span, filtered, mix_at_snr, normalize_peak, speak
from ensemble.demodata.timeline import Event, render_bed, render_event, render_normal_foreground

log = logging.getLogger(__name__)
DEFAULT_PER_CLASS = 80  # 40+ training clips of every class once sources are held out
CEILING_FILE = "ceiling.yaml"  # beside the clips: what can be learned from them


@dataclass(frozen=True)
class ClipTruth:
    """What was generated for one clip: the answer an import must give back."""

    stem: str
    label: str
    event_start: float
    event_end: float
    transcript: str
    speaker: str
    audio: str  # path relative to the dataset root
    label_json: str
    background: str  # the normal class of the bed under the clip
    identifiable: bool
    origin: str  # ";"-joined voice engine and sound packages


def make_demo_data(
    out: str | Path,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    taxonomy: Taxonomy | None = None,
    cache: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[ClipTruth]:
    """Write `per_class` clips of every class under `out`; returns the truth of every clip."""
    taxonomy = taxonomy or load_taxonomy()
    out = Path(out)
    pool = load_pool(Path(cache) if cache else None)
    jobs = [(c.key, c.id, i) for c in taxonomy.classes[1:] for i in range(per_class)]
    build = partial(
        _build_clip, out=out, seed=seed, pool=pool, taxonomy=taxonomy, speakers=make_speakers(seed)
    )
    bar = dict(total=len(jobs), desc="demo clips", unit="clip", disable=not progress)
    if workers > 1:
        # spawned, not forked: a fork of a process whose threads hold locks (torch, BLAS) can hang
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            truths = list(progress_bar(ex.map(build, jobs, chunksize=4), **bar))
    else:
        truths = [build(job) for job in progress_bar(jobs, **bar)]
    summary = ceiling_summary(truths, taxonomy)
    # YAML, not JSON: every .json under the root is read as an AI Hub label by `import-aihub`
    (out / CEILING_FILE).write_text(yaml.safe_dump(summary, sort_keys=False), encoding="utf-8")
    (out / "README.md").write_text(_readme(per_class, seed, summary), encoding="utf-8")
    return truths


def ceiling_summary(truths: list[ClipTruth], taxonomy: Taxonomy) -> dict:
    """Per class and overall: clips, the share identifiable, and the best possible 19-class
    accuracy (`recipes.ceiling`, expected over the recipes' draws)."""
    best, per_class = recipes.ceiling([c.key for c in taxonomy.classes[1:]])
    rows = {}
    for c in taxonomy.classes[1:]:
        mine = [t for t in truths if t.label == c.key]
        if mine:
            rows[c.key] = {
                "clips": len(mine),
                "identifiable": round(sum(t.identifiable for t in mine) / len(mine), 4),
                "best_acc19": round(per_class[c.key], 4),
            }
    return {
        "clips": len(truths),
        "identifiable": round(sum(t.identifiable for t in truths) / max(len(truths), 1), 4),
        "best_acc19": round(best, 4),
        "classes": rows,
    }


def _build_clip(
    job: tuple[str, int, int],
    out: Path,
    seed: int,
    pool: SourcePool,
    taxonomy: Taxonomy,
    speakers: list[Speaker],
) -> ClipTruth:
    key, class_id, index = job
    rng = np.random.default_rng([seed, class_id, index])
    script_set = int(rng.integers(N_SETS))
    duration = float(rng.uniform(*recipes.CLIP_SECONDS))
    if taxonomy[key].emergency:
        event = _emergency_event(key, script_set, speakers, pool, rng)
        duration = max(duration, len(event.wave) / SAMPLE_RATE + 2.0)
        bed_kind = recipes.draw_bed(key, rng)
    else:
        event, bed_kind = None, recipes.draw_bed(key, rng)
    n = round(duration * SAMPLE_RATE)
    bed, bed_sources = render_bed(bed_kind, n, pool, rng)
    if event is not None:
        wave, start, end, snr = _mix_event(bed, event, rng)
    else:
        talk = _everyday_talk(script_set, speakers, rng)
        wave, snr, event = render_normal_foreground(bed, bed_kind, talk, pool, rng)
        start, end = 0.0, round(n / SAMPLE_RATE, 3)
    wave = normalize_peak(filtered(wave, "highpass", 60.0), float(rng.uniform(*recipes.PEAK_DB)))
    recipe = {
        "seed": [seed, class_id, index],
        "background": {"kind": bed_kind, "sources": bed_sources},
        "event": event.recipe,
        "snr_db": None if snr is None else round(snr, 2),
    }
    recipe |= {
        "identifiable": recipes.identifiable(key, event.recipe),
        "origin": recipes.origin(bed_sources, event.recipe),
    }
    return _write_clip(out, taxonomy, key, index, wave, (start, end), event, recipe)


def _emergency_event(
    key: str, script_set: int, speakers: list[Speaker], pool: SourcePool, rng: np.random.Generator
) -> Event:
    sounds = [pool_name for pool_name, p in recipes.EVENT_SOUNDS[key] if rng.random() < p]
    talk = None
    if rng.random() < recipes.SPEECH_PROB.get(key, recipes.DEFAULT_SPEECH_PROB) or not sounds:
        lang = "ko" if rng.random() < recipes.KOREAN_PROB else "en"
        lines = EMERGENCY_LINES[key][0 if lang == "ko" else 1]
        text = next(line for i, line in enumerate(lines) if line_set(i) == script_set)
        if rng.random() < recipes.GENERIC_CALL_PROB:
            text += " " + str(rng.choice(GENERIC_CALLS[0 if lang == "ko" else 1]))
        talk = _talk(text, lang, (script_set, session(key)), speakers, rng, shouted=True)
    return render_event(sounds, talk, pool, rng)


def _everyday_talk(
    script_set: int, speakers: list[Speaker], rng: np.random.Generator
) -> dict | None:
    if rng.random() >= recipes.NORMAL_SPEECH_PROB:
        return None
    lang = "ko" if rng.random() < recipes.KOREAN_PROB else "en"
    lines = EVERYDAY_LINES[0 if lang == "ko" else 1]
    text = str(rng.choice([line for i, line in enumerate(lines) if line_set(i) == script_set]))
    return _talk(text, lang, (script_set, session(EVERYDAY)), speakers, rng, shouted=False)


def _talk(
    text: str,
    lang: str,
    where: tuple[int, int],
    speakers: list[Speaker],
    rng: np.random.Generator,
    shouted: bool,
) -> dict:
    """A line spoken by a speaker of `where` (script set, session): raised pitch and speed when
    shouted."""
    candidates = [s for s in speakers if (s.script_set, s.session) == where and s.language == lang]
    spk = candidates[int(rng.integers(len(candidates)))]
    v = spk.voice
    if shouted and v.engine == "festival":  # F0 in Hz, speed in % of the voice's tempo
        v = replace(
            v, pitch=v.pitch + int(rng.integers(25, 51)), speed=v.speed + int(rng.integers(15, 36))
        )
    elif shouted:
        v = replace(
            v,
            pitch=min(99, v.pitch + int(rng.integers(15, 31))),
            speed=v.speed + int(rng.integers(20, 51)),
        )
    wave = speak(text, v)
    return {"text": text, "wave": wave, "speaker": spk, "voice": v, "shouted": shouted}


def _mix_event(
    bed: np.ndarray, event: Event, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, float]:
    """Event placed at a random offset over the bed at a random SNR; returns wave, segment (s), SNR."""
    slack = len(bed) - len(event.wave)
    margin = min(int(0.5 * SAMPLE_RATE), slack // 2)
    offset = int(rng.integers(margin, slack - margin + 1))
    fg = np.zeros_like(bed)
    fg[offset : offset + len(event.wave)] = event.wave
    lo, hi = active_span(fg)
    snr = float(rng.uniform(*recipes.EVENT_SNR_DB))
    wave = mix_at_snr(bed, fg, snr, (lo, hi))
    return wave, round(lo / SAMPLE_RATE, 3), round(hi / SAMPLE_RATE, 3), snr


def _folder(taxonomy: Taxonomy, key: str) -> str:
    c = taxonomy[key]
    return f"{c.id}.{c.ko.replace('/', '-').replace(' ', '_')}"


def _write_clip(
    out: Path,
    taxonomy: Taxonomy,
    key: str,
    index: int,
    wave: np.ndarray,
    segment: tuple[float, float],
    event: Event,
    recipe: dict,
) -> ClipTruth:
    """Write `<stem>.wav` and its AI Hub label JSON; return what was written."""
    folder = _folder(taxonomy, key)
    stem = f"{taxonomy[key].id:02d}_{index:05d}"
    audio = Path("Training") / f"[원천]{folder}_1" / f"{stem}.wav"
    label = Path("Training") / f"[라벨]{folder}" / f"{stem}.json"
    for rel in (audio, label):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    sf.write(out / audio, wave, SAMPLE_RATE, subtype="PCM_16")
    duration = round(len(wave) / SAMPLE_RATE, 3)
    doc = {
        "audio": {
            "fileName": audio.name,
            "fileSize": (out / audio).stat().st_size,
            "duration": duration,
            "sampleRate": SAMPLE_RATE,
            "bitRate": SAMPLE_RATE * 16,
            "recodingType": "synthetic: espeak-ng speech, Debian game and sample sounds",
        },
        "annotations": [_annotation(taxonomy, key, stem, segment, event, recipe)],
        "synthesis": recipe,
    }
    (out / label).write_text(
        json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    spk = event.speaker.id if event.speaker else ""
    return ClipTruth(
        stem,
        key,
        segment[0],
        segment[1],
        event.transcript,
        spk,
        str(audio),
        str(label),
        recipe["background"]["kind"],
        recipe["identifiable"],
        ";".join(recipe["origin"]),
    )


def _annotation(
    taxonomy: Taxonomy,
    key: str,
    stem: str,
    segment: tuple[float, float],
    event: Event,
    recipe: dict,
) -> dict:
    emergency = taxonomy[key].emergency
    has_sound = bool(recipe["event"]["sounds"]) or not emergency
    ann = {
        "audio_id": stem,
        "area": {"start": segment[0], "end": segment[1]},
        "categories": {
            "category_01": "위급상황" if emergency else "비위급상황",
            "category_02": recipes.AIHUB_NAMES.get(key, taxonomy[key].ko),
            "category_03": "음성+음향"
            if event.transcript and has_sound
            else ("음성" if event.transcript else "음향"),
        },
        "note": event.transcript,
        "audioType": "synthetic",
        "soundQuality": _quality(recipe["snr_db"]),
        "soundDistance": "근거리"
        if recipe["event"].get("reverb", {}).get("wet", 0) < 0.25
        else "원거리",
    }
    if event.speaker is not None:  # as in AI Hub, clips without speech carry no speaker fields
        spk = event.speaker
        ann.update(
            gender=spk.gender,
            generation=spk.generation,
            dialect="표준어" if spk.language == "ko" else "영어",
            speaker=spk.id,
        )
    return ann


def _quality(snr: float | None) -> str:
    if snr is None or snr >= 12:
        return "좋음"
    return "보통" if snr >= 5 else "나쁨"


def _ceiling_table(summary: dict) -> str:
    rows = [
        f"Best possible 19-class accuracy on these clips: **{summary['best_acc19']:.3f}**; "
        f"{summary['identifiable']:.1%} of the clips are identifiable (their speech or an event "
        "sound belongs to their class alone).",
        "",
        "| class | clips | identifiable | best possible accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, r in summary["classes"].items():
        rows.append(f"| {key} | {r['clips']} | {r['identifiable']:.0%} | {r['best_acc19']:.2f} |")
    return "\n".join(rows)


def _readme(per_class: int, seed: int, summary: dict) -> str:
    return f"""# emergency-ensemble demo data

Synthetic clips in the AI Hub layout (`Training/[라벨]N.<class>/*.json`, `Training/[원천]N.<class>_1/*.wav`),
{per_class} clips per class, seed {seed}, 16 kHz mono 16-bit. Import with
`emergency-ensemble import-aihub <this folder> --out manifest.csv`.

Speech is espeak-ng (Korean and English voices; shouted lines have raised pitch and speed, overdrive
and room reverb). Sounds come from the Debian packages ufoai-sound, lugaru-data, lincity-ng-data and
sonic-pi-samples. No package holds a real washing machine, dryer or vacuum cleaner: those classes are
built from pump, hum, ventilation, generator, printer and mill loops (washer/dryer: slowed, low-passed,
with a tumbling rhythm; vacuum: pitched up and high-passed). Emergency clips draw their background
from one mix whatever their class. Each label JSON's `synthesis` field records the seed, the sources,
the voice and the SNR of its clip, whether the clip is identifiable, and what it is made of.

{recipes.describe()}

## What can be learned

A clip is identifiable when its speech or an event sound belongs to its class alone. A speechless
clip whose sounds several classes share (a scream, a crash, a thud) cannot be told apart from its
neighbours by anyone: answered with the class most often behind the same sounds, it is right only
that often. `{CEILING_FILE}` holds these figures.

{_ceiling_table(summary)}
"""
