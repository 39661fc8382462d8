"""The member protocol: what every member's prediction returns, and checkpoints that rebuild.

Every member is a `MemberModule` (a LightningModule) around a plain `nn.Module` whose sizes are a
frozen dataclass `model.config`. Its checkpoints hold that config, the module's own
hyperparameters and the class path of the module, so `load_member(path)` rebuilds the member from
the file alone, loading with `weights_only=True` and a strict key check.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ensemble.core.audio import timesteps_to_seconds
from ensemble.core.labels import Taxonomy

Event = tuple[float, float, str]  # (start_s, end_s, class_key)


@dataclass
class MemberOutput:
    """One member's prediction for a batch of B windows.

    p_emergency `(B,)` in [0, 1]; vote `(B,)` bool after the member's threshold; class_probs
    `(B, K)` over the K situations (column k is taxonomy id k + 1); frame_probs `(B, T, K + 1)` with
    column 0 = none; transcript B strings; embedding `(B, D)`; events B lists of
    `(start_s, end_s, class_key)` in seconds from the window's start; no_speech_prob `(B,)`
    Whisper's probability that nothing is spoken; opinion `(B,)` bool, False where the member
    abstains (None: it has an opinion on every window). A row of class_probs may be NaN: no class
    for that window.
    """

    p_emergency: Tensor
    vote: Tensor
    class_probs: Tensor | None = None
    frame_probs: Tensor | None = None
    transcript: list[str] | None = None
    embedding: Tensor | None = None
    events: list[list[Event]] | None = None
    no_speech_prob: Tensor | None = None
    opinion: Tensor | None = None

    def __post_init__(self) -> None:
        if self.p_emergency.ndim != 1:
            raise ValueError(f"p_emergency must be (B,), got {tuple(self.p_emergency.shape)}")
        B = self.p_emergency.shape[0]
        if self.vote.shape != (B,) or self.vote.dtype != torch.bool:
            raise ValueError(
                f"vote must be (B,) bool, got {tuple(self.vote.shape)} {self.vote.dtype}"
            )
        if self.opinion is not None and (
            self.opinion.shape != (B,) or self.opinion.dtype != torch.bool
        ):
            raise ValueError(
                f"opinion must be (B,) bool, got {tuple(self.opinion.shape)} {self.opinion.dtype}"
            )
        shapes = (("class_probs", 2), ("frame_probs", 3), ("embedding", 2), ("no_speech_prob", 1))
        for name, ndim in shapes:
            value = getattr(self, name)
            if value is not None and (value.ndim != ndim or value.shape[0] != B):
                raise ValueError(
                    f"{name} must have {ndim} dims and B={B} rows, got {tuple(value.shape)}"
                )
        for name in ("transcript", "events"):
            value = getattr(self, name)
            if value is not None and len(value) != B:
                raise ValueError(f"{name} must have B={B} entries, got {len(value)}")

    def cpu(self) -> MemberOutput:
        """A copy with every tensor detached on the CPU."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).detach().cpu()
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )


