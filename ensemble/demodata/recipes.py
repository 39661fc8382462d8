"""What each demo class is made of (event sounds, speech, backgrounds), and what a clip's recipe
says about it: whether its class can be told from what is heard at all."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

# Event sounds of each emergency class: (pool, probability). Related classes share pools
# (screams in assault, robbery and violence; crashes in collapse, earthquake and typhoon; thuds in
# fall and medical emergencies) so that what is said matters, not only what is heard.
EVENT_SOUNDS: dict[str, tuple[tuple[str, float], ...]] = {
    "sexual_assault": (("scream", 0.6), ("hit", 0.3)),
    "robbery": (("scream", 0.4), ("hit", 0.4), ("glass", 0.3)),
    "theft": (("glass", 0.5), ("doors", 0.5), ("steps_in", 0.4)),
    "violence": (("hit", 0.8), ("scream", 0.5), ("crash", 0.2)),
    "trapped": (("bang", 0.9),),
    "electrical_accident": (("electric", 0.9), ("scream", 0.2)),
    "gas_accident": (("hiss", 0.8), ("alarm", 0.3), ("explosion", 0.2)),
    "fire": (("flames", 0.9), ("alarm", 0.4), ("glass", 0.2)),
    "medical_emergency": (("thud", 0.4), ("groan", 0.6)),
    "typhoon": (("wind", 0.9), ("glass", 0.3), ("crash", 0.3)),
    "earthquake": (("rumble", 0.9), ("glass", 0.4), ("crash", 0.4)),
    "fall": (("thud", 0.9), ("groan", 0.5)),
    "collapse": (("crash", 0.9), ("rumble", 0.4), ("scream", 0.3)),
    "help_request": (("bang", 0.2),),
}
SPEECH_PROB = {"help_request": 1.0}  # emergencies with a shouted line; others use the default
DEFAULT_SPEECH_PROB = 0.75
GENERIC_CALL_PROB = 0.3  # a class line followed by "살려주세요!" / "Help!"
KOREAN_PROB = 0.7

# How a pool's sound is laid out in an event: sustained loops (seconds), or repeats (count, gap s).
SUSTAINED = {
    "flames": (3.0, 8.0),
    "wind": (4.0, 9.0),
    "rumble": (3.0, 7.0),
    "hiss": (2.0, 5.0),
    "alarm": (2.0, 5.0),
}
REPEATED = {
    "bang": ((3, 7), (0.25, 0.6)),
    "hit": ((2, 5), (0.2, 0.7)),
    "steps_in": ((4, 9), (0.4, 0.6)),
    "steps_out": ((4, 9), (0.4, 0.6)),
}

# Backgrounds. Normal classes are their background; emergencies draw theirs from one mix, the same
# whatever the class, so the background tells nothing about which emergency it is.
NORMAL_BEDS = {
    "indoor": "indoor",
    "outdoor": "outdoor",
    "washer_dryer": "washer_dryer",
    "vacuum_cleaner": "vacuum_cleaner",
    "other_appliance": "other_appliance",
}
EMERGENCY_BED_MIX = (
    ("indoor", 0.4),
    ("outdoor", 0.3),
    ("washer_dryer", 0.1),
    ("vacuum_cleaner", 0.1),
    ("other_appliance", 0.1),
)
BED_POOLS = {
    "indoor": "bed_indoor",
    "outdoor": "bed_outdoor",
    "washer_dryer": "motor_low",
    "vacuum_cleaner": "motor_air",
    "other_appliance": "machine",
}


@dataclass(frozen=True)
class Motor:
    """How a motor loop becomes an appliance: pitch factor, filter, and a slow level rhythm."""

    pitch: tuple[float, float]  # playback speed factor
    filter: str  # "lowpass" or "highpass"
    cutoff: tuple[float, float]  # Hz
    period: tuple[float, float]  # s, one drum turn or one push of the nozzle
    depth: tuple[float, float]  # fraction of the level the rhythm takes away


MOTORS = {
    "washer_dryer": Motor(
        (0.6, 1.0), "lowpass", (300.0, 1000.0), (0.8, 1.8), (0.3, 0.8)
    ),  # tumbling drum
    "vacuum_cleaner": Motor(
        (1.6, 2.6), "highpass", (250.0, 700.0), (2.0, 4.0), (0.1, 0.3)
    ),  # whining fan
}
# Incidental everyday sounds in normal clips, by background.
INCIDENTAL = {
    "indoor": ("doors", "steps_in", "chimes"),
    "outdoor": ("steps_out", "doors"),
    "washer_dryer": ("doors", "steps_in"),
    "vacuum_cleaner": ("steps_in", "doors"),
    "other_appliance": ("doors", "chimes", "steps_in"),
}
NORMAL_SPEECH_PROB = 0.6
INCIDENTAL_PROB = 0.4

# Levels.
EVENT_SNR_DB = (0.0, 20.0)  # event (speech and sounds) over the background, over the event span
QUIET_TALK_SNR_DB = (5.0, 20.0)  # calm talk over an indoor or outdoor background
LOUD_TALK_SNR_DB = (0.0, 8.0)  # calm talk over a running appliance
PEAK_DB = (-20.0, -1.0)  # final peak level in dBFS
CLIP_SECONDS = (10.0, 30.0)
MAX_EVENT_SECONDS = 16.0

# AI Hub spellings of `category_02` where they differ from the taxonomy's Korean name.
AIHUB_NAMES = {
    "sexual_assault": "강제추행(성범죄)",
    "typhoon": "태풍-강풍",
    "washer_dryer": "가전소음_세탁기/건조기",
    "vacuum_cleaner": "가전소음_청소기",
    "other_appliance": "가전소음_기타소음",
}


def describe() -> str:
    """A Markdown table of what each class is made of (written beside the demo data)."""
    rows = ["| class | event sounds (probability) | speech |", "| --- | --- | --- |"]
    for key, sounds in EVENT_SOUNDS.items():
        snd = ", ".join(f"{pool} ({p:.0%})" for pool, p in sounds)
        sp = SPEECH_PROB.get(key, DEFAULT_SPEECH_PROB)
        rows.append(f"| {key} | {snd} | shouted line, {sp:.0%} of clips |")
    for key, bed in NORMAL_BEDS.items():
        inc = ", ".join(INCIDENTAL[bed])
        rows.append(
            f"| {key} | background `{BED_POOLS[bed]}`; incidental {inc} ({INCIDENTAL_PROB:.0%}) "
            f"| calm line, {NORMAL_SPEECH_PROB:.0%} of clips |"
        )
    return "\n".join(rows)


def draw_bed(key: str, rng: np.random.Generator) -> str:
    """The background of a clip of class `key`: a normal class is its background; an emergency
    draws from `EMERGENCY_BED_MIX` whatever its class, so the bed says nothing of which one."""
    if key not in EVENT_SOUNDS:
        return NORMAL_BEDS[key]
    names, p = zip(*EMERGENCY_BED_MIX, strict=True)
    return str(rng.choice(names, p=np.asarray(p) / sum(p)))


def pool_classes() -> dict[str, frozenset[str]]:
    """Every sound pool -> the classes whose clips may hold it (as an event or incidentally)."""
    out: dict[str, set[str]] = defaultdict(set)
    for key, sounds in EVENT_SOUNDS.items():
        for pool, _ in sounds:
            out[pool].add(key)
    for key, bed in NORMAL_BEDS.items():
        for pool in INCIDENTAL[bed]:
            out[pool].add(key)
    return {pool: frozenset(keys) for pool, keys in out.items()}


def identifiable(key: str, event: dict) -> bool:
    """Whether a clip of class `key` holds evidence of that class alone, from its event recipe
    (`{"sounds": [{"pool": ...}], "speech": {...} | None}`).

    An emergency: a line of its class (every line belongs to one class), or an event sound from a
    pool no other class uses. A normal clip (its background is its class, and no emergency is
    without an event): everyday talk, or no sound that an emergency also makes (a door or steps
    alone could be a theft).
    """
    owners = pool_classes()
    pools = [s["pool"] for s in event["sounds"]]
    if key in EVENT_SOUNDS:
        return event["speech"] is not None or any(owners[p] == {key} for p in pools)
    return event["speech"] is not None or not any(owners[p] & EVENT_SOUNDS.keys() for p in pools)


def origin(bed_sources: list[str], event: dict) -> list[str]:
    """What a clip is made of: its voice engine (if anyone speaks) and the Debian packages of its
    sounds (source ids are `<package>/<path>`), sorted."""
    parts = {src.split("/", 1)[0] for src in bed_sources}
    parts |= {s["source"].split("/", 1)[0] for s in event["sounds"]}
    if event["speech"] is not None:
        parts.add(event["speech"]["voice"].get("engine", "espeak-ng"))
    return sorted(parts)


def evidence_given_class(key: str) -> dict[tuple, float]:
    """P(what a listener can know | class `key`), from the recipes: `(bed, pools, speech)` tuples.

    A class line names its class (speech `line:<key>`); everyday talk over a bed names the normal
    class of that bed. Otherwise a listener has the bed and the set of sound pools heard. Every
    emergency has an event: with no sound drawn, its line is always spoken.
    """
    out: dict[tuple, float] = defaultdict(float)
    if key in EVENT_SOUNDS:
        speech = SPEECH_PROB.get(key, DEFAULT_SPEECH_PROB)
        sounds = EVENT_SOUNDS[key]
        for bits in range(1 << len(sounds)):
            p_set, pools = 1.0, []
            for i, (pool, p) in enumerate(sounds):
                on = bool(bits >> i & 1)
                p_set *= p if on else 1 - p
                pools += [pool] if on else []
            if not pools:
                out[("", (), f"line:{key}")] += p_set
                continue
            out[("", (), f"line:{key}")] += p_set * speech
            for bed, p_bed in EMERGENCY_BED_MIX:
                out[(bed, tuple(sorted(pools)), "")] += p_set * (1 - speech) * p_bed
    else:
        bed = NORMAL_BEDS[key]
        out[(bed, (), "talk")] += NORMAL_SPEECH_PROB
        quiet = 1 - NORMAL_SPEECH_PROB
        out[(bed, (), "")] += quiet * (1 - INCIDENTAL_PROB)
        for pool in INCIDENTAL[bed]:
            out[(bed, (pool,), "")] += quiet * INCIDENTAL_PROB / len(INCIDENTAL[bed])
    return dict(out)


def ceiling(keys: list[str]) -> tuple[float, dict[str, float]]:
    """The best expected 19-class accuracy any model can reach on demo clips of `keys` (equally
    many of each), overall and per class: every evidence answered with the class most likely
    behind it. Clips with the same evidence but another class cannot all be right."""
    given = {k: evidence_given_class(k) for k in keys}
    best: dict[tuple, str] = {}
    for ev in {e for dist in given.values() for e in dist}:
        best[ev] = max(keys, key=lambda k: given[k].get(ev, 0.0))
    per_class = {k: sum(p for ev, p in given[k].items() if best[ev] == k) for k in keys}
    return sum(per_class.values()) / len(keys), per_class
