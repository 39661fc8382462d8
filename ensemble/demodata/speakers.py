"""The demo's synthetic speakers: who records which script set and session, with which voice.

espeak-ng gives the Korean and most English voices (its variants that sound like people, at their
own pitch and speed); festival's `ked_diphone` voice alone reads the English of `FESTIVAL_SETS`, so
that a voice engine can be held out with its scripts. Every speaker records one session of one
script set in one language (`scripts.SESSIONS`), which keeps leak-free groups small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.demodata.scripts import N_SETS, SESSIONS
from ensemble.demodata.synth import Voice

SPEAKERS_PER_SESSION = {"ko": 2, "en": 2}  # of each script set
# English of these script sets is read by festival's ked diphone voice alone, like a recording
# session of its own: `split --holdout-source festival` keeps it out of training, transcripts too
FESTIVAL_SETS = frozenset({8, 9})
# espeak-ng variants that sound like people (its robots, whispers and announcers left out), by
# the gender espeak-ng gives them
VARIANTS = {
    "남성": (
        "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "adam", "Alex", "Andy", "antonio",
        "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "Gene",
        "gustave", "Henrique", "Hugo", "iven", "Jacky", "john", "Lee", "marcelo", "Marco", "max",
        "Michael", "michel", "miguel", "Mike", "pablo", "paul", "pedro", "quincy", "rob",
        "robert", "zac", "grandpa", "klatt", "klatt2", "klatt3", "norbert", "sandro", "shelby",
        "travis", "victor",
    ),
    "여성": (
        "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "aunty", "belinda", "linda",
        "steph", "steph2", "steph3", "anika", "grandma",
    ),
}  # fmt: skip
LANGUAGES = {"ko": ("ko",), "en": ("en-us", "en-gb")}
GENERATIONS = ("청년", "중년", "노년")


@dataclass(frozen=True)
class Speaker:
    id: str
    script_set: int
    session: int  # index into scripts.SESSIONS
    language: str  # "ko" or "en"
    voice: Voice
    gender: str  # 남성 / 여성
    generation: str


def make_speakers(seed: int) -> list[Speaker]:
    """Synthetic speakers, each recording one session of one script set; no two share a voice."""
    rng = np.random.default_rng([seed, 0x5EA4])
    speakers, used = [], set()
    for s in range(N_SETS):
        for k in range(len(SESSIONS)):
            for lang, n in SPEAKERS_PER_SESSION.items():
                festival = lang == "en" and s in FESTIVAL_SETS
                for _ in range(n):
                    while True:
                        voice, gender = (_ked if festival else _espeak_voice)(lang, rng)
                        if voice not in used:
                            break
                    used.add(voice)
                    sid = f"spk{len(speakers):03d}"
                    generation = str(rng.choice(GENERATIONS))
                    speakers.append(Speaker(sid, s, k, lang, voice, gender, generation))
    return speakers


def _espeak_voice(lang: str, rng: np.random.Generator) -> tuple[Voice, str]:
    gender = str(rng.choice(list(VARIANTS)))
    voice = Voice(
        str(rng.choice(LANGUAGES[lang])),
        str(rng.choice(VARIANTS[gender])),
        int(rng.integers(25, 70)),
        int(rng.integers(140, 185)),
    )
    return voice, gender


def _ked(lang: str, rng: np.random.Generator) -> tuple[Voice, str]:
    """festival's one English voice made into several speakers: F0, tempo and vocal-tract size."""
    pitch, formant = int(rng.integers(85, 170)), round(float(rng.uniform(0.92, 1.15)), 2)
    voice = Voice("en", "ked_diphone", pitch, int(rng.integers(85, 116)), "festival", formant)
    return voice, "여성" if pitch >= 140 and formant >= 1.08 else "남성"