def moving_average(x: Tensor, width: int) -> Tensor:
    """Mean of `width` neighbouring steps along the last axis of `(B, C, T)`; the window shrinks
    at both ends (no padding counted). `width` 1 returns `x`."""
    if width <= 1:
        return x
    pooled = torch.nn.functional.avg_pool1d(x, width, 1, width // 2, count_include_pad=False)
    return pooled[..., : x.shape[-1]]


def frame_events(
    frame_probs: Tensor, mask: Tensor, taxonomy: Taxonomy, smooth_steps: int = 1, min_steps: int = 1
) -> list[list[Event]]:
    """Runs of one class over valid timesteps: `(B, T, K + 1)`, `(B, T)` -> B lists of events.

    Probabilities are averaged over `smooth_steps` timesteps first; each timestep takes its most
    probable column; runs of a class (not `none`) of at least `min_steps` timesteps are events
    `(start_s, end_s, class_key)` in seconds from the window's start.
    """
    if frame_probs.ndim != 3 or mask.shape != frame_probs.shape[:2]:
        raise ValueError(f"need (B, T, C) and (B, T), got {frame_probs.shape} and {mask.shape}")
    p = moving_average(frame_probs.detach().float().transpose(1, 2), smooth_steps)  # (B, C, T)
    ids = p.argmax(1).masked_fill(~mask.bool(), 0).cpu().numpy()  # (B, T)
    out = []
    for row in ids:
        edges = np.flatnonzero(np.diff(row, prepend=-1, append=-1))  # starts of runs, and T
        out.append(
            [
                (
                    timesteps_to_seconds(int(lo)),
                    timesteps_to_seconds(int(hi)),
                    taxonomy.key(int(row[lo])),
                )
                for lo, hi in itertools.pairwise(edges)
                if row[lo] != 0 and hi - lo >= min_steps
            ]
        )
    return out


def emergency_probability(class_probs: Tensor, taxonomy: Taxonomy) -> Tensor:
    """Summed probability of the emergency situations: `(B, K)` -> `(B,)`."""
    columns = [i - 1 for i in taxonomy.emergency_ids]
    return class_probs[:, columns].sum(dim=1)


def emergency_targets(labels: Tensor, taxonomy: Taxonomy) -> Tensor:
    """Taxonomy ids `(B,)` -> `(B,)` bool, True for an emergency situation."""
    ids = torch.tensor(taxonomy.emergency_ids, device=labels.device)
    return torch.isin(labels, ids)


class MemberModule(pl.LightningModule):
    """Base of every member: self-rebuilding checkpoints around `self.model`.

    Subclasses set `model_class`: an `nn.Module` whose `__init__` takes an instance of its
    `config_class` (a frozen dataclass) and keeps it as `self.config`; `model_classes` lists every
    class the member accepts (default: `model_class` alone), and the checkpoint names the one used.
    A config field `load_weights` (pretrained weights fetched when the model is built) is turned off
    when a checkpoint is rebuilt: its state dict brings the weights. Subclasses call
    `save_hyperparameters(ignore=["model", ...])` with only plain values left, and implement
    `predict_step(batch) -> MemberOutput`.

    A module with several outputs may skip the work of those not in `wanted_outputs` (the
    ensemble sets it to the outputs its config routes; None: all).
    """

    model_class: ClassVar[type[nn.Module]]
    model_classes: ClassVar[tuple[type[nn.Module], ...]] = ()
    wanted_outputs: frozenset[str] | None = None

    def __init__(self, model: nn.Module):
        super().__init__()
        accepted = self.accepted_models()
        if not isinstance(model, accepted):
            names = " or ".join(c.__name__ for c in accepted)
            raise TypeError(f"{type(self).__name__} needs a {names}, got {type(model).__name__}")
        self.model = model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # paths (e.g. the DataModule's manifest) would make the file unloadable with weights_only
        for key, value in checkpoint.items():
            checkpoint[key] = _plain(value)
        checkpoint["member_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["model_config"] = dataclasses.asdict(self.model.config)
        checkpoint["model_class"] = type(self.model).__qualname__

    @classmethod
    def accepted_models(cls) -> tuple[type[nn.Module], ...]:
        return cls.model_classes or (cls.model_class,)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> MemberModule:
        """Rebuild from a checkpoint of this member (strict keys); `overrides` replace hparams."""
        return cls._from_dict(_read_checkpoint(path, map_location), path, overrides)

    @classmethod
    def _from_dict(cls, ckpt: dict[str, Any], path: str | Path, overrides: dict) -> MemberModule:
        if ckpt["member_class"] != f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(
                f"{path}: a checkpoint of {ckpt['member_class']}, not of {cls.__qualname__}"
            )
        by_name = {c.__qualname__: c for c in cls.accepted_models()}
        name = ckpt.get("model_class", cls.model_class.__qualname__)
        if name not in by_name:
            raise ValueError(f"{path}: model class {name!r} is not one of {sorted(by_name)}")
        config = dict(ckpt["model_config"])
        if "load_weights" in config:
            config["load_weights"] = False  # the checkpoint's state dict brings the weights
        model = by_name[name](by_name[name].config_class(**config))
        hparams = {
            k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")
        }
        module = cls(model=model, **{**hparams, **overrides})
        module.load_state_dict(ckpt["state_dict"], strict=True)
        return module.eval()


def check_state_dict(
    expected: dict[str, Tensor], state: dict[str, Tensor], source: object, what: str = "the model"
) -> None:
    """Raise ValueError naming `source` unless `state` has exactly `expected`'s keys and shapes."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: keys do not match {what}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    bad = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if bad:
        raise ValueError(f"{source}: shapes do not match {what}: " + "; ".join(bad[:5]))


def _plain(value: Any) -> Any:
    """`value` with every `PurePath` inside dicts, lists and tuples turned into a str."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_plain(v) for v in value)
    return value


def _read_checkpoint(path: str | Path, map_location: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e
    for key in ("member_class", "model_config", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a member checkpoint (no {key!r})")
    return ckpt


def load_member(
    path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
) -> MemberModule:
    """Any member from its checkpoint: the class is named inside the file."""
    ckpt = _read_checkpoint(path, map_location)  # read once: it names the class and holds it
    module_name, _, name = ckpt["member_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls._from_dict(ckpt, path, overrides)


def cosine_with_warmup(
    opt: torch.optim.Optimizer,
    n_steps: int | float,
    warmup: float = 0.05,
    groups: Sequence[int] | None = None,
    floor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first `warmup` of the steps, then cosine decay to `floor` (a share
    of the rate). `groups`: the indices of the parameter groups it schedules (default all); the
    others keep their rate."""
    n_steps = max(int(n_steps), 1)
    n_warm = max(int(warmup * n_steps), 1)

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        done = min(step - n_warm, n_steps) / max(n_steps - n_warm, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

    chosen = range(len(opt.param_groups)) if groups is None else set(groups)
    factors = [factor if i in chosen else (lambda _: 1.0) for i in range(len(opt.param_groups))]
    return torch.optim.lr_scheduler.LambdaLR(opt, factors)


def check_choices(**settings: tuple[Any, Sequence[Any]]) -> None:
    """Raise ValueError naming the first setting whose value is not among its choices:
    `check_choices(freeze=(freeze, ("encoder", "none")))`."""
    for name, (value, allowed) in settings.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
