"""Lay sounds and speech out in time: event tracks, background beds, everyday foregrounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ensemble.core.audio import SAMPLE_RATE
from ensemble.demodata import recipes
from ensemble.demodata.sources import SourcePool
from ensemble.demodata.synth import (
    active_span,
    filtered,
    loop_to,
    mix_at_snr,
    modulate,
    overdrive,
    place,
    repitch,
    reverb,
    rms,
)

REF_RMS = 0.1  # every part is brought to this RMS before its relative gain


@dataclass
class Event:
    """A foreground track `(N,)` with what it holds: transcript, speaker id and a recipe to rebuild it."""

    wave: np.ndarray
    transcript: str = ""
    speaker: Any = None  # build.Speaker, or None when nothing is said
    recipe: dict = field(default_factory=dict)


def _db(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(10 ** (rng.uniform(lo, hi) / 20))


def _at_ref(wave: np.ndarray) -> np.ndarray:
    level = rms(wave)
    return (wave * (REF_RMS / level)).astype(np.float32) if level > 0 else wave


def _pick(pool: SourcePool, name: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    ids = pool.pools[name]
    source_id = ids[int(rng.integers(len(ids)))]
    return source_id, np.asarray(pool.sound(source_id), dtype=np.float32)


def sound_part(name: str, pool: SourcePool, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One event sound from pool `name`: a sustained loop, a run of repeats, or a single hit."""
    source_id, base = _pick(pool, name, rng)
    base = repitch(base, float(rng.uniform(0.9, 1.1)))
    info: dict = {"pool": name, "source": source_id}
    if name in recipes.SUSTAINED:
        seconds = float(rng.uniform(*recipes.SUSTAINED[name]))
        wave = loop_to(base, int(seconds * SAMPLE_RATE), rng)
        ramp = np.linspace(0, 1, int(0.2 * SAMPLE_RATE), dtype=np.float32)
        wave[: len(ramp)] *= ramp
        wave[-len(ramp) :] *= ramp[::-1]
        info["seconds"] = round(seconds, 2)
    elif name in recipes.REPEATED:
        (lo, hi), (gap_lo, gap_hi) = recipes.REPEATED[name]
        count = int(rng.integers(lo, hi))
        starts = np.cumsum(
            [0] + [int(rng.uniform(gap_lo, gap_hi) * SAMPLE_RATE) for _ in range(count - 1)]
        )
        wave = np.zeros(int(starts[-1]) + len(base), dtype=np.float32)
        for s in starts:
            place(wave, base, int(s), _db(rng, -3, 3))
        info["repeats"] = count
    else:
        wave = base.copy()
    return _at_ref(wave) * _db(rng, -8, 3), info


def render_event(
    sounds: list[str], talk: dict | None, pool: SourcePool, rng: np.random.Generator
) -> Event:
    """An emergency: event sounds and a shouted line laid out in sequence, overlapping at times."""
    parts = [(*sound_part(name, pool, rng), name in recipes.SUSTAINED) for name in sounds]
    speech_info = None
    if talk is not None:
        drive = float(rng.uniform(1.5, 5.0))
        parts.append(
            (_at_ref(overdrive(talk["wave"], drive)) * _db(rng, 0, 4), {"pool": "speech"}, False)
        )
        speech_info = _speech_info(talk, drive=round(drive, 2))
    sustained = [p for p in parts if p[2]]
    others = [p for p in parts if not p[2]]
    order = [others[i] for i in rng.permutation(len(others))]
    n_max = int(recipes.MAX_EVENT_SECONDS * SAMPLE_RATE)
    track = np.zeros(n_max, dtype=np.float32)
    cursor = 0
    for wave, info, _ in sustained:  # beds of the event: fire, wind, rumble, alarm
        place(track, wave, 0)
        info["start"] = 0.0
        cursor = int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
    for wave, info, _ in order:
        start = min(max(cursor + int(rng.uniform(-0.3, 0.8) * SAMPLE_RATE), 0), n_max - 1)
        place(track, wave, start)
        info["start"] = round(start / SAMPLE_RATE, 3)
        cursor = start + len(wave)
    rt60, wet = float(rng.uniform(0.2, 0.7)), float(rng.uniform(0.1, 0.4))
    track = reverb(track, rt60, wet, rng)
    lo, hi = active_span(track)
    recipe = {
        "sounds": [p[1] for p in parts if p[1]["pool"] != "speech"],
        "speech": speech_info,
        "reverb": {"rt60": round(rt60, 3), "wet": round(wet, 3)},
    }
    return Event(
        track[lo:hi], talk["text"] if talk else "", talk["speaker"] if talk else None, recipe
    )


