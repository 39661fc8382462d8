"""The ensemble's config: which members vote (class path, checkpoint, threshold, weight,
abstention, class weight, inference overrides), the vote rule, the windowing and the run's settings.

`load_config(path)` reads `configs/ensemble.yaml` (or a calibrated copy); unknown keys are errors
naming the file. Checkpoint and label paths inside it are relative to the config's folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ensemble.core.audio import CHUNK_LENGTH
from ensemble.vote import VoteRule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberSpec:
    """One voting member. `output` picks one of several outputs of a module (the Whisper module
    gives `whisper_head` and `keyword_judge` from one encoder pass; both entries share it)."""

    name: str
    class_path: str
    checkpoint: str
    output: str | None = None
    threshold: float | None = None  # None: the member's own vote; else p > threshold
    weight: float = 1.0  # in the soft score and the "weighted" rule
    overrides: dict = field(default_factory=dict)  # hparams replaced at load (inference settings)
    abstain_no_speech: float | None = None  # abstain where Whisper's no_speech_prob is above it
    class_weight: float | None = None  # in the ensemble's class probabilities; None: `weight`

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"member name must be an identifier, got {self.name!r}")
        for key in ("threshold", "abstain_no_speech"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{self.name}: {key} must be in (0, 1), got {value}")
        for key in ("weight", "class_weight"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ValueError(f"{self.name}: {key} must be >= 0, got {value}")


@dataclass(frozen=True)
class EnsembleConfig:
    members: tuple[MemberSpec, ...]
    vote: VoteRule = field(default_factory=VoteRule)
    window_s: float = CHUNK_LENGTH
    hop_s: float | None = None  # None: windows do not overlap
    batch_size: int | None = None  # None: 1 on CPU (measured faster there), 8 on GPU
    num_workers: int = 1  # audio decoding processes beside the model
    device: str = "auto"  # auto | cpu | gpu
    min_duration_s: float = 0.1  # shorter files are an error: too little to judge
    read_timeout_s: float = 60.0  # a file that gives no window for this long is an error row
    labels: str | None = None  # taxonomy YAML; None = configs/labels.yaml
    calibration: dict | None = None  # what `calibrate` chose and measured (not read by `infer`)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("the ensemble needs at least one member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if self.window_s != CHUNK_LENGTH:
            raise ValueError(
                f"window_s must be {CHUNK_LENGTH} (Whisper's window), got {self.window_s}"
            )
        bad_batch = self.batch_size is not None and self.batch_size < 1
        if bad_batch or self.num_workers < 0 or self.min_duration_s < 0:
            raise ValueError(f"bad batch_size, num_workers or min_duration_s in {self}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


_WARNED: set[tuple[Path, str]] = set()  # one warning per config and path


def _resolve(value: str, home: Path, config: Path) -> str:
    """`value` relative to the config's folder `home`; a config written before paths were (one
    that names a file found only from the working directory) still loads, with a warning."""
    path = home / value
    if not path.exists() and Path(value).exists() and not Path(value).is_absolute():
        if (config, value) in _WARNED:
            return str(Path(value).resolve())
        _WARNED.add((config, value))
        log.warning(
            "%s: %s is relative to the working directory; paths in a config are relative to its "
            "folder: write %s",
            config,
            value,
            relative_to(value, home),
        )
        return str(Path(value).resolve())
    return str(path)


def relative_to(path: str | Path, folder: Path) -> str:
    """`path` as written into a config file in `folder`: relative to it."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def load_config(path: str | Path, **overrides: Any) -> EnsembleConfig:
    """`configs/ensemble.yaml` -> EnsembleConfig; unknown keys are errors naming the file.

    Relative checkpoint and label paths inside the file are relative to its folder, so a config
    works from wherever the command runs; the config holds them absolute."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the ensemble config ({e})") from e
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    home = path.resolve().parent
    if raw.get("labels"):
        raw["labels"] = _resolve(raw["labels"], home, path)
    try:
        members = tuple(
            MemberSpec(**{**m, "checkpoint": _resolve(m["checkpoint"], home, path)})
            if "checkpoint" in m else MemberSpec(**m)
            for m in raw.pop("members", [])
        )  # fmt: skip
        vote = VoteRule(**raw.pop("vote", {}))
        return EnsembleConfig(members=members, vote=vote, **raw)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from e
