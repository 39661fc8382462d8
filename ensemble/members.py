"""Every member of an ensemble config as one LightningModule: each checkpoint loaded once, run
once per batch, its outputs routed to the members that read them."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ensemble.config import EnsembleConfig, MemberSpec
from ensemble.core.audio import CHUNK_LENGTH, N_TIMESTEPS, samples_to_timesteps, seconds_to_samples
from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import member class {class_path!r} ({e})") from e


class EnsembleModule(pl.LightningModule):
    """Every member of a config; `predict_step` gives their outputs and the vote per window.

    A checkpoint named by several members (with the same overrides) is loaded once and run once
    per batch; a module computes only the outputs that members route (`wanted_outputs`).
    """

    def __init__(self, config: EnsembleConfig, map_location: str = "cpu"):
        super().__init__()
        self.config = config
        self.taxonomy = load_taxonomy(config.labels)
        missing = [
            f"{m.name}: {m.checkpoint}" for m in config.members if not Path(m.checkpoint).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                "member checkpoints not found (train them, e.g. `emergency-ensemble demo`, or "
                "point the ensemble config at yours): " + "; ".join(missing)
            )
        loaded: dict[tuple[str, str], str] = {}
        modules = {}
        self.routes: list[tuple[MemberSpec, str]] = []
        for spec in config.members:
            key = (
                spec.class_path,
                str(spec.checkpoint),
                json.dumps(spec.overrides, sort_keys=True),
            )
            if key not in loaded:
                cls = _import(spec.class_path)
                if not (isinstance(cls, type) and issubclass(cls, MemberModule)):
                    raise ValueError(f"{spec.name}: {spec.class_path} is not a MemberModule")
                loaded[key] = f"m{len(loaded)}"
                try:
                    modules[loaded[key]] = cls.from_checkpoint(
                        spec.checkpoint, map_location, **spec.overrides
                    )
                except TypeError as e:  # an override the member does not take
                    raise ValueError(f"{spec.name}: bad overrides {spec.overrides}: {e}") from e
            self.routes.append((spec, loaded[key]))
        for key, module in modules.items():
            module.wanted_outputs = frozenset(
                spec.output or spec.name for spec, k in self.routes if k == key
            )
        self.members = nn.ModuleDict(modules)
        self.eval()

    def forward(
        self, wave: Tensor, n_valid: Tensor, start_s: Tensor | None = None
    ) -> dict[str, MemberOutput]:
        """Windows `(B, N)` with `n_valid (B,)` real samples -> each member's output (CPU).

        `start_s (B,)`: where each window starts, in seconds from its file's (or stream's) start;
        members may read it from the batch (none of the trained ones does)."""
        T = N_TIMESTEPS * wave.shape[1] // seconds_to_samples(CHUNK_LENGTH)
        steps = torch.tensor([samples_to_timesteps(int(n)) for n in n_valid], device=wave.device)
        batch = {
            "wave": wave,
            "mask": torch.arange(T, device=wave.device)[None] < steps[:, None],  # (B, T)
            "n_valid": n_valid,
            "start_s": torch.zeros(len(n_valid), dtype=torch.float64)
            if start_s is None
            else start_s,
        }
        raw = {key: module.predict_step(batch, 0) for key, module in self.members.items()}
        out = {}
        for spec, key in self.routes:
            result = raw[key]
            if isinstance(result, dict):
                if (spec.output or spec.name) not in result:
                    raise ValueError(
                        f"{spec.name}: {spec.class_path} gives {sorted(result)}, not {spec.output!r}"
                    )
                result = result[spec.output or spec.name]
            out[spec.name] = result.cpu()  # thresholds and abstentions: `rows.vote`
        return out

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, MemberOutput]:
        if batch["wave"] is None:  # only unreadable files in this batch
            return {}
        start_s = torch.tensor([m["start_s"] for m in batch["meta"]], dtype=torch.float64)
        return self(batch["wave"], batch["n_valid"], start_s)
