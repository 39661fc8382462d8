"""Windows of labelled audio for every member: a Dataset over 30 s windows and a DataModule.

Each item is one window of one clip: waveform `(N,)`, window label, timestep labels `(T,)`, the
valid-timestep mask `(T,)`, the transcript and where the window came from.

Timestep labels have one meaning each. Inside an annotated segment: its class. Outside the
segments: the clip's background, the normal class of what is heard there (the manifest's
`background`; a normal clip's own class when that is empty) or, when nothing says what it is,
`IGNORE_ID`, which the losses and accuracies skip. `none` (0) is only for what holds nothing of
interest: padding (masked out as well). So the same room or appliance sound never carries a class
in one clip and `none` in another.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ensemble.core.audio import (
    CHUNK_LENGTH,
    ENCODER_STRIDE,
    HOP_LENGTH,
    SAMPLE_RATE,
    SAMPLES_PER_TIMESTEP,
    AudioError,
    audio_duration,
    load_audio,
    samples_to_timesteps,
    seconds_to_samples,
    seconds_to_timesteps,
    window_starts,
)
from ensemble.core.labels import IGNORE_ID, Taxonomy, load_taxonomy
from ensemble.core.manifest import background_id, clips, read_manifest
from ensemble.core.splits import assign_splits

log = logging.getLogger(__name__)


def timestep_labels(
    segments: list[tuple[float, float, str]],
    taxonomy: Taxonomy,
    window_start_s: float,
    n_valid: int,
    n_samples: int,
    background: int = IGNORE_ID,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels `(T,)` int64 and valid mask `(T,)` bool of one window; T = n_samples / (hop * stride).

    A segment (start, end, label) in clip seconds marks timesteps round(start*50)..round(end*50)-1
    relative to the window; NaN bounds mean the whole clip. Real audio outside every segment gets
    `background` (a class id, or `IGNORE_ID`); padding is `none` and masked out.
    """
    n_steps = n_samples // (HOP_LENGTH * ENCODER_STRIDE)
    valid = min(samples_to_timesteps(n_valid), n_steps)
    labels = np.zeros(n_steps, dtype=np.int64)
    labels[:valid] = background
    for start, end, label in segments:
        whole = math.isnan(start) or math.isnan(end)
        lo = 0 if whole else seconds_to_timesteps(start - window_start_s)
        hi = valid if whole else seconds_to_timesteps(end - window_start_s)
        lo, hi = max(lo, 0), min(hi, valid)
        if hi > lo:
            labels[lo:hi] = taxonomy.id(label)
    mask = np.arange(n_steps) < valid
    return labels, mask


@dataclass(frozen=True)
class WindowRef:
    clip: int  # row of the clips table
    start: int  # first sample of the window, 16 kHz
    n_valid: int  # samples of audio in the window (the rest is padding)


class WindowDataset(Dataset):
    """Every window of every clip of a manifest (already filtered to one split)."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        taxonomy: Taxonomy,
        window_s: float = CHUNK_LENGTH,
        hop_s: float | None = None,
    ):
        self.taxonomy = taxonomy
        self.window_s, self.hop_s = window_s, hop_s
        self.clips = clips(manifest)
        self.n_samples = seconds_to_samples(window_s)
        self.refs = self._index()
        # False: items carry an empty `wave` (a member that reads cached features instead)
        self.read_audio = True

    def _index(self) -> list[WindowRef]:
        """Window starts per clip, from the file headers alone; unusable files are named together."""
        refs, bad = [], []
        for i, path in enumerate(self.clips["path"]):
            try:
                n = seconds_to_samples(audio_duration(path))
            except AudioError as e:
                bad.append(str(e))
                continue
            refs += [
                WindowRef(i, s, min(n - s, self.n_samples))
                for s in window_starts(n, self.window_s, self.hop_s)
            ]
        if bad:
            raise AudioError(
                f"{len(bad)} file(s)", "unusable audio in the manifest:\n  " + "\n  ".join(bad)
            )
        return refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        ref = self.refs[index]
        clip = self.clips.iloc[ref.clip]
        wave = np.zeros(self.n_samples if self.read_audio else 0, dtype=np.float32)
        n_valid = ref.n_valid  # from the header; the decoded length when the audio is read
        if self.read_audio:
            piece = load_audio(clip["path"])[ref.start : ref.start + self.n_samples]
            wave[: len(piece)], n_valid = piece, len(piece)
        start_s = ref.start / SAMPLE_RATE
        labels, mask = self._labels(ref, n_valid)
        return {
            "wave": torch.from_numpy(wave),
            "label": torch.tensor(self._window_label(clip, labels), dtype=torch.long),
            "frame_labels": torch.from_numpy(labels),
            "mask": torch.from_numpy(mask),
            "transcript": clip["transcript"],
            "path": clip["path"],
            "start_s": start_s,
        }

    def _labels(self, ref: WindowRef, n_valid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Timestep labels and valid mask `(T,)` of a window (`timestep_labels`); `n_valid`
        defaults to the header's count of audio samples in it."""
        clip = self.clips.iloc[ref.clip]
        return timestep_labels(
            clip["segments"],
            self.taxonomy,
            ref.start / SAMPLE_RATE,
            ref.n_valid if n_valid is None else n_valid,
            self.n_samples,
            background_id(clip, self.taxonomy),
        )

    def window_labels(self) -> np.ndarray:
        """The label of every window `(len(self),)`, from the manifest alone (no audio read)."""
        return np.array(
            [self._window_label(self.clips.iloc[r.clip], self._labels(r)[0]) for r in self.refs],
            dtype=np.int64,
        )

    def frame_label_counts(self) -> np.ndarray:
        """Valid timesteps per column `(K + 1,)` over every window, from the manifest alone;
        unknown timesteps (`IGNORE_ID`) are not counted."""
        counts = np.zeros(self.taxonomy.n_outputs, dtype=np.int64)
        for ref in self.refs:
            labels, mask = self._labels(ref)
            counts += np.bincount(labels[mask & (labels >= 0)], minlength=self.taxonomy.n_outputs)
        return counts

    def _window_label(self, clip: pd.Series, labels: np.ndarray) -> int:
        """The emergency class holding most timesteps of the window when one is there (an event
        anywhere makes the window an emergency), else the normal class holding most, else the
        clip's label."""
        known = labels[labels > 0]
        counts = np.bincount(known, minlength=self.taxonomy.n_outputs)  # (K + 1,)
        emergency = np.zeros_like(counts, dtype=bool)
        emergency[list(self.taxonomy.emergency_ids)] = True
        for part in (emergency, ~emergency):
            if (counts * part).any():
                return int((counts * part).argmax())
        return self.taxonomy.id(clip["label"])