def _speech_info(talk: dict, **extra: Any) -> dict:
    return {
        "text": talk["text"],
        "speaker": talk["speaker"].id,
        "voice": asdict(talk["voice"]),
        **extra,
    }


def render_bed(
    kind: str, n: int, pool: SourcePool, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """`n` samples of background `kind`: a room, a street, or an appliance made from motor loops.

    No package holds a real washing machine or vacuum cleaner: a washer/dryer is a pump or hum,
    slowed and low-passed, with a tumbling rhythm; a vacuum cleaner is a ventilation or drone loop
    pitched up and high-passed; other appliances are printer, generator and mill loops.
    """
    source_id, base = _pick(pool, recipes.BED_POOLS[kind], rng)
    sources = [source_id]
    if kind in recipes.MOTORS:
        m = recipes.MOTORS[kind]
        base = filtered(
            repitch(base, float(rng.uniform(*m.pitch))), m.filter, float(rng.uniform(*m.cutoff))
        )
        looped = loop_to(base, n, rng)  # draws from rng before the rhythm does
        period, depth = float(rng.uniform(*m.period)), float(rng.uniform(*m.depth))
        wave = modulate(looped, period, depth, float(rng.uniform(0, 2 * np.pi)))
    elif kind == "other_appliance":
        wave = loop_to(repitch(base, float(rng.uniform(0.85, 1.2))), n, rng)
    else:
        wave = loop_to(base, n, rng)
        if kind == "outdoor" and rng.random() < 0.5:  # a second layer: traffic under a market, ...
            second_id, second = _pick(pool, "bed_outdoor", rng)
            wave = wave + _at_ref(loop_to(second, n, rng)) * _db(rng, -12, -3) * (
                rms(wave) / REF_RMS
            )
            sources.append(second_id)
        if kind == "indoor" and rng.random() < 0.5:  # heard through a wall or a door
            wave = filtered(wave, "lowpass", float(rng.uniform(2500, 6000)))
    return _at_ref(wave), sources


def render_normal_foreground(
    bed: np.ndarray, kind: str, talk: dict | None, pool: SourcePool, rng: np.random.Generator
) -> tuple[np.ndarray, float | None, Event]:
    """An everyday clip: calm talk and incidental sounds (a door, footsteps) over the bed."""
    n = len(bed)
    fg = np.zeros(n, dtype=np.float32)
    sounds = []
    if rng.random() < recipes.INCIDENTAL_PROB:
        wave, info = sound_part(str(rng.choice(recipes.INCIDENTAL[kind])), pool, rng)
        start = int(rng.integers(0, max(n - len(wave), 1)))
        place(fg, wave, start)
        info["start"] = round(start / SAMPLE_RATE, 3)
        sounds.append(info)
    speech_info = None
    if talk is not None:
        wave = reverb(
            _at_ref(talk["wave"]), float(rng.uniform(0.15, 0.4)), float(rng.uniform(0.05, 0.2)), rng
        )
        start = int(rng.integers(0, max(n - len(wave), 1)))
        place(fg, wave, start)
        speech_info = _speech_info(talk, start=round(start / SAMPLE_RATE, 3))
    recipe = {"sounds": sounds, "speech": speech_info}
    event = Event(fg, talk["text"] if talk else "", talk["speaker"] if talk else None, recipe)
    lo, hi = active_span(fg)
    if hi == 0:
        return bed.copy(), None, event
    snr_range = (
        recipes.LOUD_TALK_SNR_DB
        if kind in ("washer_dryer", "vacuum_cleaner", "other_appliance")
        else recipes.QUIET_TALK_SNR_DB
    )
    snr = float(rng.uniform(*snr_range))
    return mix_at_snr(bed, fg, snr, (lo, hi)), snr, event
