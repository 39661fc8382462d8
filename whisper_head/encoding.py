"""How `WhisperHeadModule` gets a batch's encoder outputs: the encoder in float32 or bfloat16,
and the feature cache of a frozen encoder (built for whole splits, read back every epoch)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ensemble.core.audio import SAMPLES_PER_TIMESTEP
from ensemble.core.data import collate
from ensemble.core.progress import progress
from whisper_head.cache import FeatureCache, weights_digest
from whisper_head.decode import log_mel
from whisper_head.model import Encoded

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class EncoderFeatures:
    """The encoder side of `WhisperHeadModule`: its `model`, `hparams` (`cpu_bf16`,
    `feature_cache`) and `_cache` come from the module."""

    @property
    def encoder_trainable(self) -> bool:
        """Whether a trained part of the encoder lies below what the cache holds (then no cache)."""
        top = {id(p) for p in self._top_parameters()}
        return any(p.requires_grad and id(p) not in top for p in self.model.encoder.parameters())

    def _top_parameters(self) -> list:
        """The encoder's last `top_blocks` blocks and final layer norm (none when 0)."""
        n = self.hparams.get("top_blocks", 0)
        encoder = self.model.encoder
        return [*encoder.layers[-n:].parameters(), *encoder.layer_norm.parameters()] if n else []

    def _top_training(self) -> bool:
        """Whether the top blocks train in this epoch (`top_blocks`, `top_epochs`)."""
        epochs = self.hparams.get("top_epochs")
        n = self.hparams.get("top_blocks", 0)
        return bool(n) and (epochs is None or self.current_epoch < epochs)

    def _top_names(self) -> tuple[str, ...]:
        """The encoder's state-dict prefixes of `_top_parameters`: the cache is not of them."""
        n, last = self.hparams.get("top_blocks", 0), len(self.model.encoder.layers)
        return (*(f"layers.{i}." for i in range(last - n, last)), "layer_norm.") if n else ()

    def _freeze(self, freeze: str) -> None:
        """`freeze` (module doc); with `top_blocks`, those blocks of a frozen encoder train on the
        cached states below them."""
        backbone, n = self.model.backbone, self.hparams.get("top_blocks", 0)
        if freeze == "encoder":
            self.model.encoder.requires_grad_(False)
        elif freeze == "all_but_head":
            backbone.requires_grad_(False)
        if n and (freeze != "encoder" or not 0 < n <= len(self.model.encoder.layers)):
            raise ValueError(f"top_blocks {n} needs freeze: encoder and at most "
                             f"{len(self.model.encoder.layers)} blocks, got freeze {freeze!r}")  # fmt: skip
        for p in self._top_parameters():
            p.requires_grad_(True)
        backbone.model.encoder.embed_positions.requires_grad_(False)

    @property
    def _bf16_encoder(self) -> bool:
        """Whether the encoder runs in bfloat16: always on GPU; on CPU as `cpu_bf16` says
        ("auto": when the CPU has native bfloat16 arithmetic)."""
        if self.device.type == "cuda":
            return True
        want = self.hparams.cpu_bf16
        return self.device.type == "cpu" and (want is True or (want == "auto" and cpu_has_bf16()))

    def _autocast(self):
        enabled = self._bf16_encoder and (self.device.type == "cuda" or not self.training)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _encode_wave(self, wave: Tensor) -> Encoded:
        """Waveform `(B, N)` -> `Encoded`; the one encoder forward of a batch."""
        mel = log_mel(wave)  # (B, 80, 3000)
        grad = torch.is_grad_enabled() and (self.encoder_trainable or self._top_training())
        with torch.set_grad_enabled(grad), self._autocast():
            return self.model.encode(mel)

    def feature_cache(self) -> FeatureCache | None:
        """The encoder-feature cache, when `feature_cache` names a folder and the encoder is
        frozen (a trained encoder's outputs change every step: nothing to cache)."""
        if self.hparams.feature_cache is None or self.encoder_trainable:
            return None
        if self._cache is None:
            self._cache = FeatureCache(
                self.hparams.feature_cache,
                weights_digest(self.model.encoder, self._top_names()),
                self.model.cached_layers,
                "bf16" if self._bf16_encoder else "fp32",
            )
        return self._cache

    @torch.no_grad()
    def _encode_for_cache(self, wave: Tensor) -> Encoded:
        """The frozen encoder's outputs at the cache's precision, rounded to float16 as stored."""
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self._bf16_encoder):
            states = self.model.cache_states(self.model.encode(log_mel(wave)))
        return states.half()

    def _encode(self, batch: dict, index: Tensor | None = None, hidden: bool = True) -> Encoded:
        """A batch's `Encoded`: from the feature cache when there is one (missing windows are
        computed and stored), else from the waveform. With `index (B, k)` and the whole batch
        cached, the head's states are read at those timesteps only, and the last layer
        (the decoder's input) only when `hidden`."""
        cache = self.feature_cache()
        if cache is None:
            return self._encode_wave(batch["wave"])
        n_samples = batch["mask"].shape[1] * SAMPLES_PER_TIMESTEP  # the window, padding included
        keys = cache.keys(batch["path"], batch["start_s"], n_samples)
        top = self.hparams.get("top_blocks", 0)
        if all(k in cache for k in keys):
            # a clip head pools every timestep of the event: its statistics must be the ones
            # it sees at prediction, so it reads whole windows
            partial = self.model.config.layer_weights and not self.model.config.clip_head
            if index is not None and partial and not top:
                states = cache.load(keys, index).to(self.device)
                last = cache.load(keys, layers=slice(-1, None))[:, 0] if hidden else None
                last = None if last is None else last.to(self.device)
                return self.model.from_cache(states, index, last)
            states = cache.load(keys).to(self.device)
        elif batch["wave"].shape[1] != n_samples:
            raise RuntimeError(f"windows missing from the feature cache {cache.root}, no audio")
        else:
            states = self._encode_for_cache(batch["wave"])
            for k, st in zip(keys, states, strict=True):
                if k not in cache:
                    cache.put(k, st)
        if top:  # the trained top blocks again, on the frozen ones' cached output (in bfloat16
            # where the cache was computed in it, in training too: a block step costs 2x in fp32)
            bf16 = torch.autocast(self.device.type, torch.bfloat16, enabled=self._bf16_encoder)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self._top_training()), bf16:
                states = self.model.recompute_top(states, top)
        return self.model.from_cache(states)

    def build_feature_cache(self, dataset, desc: str = "encoder features") -> int:
        """Fill the cache with every window of a `WindowDataset` not in it yet, with a progress
        bar; returns how many were computed. A killed build resumes from the stored entries."""
        cache = self.feature_cache()
        if cache is None:
            return 0
        paths = dataset.clips["path"]
        keys = [cache.key(paths.iloc[r.clip], r.start, dataset.n_samples) for r in dataset.refs]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if not todo:
            return 0
        batch_size = 8 if self.device.type == "cuda" else 4
        dataset.read_audio = True
        loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, collate_fn=collate)
        done = 0
        # the loader and the bar draw from the global generator: without the fork, a fit that
        # builds the cache would train from another random state than one that finds it built
        with torch.random.fork_rng(devices=[]):
            desc = f"{desc} ({len(todo)} of {len(keys)} to compute)"
            for batch in progress(loader, desc=desc, unit="batch"):
                states = self._encode_for_cache(batch["wave"].to(self.device))
                for st in states:
                    cache.put(keys[todo[done]], st)
                    done += 1
        return done

    def _build_caches(self, splits: tuple[str, ...]) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", {})
        if self.feature_cache() is None or not datasets:
            return
        if self.trainer.is_global_zero:
            for split in splits:
                if split in datasets:
                    n = self.build_feature_cache(datasets[split], f"{split} encoder features")
                    log.info("feature cache: %d %s windows computed", n, split)
        self.trainer.strategy.barrier()
        for split in splits:  # every window is cached now: the loaders need not read audio
            if split in datasets:
                datasets[split].read_audio = False
