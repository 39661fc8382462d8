"""Pure signal functions that build demo clips: speech, effects, loops, appliance beds, mixing.

Every function takes 16 kHz mono float32 `(N,)` arrays and, where it draws anything, an explicit
`numpy.random.Generator`, so one seed rebuilds a clip byte for byte.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from ensemble.core.audio import SAMPLE_RATE, to_mono_16k

FADE_S = 0.05  # crossfade between loop repeats


ENGINES = ("espeak-ng", "festival")


@dataclass(frozen=True)
class Voice:
    """A synthetic voice.

    espeak-ng: `language` (`ko`, `en-us`, ...), `variant` (`m3`, `aunty`, ...), `pitch` 0-99 and
    `speed` in words per minute. festival (`ked_diphone`, English): `pitch` is the mean F0 in Hz,
    `speed` 100 = the voice's own tempo. `formant` > 1 plays the result faster and higher (a
    smaller vocal tract; the F0 and tempo asked for are kept): several speakers from one voice.
    """

    language: str
    variant: str
    pitch: int
    speed: int
    engine: str = "espeak-ng"
    formant: float = 1.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")


def speak(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by `voice`, as `(N,)` 16 kHz audio with leading and trailing silence trimmed."""
    wave = _festival(text, voice) if voice.engine == "festival" else _espeak(text, voice)
    return trim(repitch(wave, voice.formant))


def _espeak(text: str, voice: Voice) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed for the demo's speech: apt-get install espeak-ng")
    cmd = [
        "espeak-ng",
        "-v",
        f"{voice.language}+{voice.variant}",
        "-p",
        str(voice.pitch),
        "-s",
        str(round(voice.speed / voice.formant)),
        "--stdout",
        text,
    ]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    wave, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return to_mono_16k(wave, sr)


def _festival(text: str, voice: Voice) -> np.ndarray:
    """festival's `ked_diphone` voice (Debian festvox-kdlpc16k) through `text2wave`."""
    if shutil.which("text2wave") is None:
        raise RuntimeError(
            "festival's ked voice is needed for the demo's speech: "
            "apt-get install festival festvox-kdlpc16k"
        )
    f0 = voice.pitch / voice.formant  # the formant shift raises it back
    stretch = 100.0 / voice.speed * voice.formant  # > 1 is slower
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        cmd = [
            "text2wave",
            "-eval",
            f"(voice_{voice.variant})",
            "-eval",
            f"(Parameter.set 'Duration_Stretch {stretch:.3f})",
            "-eval",
            f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std {0.16 * f0:.1f}) "
            "(model_f0_mean 170) (model_f0_std 34)))",
            "-o",
            str(out),
        ]
        run = subprocess.run(cmd, input=text.encode(), capture_output=True)
        if run.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"festival could not speak {text!r} with voice_{voice.variant}: "
                f"{run.stderr.decode(errors='replace').strip()} (is festvox-kdlpc16k installed?)"
            )
        wave, sr = sf.read(out, dtype="float32")
    return to_mono_16k(wave, sr)


def trim(wave: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Drop leading and trailing samples quieter than `threshold_db` below the peak."""
    start, end = active_span(wave, threshold_db)
    return wave[start:end]


def active_span(wave: np.ndarray, threshold_db: float = -40.0) -> tuple[int, int]:
    """(first, last + 1) sample index louder than `threshold_db` below the peak; (0, 0) if silent."""
    level = np.abs(wave)
    peak = float(level.max()) if len(level) else 0.0
    if peak == 0.0:
        return 0, 0
    loud = np.flatnonzero(level >= peak * 10 ** (threshold_db / 20))
    return int(loud[0]), int(loud[-1]) + 1


def overdrive(wave: np.ndarray, drive: float) -> np.ndarray:
    """Soft clipping, as a strained shouting voice or an overloaded cheap microphone."""
    return np.tanh(drive * wave) / np.tanh(drive)


def reverb(wave: np.ndarray, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Room reverb from a synthetic impulse response: decaying noise with the given RT60 (s)."""
    n = max(int(rt60 * SAMPLE_RATE), 1)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * t / rt60).astype(np.float32)
    ir /= np.sqrt(np.sum(ir**2))
    tail = signal.fftconvolve(wave, ir)[: len(wave) + n // 2]
    dry = np.pad(wave, (0, len(tail) - len(wave)))
    return ((1 - wet) * dry + wet * tail).astype(np.float32)


def repitch(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (and higher): resampling, as a tape would."""
    if abs(factor - 1.0) < 1e-3:
        return np.asarray(wave, dtype=np.float32)
    return soxr.resample(
        np.asarray(wave, np.float32), SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ"
    )


def filtered(wave: np.ndarray, kind: str, cutoff: float | tuple[float, float]) -> np.ndarray:
    """Butterworth filter (`lowpass`, `highpass`, `bandpass`) of order 4, cutoff in Hz."""
    sos = signal.butter(4, cutoff, btype=kind, fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, wave).astype(np.float32)


def loop_to(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of `wave` repeated from a random start, with short crossfades at the joins."""
    wave = np.asarray(wave, dtype=np.float32)
    fade = min(int(FADE_S * SAMPLE_RATE), len(wave) // 4)
    out = np.zeros(n + len(wave), dtype=np.float32)
    pos = -int(rng.integers(0, len(wave)))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    while pos < n:
        piece = wave.copy()
        if fade:
            piece[:fade] *= ramp
            piece[-fade:] *= ramp[::-1]
        lo = max(pos, 0)
        out[lo : pos + len(piece)] += piece[lo - pos :]
        pos += len(piece) - fade
    return out[:n]


def modulate(wave: np.ndarray, period_s: float, depth: float, phase: float) -> np.ndarray:
    """Slow amplitude rhythm: gain swings between 1 - depth and 1 every `period_s` seconds."""
    t = np.arange(len(wave)) / SAMPLE_RATE
    gain = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * t / period_s + phase))
    return (wave * gain).astype(np.float32)


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0


def place(track: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add `sound` into `track` at sample `start`, cut at the track's end (in place)."""
    end = min(start + len(sound), len(track))
    if end > start:
        track[start:end] += gain * sound[: end - start]


def mix_at_snr(bed: np.ndarray, fg: np.ndarray, snr_db: float, span: tuple[int, int]) -> np.ndarray:
    """bed + fg, fg scaled so that its RMS over `span` is `snr_db` above the bed's RMS there."""
    lo, hi = span
    bed_rms, fg_rms = rms(bed[lo:hi]), rms(fg[lo:hi])
    if fg_rms == 0.0:
        return bed.copy()
    if bed_rms == 0.0:
        return bed + fg
    return bed + fg * (bed_rms / fg_rms) * 10 ** (snr_db / 20)


def normalize_peak(wave: np.ndarray, peak_db: float) -> np.ndarray:
    peak = float(np.abs(wave).max())
    return (wave * (10 ** (peak_db / 20) / peak)).astype(np.float32) if peak > 0 else wave
