"""Spectrogram images for the anomaly member: waveform -> STFT dB image -> multi-scale pooled image.

Pure functions, tensors in and out; the device follows the input. Image axes are named after the
tensor dims: rows (H) are STFT frequency bins with row 0 = 0 Hz (low frequencies at the top when
shown with matplotlib's default `origin="upper"`), columns (W) are time with column 0 = the start
of the window.

The STFT uses the project's n_fft 400 / hop 160 (25 ms / 10 ms at 16 kHz): 201 bins by up to 3001
frames for a 30 s window. The magnitude in dB is normalised per image: the loudest cell maps to 1
and `top_db` below it (or the -100 dB floor, whichever is higher) maps to 0, so the image does not
depend on the recording level, as the paper's volume normalisation intends.

`fixed_scale_image` is the fixed time-scale alternative to `spectrogram_images`: a fixed number of
STFT frames per column (a 30 s window fills the width, a shorter clip is padded with silence, not
stretched), the 201 frequency bins as they are, and optionally an absolute dB scale that keeps the
recording level.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ensemble.core.audio import HOP_LENGTH, N_FFT, N_SAMPLES

IMAGE_SIZE = 768  # px, side of the square spectrogram image (the paper's 900 px resized to 768)
POOL_KERNELS = (7, 21, 63)  # px: fine, medium and coarse scales, one channel each
POOL_STRIDE = 3  # px; padding (k - 3) / 2 then gives 768 / 3 = 256 px for every kernel
TOP_DB = 80.0  # dB below the image's peak that map to 0
AMIN = 1e-5  # magnitude floor (-100 dB): digital silence becomes a black image
FRAMES_PER_COLUMN = 4  # STFT frames (10 ms) averaged into one column of a fixed-scale image
# Absolute scale of `fixed_scale_image`, for float audio in [-1, 1] and the Hann-windowed STFT
# (window sum 200): a full-scale sine peaks at +40 dB in its bin (a full-scale square wave at
# +42 dB, clipped), 16-bit quantisation noise lies at about -80 dB per bin.
ABS_DB_FLOOR = -80.0  # dB -> 0: at or below the 16-bit noise floor, as dark as digital silence
ABS_DB_RANGE = 120.0  # dB; ABS_DB_FLOOR + ABS_DB_RANGE = +40 dB (full-scale sine) -> 1

Pooling = Literal["avg", "max", "resize"]
POOLINGS: tuple[str, ...] = ("avg", "max", "resize")


def spectrogram_db(wave: Tensor) -> Tensor:
    """STFT magnitude in dB `(F, T)` = (201, N // 160 + 1) of a waveform `(N,)` with N >= 400."""
    if wave.ndim != 1 or wave.shape[0] < N_FFT:
        raise ValueError(f"wave must be (N,) with N >= {N_FFT}, got {tuple(wave.shape)}")
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    return 20.0 * torch.log10(spec.abs().clamp(min=AMIN))


def normalize_db(db: Tensor, top_db: float = TOP_DB) -> Tensor:
    """dB values of any shape -> [0, 1]: the peak maps to 1, max(peak - top_db, floor) to 0."""
    if top_db <= 0:
        raise ValueError(f"top_db must be positive, got {top_db}")
    floor = 20.0 * torch.log10(torch.tensor(AMIN, dtype=db.dtype, device=db.device))
    low = torch.maximum(db.max() - top_db, floor)
    return ((db - low) / top_db).clamp(0.0, 1.0)


def spectrogram_image(wave: Tensor, image_size: int = IMAGE_SIZE, top_db: float = TOP_DB) -> Tensor:
    """A waveform `(N,)` as a normalised spectrogram image `(image_size, image_size)` in [0, 1].

    Rows are frequency (row 0 = 0 Hz), columns time. Both axes are resized bilinearly with
    antialiasing, so the 3000 frames of a 30 s window are averaged, not skipped, into 768 columns.
    Waves shorter than n_fft are zero-padded to it.
    """
    if wave.ndim != 1 or wave.shape[0] == 0:
        raise ValueError(f"wave must be (N,) with N > 0, got {tuple(wave.shape)}")
    if wave.shape[0] < N_FFT:
        wave = F.pad(wave, (0, N_FFT - wave.shape[0]))
    img = normalize_db(spectrogram_db(wave), top_db)  # (F, T)
    size = (image_size, image_size)
    img = F.interpolate(img[None, None], size, mode="bilinear", antialias=True)
    return img[0, 0].clamp(0.0, 1.0)  # (H, W); antialiasing can overshoot by rounding


def spectrogram_images(
    wave: Tensor,
    n_valid: Tensor | None = None,
    image_size: int = IMAGE_SIZE,
    top_db: float = TOP_DB,
) -> Tensor:
    """Windows `(B, N)` -> images `(B, 1, S, S)`, each from its first `n_valid[b]` samples only.

    Padding at the end of a short clip is left out, so every image spans the clip's real audio.
    """
    if wave.ndim != 2:
        raise ValueError(f"wave must be (B, N), got {tuple(wave.shape)}")
    B, N = wave.shape
    if n_valid is None:
        n_valid = torch.full((B,), N, dtype=torch.long)
    if n_valid.shape != (B,):
        raise ValueError(f"n_valid must be (B,) = ({B},), got {tuple(n_valid.shape)}")
    lengths = n_valid.clamp(min=N_FFT, max=N).tolist()
    return torch.stack(
        [spectrogram_image(wave[b, : lengths[b]], image_size, top_db) for b in range(B)]
    )[:, None]


def fixed_scale_image(
    wave: Tensor,
    n_valid: Tensor | None = None,
    frames_per_column: int = FRAMES_PER_COLUMN,
    absolute: bool = True,
    db_floor: float = ABS_DB_FLOOR,
    db_range: float = ABS_DB_RANGE,
    top_db: float = TOP_DB,
    n_samples: int = N_SAMPLES,
) -> tuple[Tensor, Tensor]:
    """Windows `(B, N)` -> images `(B, 201, W)` in [0, 1] on one time scale, and valid columns `(B,)`.

    Rows are the STFT bins (row 0 = 0 Hz), columns time: the n_samples // 160 frames of a full
    window (3000 for 30 s; the STFT's extra last frame is dropped) are averaged `frames_per_column`
    at a time, so W = ceil(3000 / 4) = 750 by default and a column always spans 40 ms. Windows with
    N < n_samples are zero-padded to it; N > n_samples is an error.
    Only the first `n_valid[b]` samples are used (later ones count as zeros). Valid columns are
    ceil(ceil(n_valid / 160) / frames_per_column); every later column holds the value digital
    silence gets, so a 10 s clip fills the first third of the image.
    Levels: `absolute=True` maps [db_floor, db_floor + db_range] dB to [0, 1] (clipped; defaults
    -80 and +40 dB, see ABS_DB_FLOOR), so a quieter clip gives a darker image; `absolute=False`
    normalises each image to its own peak like `normalize_db(top_db)`. Cells are mapped to [0, 1]
    before the time averaging, as `spectrogram_image` does before resizing.
    """
    if wave.ndim != 2:
        raise ValueError(f"wave must be (B, N), got {tuple(wave.shape)}")
    B, N = wave.shape
    if frames_per_column < 1:
        raise ValueError(f"frames_per_column must be positive, got {frames_per_column}")
    if db_range <= 0 or top_db <= 0:
        raise ValueError(f"db_range and top_db must be positive, got {db_range}, {top_db}")
    if n_samples < N_FFT:
        raise ValueError(f"n_samples must be >= {N_FFT}, got {n_samples}")
    if n_samples < N:
        raise ValueError(f"wave has {N} samples, more than n_samples = {n_samples}")
    if n_valid is None:
        n_valid = torch.full((B,), N, dtype=torch.long)
    if n_valid.shape != (B,):
        raise ValueError(f"n_valid must be (B,) = ({B},), got {tuple(n_valid.shape)}")
    n_valid = n_valid.to(device=wave.device, dtype=torch.long).clamp(0, N)
    keep = torch.arange(n_samples, device=wave.device) < n_valid[:, None]  # (B, n_samples)
    wave = F.pad(wave, (0, n_samples - N)) * keep
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    n_frames = n_samples // HOP_LENGTH
    db = 20.0 * torch.log10(spec[..., :n_frames].abs().clamp(min=AMIN))  # (B, 201, n_frames)
    silence_db = 20.0 * math.log10(AMIN)
    if absolute:
        img = ((db - db_floor) / db_range).clamp(0.0, 1.0)
        silence = torch.full((B,), min(max((silence_db - db_floor) / db_range, 0.0), 1.0))
    else:
        peak = db.amax(dim=(1, 2), keepdim=True)  # frames past n_valid are silence: no effect
        low = peak.clamp(min=silence_db + top_db) - top_db  # max(peak - top_db, floor)
        img = ((db - low) / top_db).clamp(0.0, 1.0)
        silence = ((silence_db - low) / top_db).clamp(0.0, 1.0).flatten()  # 0 by construction
    k = frames_per_column
    img = F.avg_pool1d(img, k, k, ceil_mode=True)  # (B, 201, W); a short last column: its mean
    n_cols = (torch.div(n_valid + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor") + k - 1) // k
    n_cols = n_cols.clamp(max=img.shape[-1])
    pad = torch.arange(img.shape[-1], device=img.device) >= n_cols[:, None]  # (B, W)
    silence = silence.to(device=img.device, dtype=img.dtype)[:, None, None]
    return torch.where(pad[:, None, :], silence, img), n_cols


def multiscale_pool(img: Tensor, pooling: Pooling = "avg") -> Tensor:
    """Images `(B, 1, H, W)` -> `(B, 3, H / 3, W / 3)`: one channel per pooling kernel 7, 21, 63.

    "avg": average pooling at stride 3, padding (k - 3) / 2, padded cells not counted, so a constant
    image stays constant up to its edges; "max": max pooling the same way; "resize": the image
    resized bilinearly (antialiased, like PIL) to H / 3, repeated into 3 channels.
    Pooling is done one axis at a time, which gives the same result as the 2-D window (a mean or
    max over a rectangle of valid cells) at a fraction of the cost for the 63 px kernel.
    """
    if img.ndim != 4 or img.shape[1] != 1:
        raise ValueError(f"img must be (B, 1, H, W), got {tuple(img.shape)}")
    H, W = img.shape[-2:]
    if H % POOL_STRIDE or W % POOL_STRIDE or min(H, W) < POOL_STRIDE:
        raise ValueError(f"image sides must be multiples of {POOL_STRIDE}, got {H}x{W}")
    if pooling == "resize":
        size = (H // POOL_STRIDE, W // POOL_STRIDE)
        x = F.interpolate(img, size, mode="bilinear", antialias=True)
        return x.clamp(img.min(), img.max()).expand(-1, 3, -1, -1).contiguous()
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return torch.cat([_pool(img, k, pooling) for k in POOL_KERNELS], dim=1)


def _pool(img: Tensor, k: int, pooling: str) -> Tensor:
    """One pooling scale `(B, 1, H, W)` -> `(B, 1, H / 3, W / 3)`, rows then columns."""
    p, s = (k - POOL_STRIDE) // 2, POOL_STRIDE
    if pooling == "avg":
        x = F.avg_pool2d(img, (k, 1), (s, 1), (p, 0), count_include_pad=False)
        return F.avg_pool2d(x, (1, k), (1, s), (0, p), count_include_pad=False)
    x = F.max_pool2d(img, (k, 1), (s, 1), (p, 0))
    return F.max_pool2d(x, (1, k), (1, s), (0, p))