def collate(items: list[dict]) -> dict:
    """Stack tensors `(B, ...)`; strings and floats become lists."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def valid_samples(mask: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
    """Samples of real audio per window `(B,)` long from a batch's valid-timestep mask `(B, T)`.

    Exact to the 20 ms timestep; capped at `n_samples` (the window length) when given.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (B, T), got {tuple(mask.shape)}")
    n = mask.sum(dim=1).long() * SAMPLES_PER_TIMESTEP
    return n if n_samples is None else n.clamp(max=n_samples)


class AudioDataModule(pl.LightningDataModule):
    """Windows of a manifest's train/val/test splits, batched for any member.

    Batches: `wave (B, N)` float32, `label (B,)`, `frame_labels (B, T)`, `mask (B, T)` bool,
    `transcript`, `path` (lists of B str), `start_s` (list of B float). N = window_s * 16000,
    T = N / 320 (1500 for 30 s). A manifest without splits is split leak-free on the fly.
    `train_classes="normal"` keeps only clips without any emergency annotation in the train split
    (the anomaly member learns from normal audio only); val and test keep every clip. Clips of the
    `holdout` split are never trained or validated on; `predict_split="holdout"` predicts them.
    `skip_sources`: train clips whose `source` is one of these are left out (the demo's CNN and
    anomaly member skip the cut listening windows made for the Whisper member, `core/crops.py`).
    """

    def __init__(
        self,
        manifest: str | Path,
        labels: str | Path | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        window_s: float = CHUNK_LENGTH,
        hop_s: float | None = None,
        predict_split: str = "test",
        train_classes: Literal["all", "normal", "emergency"] = "all",
        seed: int = 0,
        skip_sources: tuple[str, ...] = (),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.taxonomy = load_taxonomy(labels)
        self.datasets: dict[str, WindowDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        df = read_manifest(self.hparams.manifest, self.taxonomy)
        if (df["split"] == "").all():
            log.warning(
                "%s has no splits: splitting leak-free with the default fractions",
                self.hparams.manifest,
            )
            df = assign_splits(df, seed=self.hparams.seed)
        wanted = ("train", "val", "test", self.hparams.predict_split)
        for split in dict.fromkeys(wanted):  # held-out clips only when asked to predict them
            part = df[df["split"] == split]
            if split == "train":
                part = self._keep(part, self.hparams.train_classes)
                part = part[~part["source"].isin(list(self.hparams.skip_sources))]
            if len(part):
                self.datasets[split] = WindowDataset(
                    part, self.taxonomy, self.hparams.window_s, self.hparams.hop_s
                )

    def _keep(self, df: pd.DataFrame, kind: str) -> pd.DataFrame:
        """Rows of the clips of one kind: a clip is an emergency if any of its rows is."""
        if kind == "all":
            return df
        emergency = df["label"].map(self.taxonomy.is_emergency).groupby(df["path"]).transform("any")
        return df[emergency] if kind == "emergency" else df[~emergency]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"{self.hparams.manifest} has no clips in split {split!r}")
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=collate,
            generator=generator,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, shuffle=False)
