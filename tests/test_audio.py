"""ensemble.core.audio: loading good, odd and broken files; timestep arithmetic; windowing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ensemble.core import audio
from ensemble.core.audio import AudioError, frame_windows, load_audio, stream_windows

SR = audio.SAMPLE_RATE


def sine(sr: int, freq: float = 440.0, amp: float = 0.5, dur: float = 2.0) -> np.ndarray:
    t = np.arange(round(dur * sr)) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * SR / len(wave))


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def assert_sine(
    wave: np.ndarray,
    dur: float = 2.0,
    freq: float = 440.0,
    amp: float = 0.5,
    rms_rtol: float = 0.02,
    max_err: float | None = None,
) -> None:
    """16 kHz mono float32 of the right length holding `amp * sin(2 pi freq t)`."""
    assert wave.dtype == np.float32
    assert wave.ndim == 1
    assert abs(len(wave) - dur * SR) <= 2, len(wave)
    assert abs(dominant_hz(wave) - freq) <= 2.0
    assert rms(wave) == pytest.approx(amp / np.sqrt(2), rel=rms_rtol)
    if max_err is not None:  # sample by sample, away from the resampler's edges
        ref = sine(SR, freq, amp, dur)[: len(wave)]
        assert np.abs(wave[200:-200] - ref[200:-200]).max() < max_err


@pytest.fixture
def good_wav(tmp_path: Path) -> Path:
    path = tmp_path / "good.wav"
    sf.write(path, sine(SR), SR, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------------------------
# constants and conversions


def test_constants():
    assert audio.SAMPLE_RATE == 16000
    assert audio.N_SAMPLES == 480000
    assert audio.N_FRAMES == 3000
    assert audio.N_TIMESTEPS == 1500
    assert audio.TIMESTEPS_PER_SECOND == 50
    assert audio.FRAMES_PER_SECOND == 100
    assert audio.TIMESTEP_SECONDS == 0.02


def test_exact_div_refuses_remainder():
    assert audio.exact_div(480000, 160) == 3000
    with pytest.raises(AssertionError):
        audio.exact_div(480001, 160)


def test_seconds_to_timesteps():
    assert audio.seconds_to_timesteps(10.0) == 500
    assert audio.seconds_to_timesteps(12.0) == 600
    assert audio.seconds_to_timesteps(30.0) == audio.N_TIMESTEPS
    assert audio.seconds_to_timesteps(0.0) == 0
    assert audio.timesteps_to_seconds(500) == pytest.approx(10.0)
    assert audio.seconds_to_samples(1.5) == 24000
    assert audio.seconds_to_frames(1.5) == 150


@pytest.mark.parametrize(
    ("n_samples", "expected"),
    [(0, 0), (1, 1), (320, 1), (321, 2), (16000, 50), (480000, 1500), (480001, 1501)],
)
def test_samples_to_timesteps_counts_partial_steps(n_samples, expected):
    assert audio.samples_to_timesteps(n_samples) == expected


# ---------------------------------------------------------------------------------------------
# sniffing


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\x00\x00\x00\x00WAVE", "wav"),
        (b"fLaC\x00", "flac"),
        (b"OggS\x00", "ogg"),
        (b"ID3\x04", "mp3"),
        (b"\xff\xfb\x90\x00", "mp3"),
        (b"FORM\x00", "aiff"),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff(head, kind):
    assert audio.sniff(head) == kind


# ---------------------------------------------------------------------------------------------
# broken files: AudioError naming the file and the fault


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _zero_frames(tmp_path: Path) -> Path:
    path = tmp_path / "zero_frames.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    assert path.stat().st_size == 44  # a complete header, no data
    return path


def _truncated_header(tmp_path: Path) -> Path:
    full = tmp_path / "full.wav"
    sf.write(full, sine(SR), SR, subtype="PCM_16")
    path = tmp_path / "truncated_header.wav"
    path.write_bytes(full.read_bytes()[:20])
    return path


def _truncated_data(tmp_path: Path) -> Path:
    full = tmp_path / "full.wav"
    sf.write(full, sine(SR), SR, subtype="PCM_16")
    data = full.read_bytes()
    path = tmp_path / "truncated_data.wav"
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not a recording\n", encoding="utf-8")
    return path


def _nan(tmp_path: Path) -> Path:
    wave = sine(SR).astype(np.float32)
    wave[1000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "x.wav"
    path.mkdir()
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "does_not_exist.wav"


BROKEN = {
    "empty": (_empty, ["empty", "0 bytes"]),
    "zero_frames": (_zero_frames, ["zero length"]),
    "truncated_header": (_truncated_header, ["truncated"]),
    "truncated_data": (_truncated_data, ["truncated"]),
    "text": (_text, ["not an audio file", "text"]),
    "nan": (_nan, ["NaN"]),
    "directory": (_directory, ["directory"]),
    "missing": (_missing, ["no such file"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_load_audio_refuses_broken_file(tmp_path, case):
    make, faults = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    for fault in faults:
        assert fault in message
    assert info.value.path == str(path)


@pytest.mark.parametrize("case", ["empty", "nan", "truncated_data", "text", "zero_frames"])
def test_stream_windows_refuses_broken_file(tmp_path, case):
    make, faults = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        list(stream_windows(path))
    assert str(path) in str(info.value)
    assert faults[0] in str(info.value)


def test_audio_error_is_a_value_error():
    err = AudioError("a/b.wav", "empty file (0 bytes)")
    assert isinstance(err, ValueError)
    assert (err.path, err.fault) == ("a/b.wav", "empty file (0 bytes)")


def test_audio_duration(good_wav, tmp_path):
    assert audio.audio_duration(good_wav) == pytest.approx(2.0)
    with pytest.raises(AudioError, match="empty"):
        audio.audio_duration(_empty(tmp_path))


# ---------------------------------------------------------------------------------------------
# unusual but good files: 16 kHz mono float32 with the content preserved


def test_pcm16_16k_is_unchanged(good_wav):
    wave = load_audio(good_wav)
    assert_sine(wave, max_err=1e-4)


def test_pcm_u8_wav(tmp_path):
    path = tmp_path / "u8.wav"
    sf.write(path, sine(SR), SR, subtype="PCM_U8")
    assert sf.info(str(path)).subtype == "PCM_U8"
    assert_sine(load_audio(path), rms_rtol=0.03, max_err=0.02)  # 8-bit quantisation


def test_pcm24_wav(tmp_path):
    path = tmp_path / "p24.wav"
    sf.write(path, sine(44100), 44100, subtype="PCM_24")
    assert sf.info(str(path)).subtype == "PCM_24"
    assert_sine(load_audio(path), max_err=1e-3)


def test_stereo_48k_is_mixed_to_the_channel_mean(tmp_path):
    a = sine(48000, 440, 0.4)
    b = sine(48000, 1000, 0.4)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([a + b, a - b], axis=1), 48000, subtype="PCM_16")
    wave = load_audio(path)
    # the mean of (a+b, a-b) is a: the 1 kHz tone cancels; either channel alone would keep it
    assert_sine(wave, freq=440, amp=0.4, max_err=1e-3)
    spectrum = np.abs(np.fft.rfft(wave)) / (len(wave) / 2)
    assert spectrum[round(1000 * len(wave) / SR)] < 1e-3
    assert spectrum[round(440 * len(wave) / SR)] == pytest.approx(0.4, rel=0.02)


def test_8k_mono_is_upsampled(tmp_path):
    path = tmp_path / "m8.wav"
    sf.write(path, sine(8000, 440, 0.5, dur=3.0), 8000, subtype="PCM_16")
    assert_sine(load_audio(path), dur=3.0, max_err=1e-3)


def test_flac(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, sine(22050), 22050, format="FLAC")
    assert path.read_bytes()[:4] == b"fLaC"
    assert_sine(load_audio(path), max_err=1e-3)


def test_ogg(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, sine(44100), 44100, format="OGG", subtype="VORBIS")
    assert path.read_bytes()[:4] == b"OggS"
    assert_sine(load_audio(path), rms_rtol=0.03, max_err=0.05)  # lossy


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")
def test_mp3_made_with_ffmpeg(tmp_path):
    path = tmp_path / "a.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2:sample_rate=44100",
            "-ac",
            "1",
            "-b:a",
            "128k",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    assert audio.sniff(path.read_bytes()[:64]) == "mp3"
    wave = load_audio(path)
    # lavfi's sine has amplitude 1/8; the encoder's low-pass and framing cost a few percent
    assert_sine(wave, amp=0.125, rms_rtol=0.1)
    windows = list(stream_windows(path))
    assert len(windows) == 1
    assert windows[0].n_valid == len(wave)


# ---------------------------------------------------------------------------------------------
# windows


def test_frame_windows_short_audio_gives_one_padded_window():
    wave = np.ones(5 * SR, dtype=np.float32)
    (w,) = frame_windows(wave)
    assert (w.index, w.start_s, w.n_valid) == (0, 0.0, 5 * SR)
    assert w.wave.shape == (audio.N_SAMPLES,)
    assert w.wave.dtype == np.float32
    assert np.all(w.wave[: 5 * SR] == 1.0)
    assert np.all(w.wave[5 * SR :] == 0.0)


def test_frame_windows_exact_window_gives_one_window():
    wave = np.ones(audio.N_SAMPLES, dtype=np.float32)
    windows = frame_windows(wave)
    assert [(w.start_s, w.n_valid) for w in windows] == [(0.0, audio.N_SAMPLES)]


def test_frame_windows_no_overlap_by_default():
    wave = np.ones(65 * SR, dtype=np.float32)
    windows = frame_windows(wave)
    assert [(w.start_s, w.n_valid) for w in windows] == [
        (0.0, 30 * SR),
        (30.0, 30 * SR),
        (35.0, 30 * SR),  # the last window ends at the end: no 5 s tail
    ]
    np.testing.assert_array_equal(windows[-1].wave, wave[35 * SR :])


def test_frame_windows_75s_hop_10():
    n = 75 * SR
    wave = np.arange(n, dtype=np.float32)  # each sample holds its own index
    windows = frame_windows(wave, window_s=30, hop_s=10)
    assert [w.start_s for w in windows] == [0.0, 10.0, 20.0, 30.0, 40.0, 45.0]
    assert [w.index for w in windows] == list(range(6))
    assert [w.n_valid for w in windows] == [30 * SR] * 6  # the last ends at 75 s
    covered = np.zeros(n, dtype=bool)
    for w in windows:
        start = round(w.start_s * SR)
        np.testing.assert_array_equal(w.wave[: w.n_valid], wave[start : start + w.n_valid])
        assert np.all(w.wave[w.n_valid :] == 0)
        covered[start : start + w.n_valid] = True
    assert covered.all()


@pytest.mark.parametrize("n_seconds", [0.5, 29.99, 30.01, 44.0, 61.3, 100.0])
@pytest.mark.parametrize(("window_s", "hop_s"), [(30, None), (30, 10), (10, 2.5), (5, 5)])
def test_frame_windows_cover_every_sample(n_seconds, window_s, hop_s):
    n = round(n_seconds * SR)
    windows = frame_windows(np.ones(n, dtype=np.float32), window_s=window_s, hop_s=hop_s)
    covered = np.zeros(n, dtype=bool)
    for w in windows:
        start = round(w.start_s * SR)
        covered[start : start + w.n_valid] = True
        assert w.wave[: w.n_valid].sum() == w.n_valid
    assert covered.all()
    # no window lies wholly inside the one before it
    ends = [round(w.start_s * SR) + w.n_valid for w in windows]
    assert ends == sorted(set(ends))


@pytest.mark.parametrize(("window_s", "hop_s"), [(10, 20), (10, 0), (10, -1)])
def test_frame_windows_bad_hop(window_s, hop_s):
    with pytest.raises(ValueError, match="hop"):
        frame_windows(np.ones(SR, dtype=np.float32), window_s=window_s, hop_s=hop_s)


def test_stream_windows_bad_hop(good_wav):
    with pytest.raises(ValueError, match="hop"):
        list(stream_windows(good_wav, window_s=10, hop_s=20))


def _assert_same_windows(streamed, framed):
    assert len(streamed) == len(framed) >= 2
    for s, f in zip(streamed, framed, strict=True):
        assert s.index == f.index
        assert s.start_s == pytest.approx(f.start_s)
        assert s.n_valid == f.n_valid
        assert s.wave.shape == f.wave.shape
        np.testing.assert_allclose(s.wave, f.wave, atol=1e-4)


@pytest.mark.parametrize(("window_s", "hop_s"), [(30, None), (30, 10)])
def test_stream_windows_match_frame_windows_44k_stereo_24bit(tmp_path, window_s, hop_s):
    sr = 44100
    t = np.arange(round(70.3 * sr)) / sr
    rng = np.random.default_rng(0)
    left = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    right = 0.3 * np.sin(2 * np.pi * 1234 * t * (1 + t / 200))  # a slow chirp
    path = tmp_path / "long.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_24")

    framed = frame_windows(load_audio(path), window_s, hop_s)
    streamed = list(stream_windows(path, window_s, hop_s, block_s=7.0))
    _assert_same_windows(streamed, framed)
    # the last window ends at the end of the audio, full, not a padded tail
    assert streamed[-1].n_valid == round(window_s * SR)
    assert streamed[-1].start_s == pytest.approx(70.3 - window_s, abs=1e-3)


def test_stream_windows_match_frame_windows_16k(tmp_path):
    # no resampling, and a file length that is an exact number of blocks
    path = tmp_path / "m16.wav"
    sf.write(path, sine(SR, dur=42.0), SR, subtype="PCM_16")
    framed = frame_windows(load_audio(path), 20, 5)
    streamed = list(stream_windows(path, 20, 5, block_s=7.0))
    _assert_same_windows(streamed, framed)


@pytest.mark.parametrize(
    ("seconds", "hop_s", "expected_s"),
    [
        (0.0, None, [0]),
        (12.0, None, [0]),
        (30.0, None, [0]),  # exactly one window
        (60.0, None, [0, 30]),  # exactly two, no empty third
        (75.3, None, [0, 30, 45.3]),  # the last ends at the end: no 15.3 s tail
        (75.3, 10.0, [0, 10, 20, 30, 40, 45.3]),  # 60 would lie inside the window at 50
    ],
)
def test_window_starts(seconds, hop_s, expected_s):
    starts = audio.window_starts(round(seconds * audio.SAMPLE_RATE), 30.0, hop_s)
    assert starts == [round(s * audio.SAMPLE_RATE) for s in expected_s]
