"""CTranslate2 (faster-whisper) Whisper checkpoints, read with numpy alone and mapped to transformers.

`model.bin` is little-endian: uint32 format version, a string spec name, uint32 revision, uint32
count of variables, then per variable a string name, uint8 rank, rank × uint32 dims, uint8 dtype
id, uint32 byte count and the raw bytes; then uint32 count of aliases and (alias, target) string
pairs. A string is a uint16 length counting a trailing NUL, the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig

from whisper_head.tokens import special_token_ids

log = logging.getLogger(__name__)

FORMAT_VERSION = 6  # the only binary version this reader knows
SPEC_NAME = "WhisperSpec"
# dtype ids of CTranslate2's DataType enum; bf16 (5) has no numpy dtype and is widened to f32
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}


class _Cursor:
    """Reads little-endian fields from a bytes buffer; a short read names the file and offset."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated: needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.uint("H")  # counts the trailing NUL
        raw = self.take(n)
        if n == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: malformed string at offset {self.pos - n}")
        return raw[:-1].decode("utf-8")


def _read_variable(cur: _Cursor) -> tuple[str, np.ndarray]:
    name = cur.string()
    rank = cur.uint("B")
    dims = tuple(cur.uint("I") for _ in range(rank))
    dtype_id = cur.uint("B")
    if dtype_id not in _DTYPES:
        raise ValueError(f"{cur.path}: variable {name}: unknown dtype id {dtype_id}")
    n_bytes = cur.uint("I")
    dtype = np.dtype(_DTYPES[dtype_id]).newbyteorder("<")
    if n_bytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
        raise ValueError(f"{cur.path}: variable {name}: {n_bytes} bytes for dims {dims}")
    x = np.frombuffer(cur.take(n_bytes), dtype=dtype).reshape(dims)
    if dtype_id == 5:  # bfloat16: the upper half of a float32
        x = (x.astype(np.uint32) << 16).view(np.float32)
    return name, x


def read_ct2(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a CTranslate2 `model.bin` (or the folder holding it).

    Returns `(variables, aliases)`: arrays by name in their stored dtype (bf16 widened to f32), and
    alias name -> target name. Raises ValueError naming the file on a bad header or truncation.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CTranslate2 model file")
    return parse_ct2(path.read_bytes(), path)


def parse_ct2(data: bytes, path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`read_ct2` of bytes already in memory; `path` names them in errors and logs."""
    cur = _Cursor(data, Path(path))
    version = cur.uint("I")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: not a CTranslate2 model.bin of format version {FORMAT_VERSION} "
            f"(read {version})"
        )
    spec = cur.string()
    if spec != SPEC_NAME:
        raise ValueError(f"{path}: spec {spec!r}, expected {SPEC_NAME!r}")
    revision = cur.uint("I")
    variables = dict(_read_variable(cur) for _ in range(cur.uint("I")))
    aliases = {}
    for _ in range(cur.uint("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise ValueError(f"{path}: {len(data) - cur.pos} trailing bytes after the aliases")
    log.info("%s: %s revision %d, %d variables", path, spec, revision, len(variables))
    return variables, aliases


def read_ct2_config(folder: str | Path) -> dict:
    """CTranslate2's `config.json` beside `model.bin` ({} when absent)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _n_layers(variables: dict[str, np.ndarray], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _n_heads(variables: dict[str, np.ndarray], side: str, meta: dict) -> int:
    if f"{side}/num_heads" in variables:
        return int(variables[f"{side}/num_heads"])
    if f"{side}_attention_heads" in meta:
        return int(meta[f"{side}_attention_heads"])
    raise ValueError(f"no {side}/num_heads in the model and none in config.json")


# flags of the CTranslate2 decoder that transformers' Whisper cannot express otherwise
_FLAGS = {"activation": 3, "pre_norm": 1, "alibi": 0, "scale_embeddings": 0}  # 3: exact GELU


def _check_flags(variables: dict[str, np.ndarray]) -> None:
    for flag, value in _FLAGS.items():
        x = variables.get(f"decoder/{flag}")
        if x is not None and int(x) != value:
            raise ValueError(f"decoder/{flag} is {int(x)}; a Whisper has {value}")


def ct2_config(variables: dict[str, np.ndarray], config_json: dict | None = None) -> WhisperConfig:
    """A `WhisperConfig` from the tensor shapes, the head counts and CTranslate2's config.json."""
    meta = dict(config_json or {})
    _check_flags(variables)
    d_model, n_mels, _ = variables["encoder/conv1/weight"].shape
    n_vocab = variables["decoder/embeddings/weight"].shape[0]
    ids = special_token_ids(n_vocab)
    begin = meta.get("suppress_ids_begin")
    if begin and begin[-1] != ids["eos_token_id"]:
        log.warning("config.json suppress_ids_begin %s does not end in eos %s", begin, ids)
    return WhisperConfig(
        vocab_size=n_vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_n_layers(variables, "encoder"),
        decoder_layers=_n_layers(variables, "decoder"),
        encoder_attention_heads=_n_heads(variables, "encoder", meta),
        decoder_attention_heads=_n_heads(variables, "decoder", meta),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        suppress_tokens=meta.get("suppress_ids"),
        begin_suppress_tokens=begin,
        **ids,
    )


def _split_rows(x: np.ndarray, n: int, name: str) -> list[np.ndarray]:
    if x.shape[0] % n:
        raise ValueError(f"{name}: {x.shape[0]} rows do not split in {n}")
    return np.split(x, n, axis=0)


def _attention(get, src: str, dst: str, cross: bool) -> dict[str, np.ndarray]:
    """q/k/v/out of one attention block; CTranslate2 stacks q,k,v (self) or k,v (cross) by rows."""
    if cross:
        q_w, q_b = get(f"{src}/linear_0/weight"), get(f"{src}/linear_0/bias")
        k_w, v_w = _split_rows(get(f"{src}/linear_1/weight"), 2, src)
        k_b, v_b = _split_rows(get(f"{src}/linear_1/bias"), 2, src)
        out = "linear_2"
    else:
        q_w, k_w, v_w = _split_rows(get(f"{src}/linear_0/weight"), 3, src)
        q_b, k_b, v_b = _split_rows(get(f"{src}/linear_0/bias"), 3, src)
        out = "linear_1"
    if np.any(k_b != 0):  # Whisper's key projection has no bias: a non-zero one would be lost
        raise ValueError(f"{src}: the key bias is not zero (max |b| {np.abs(k_b).max():.3g})")
    return {
        f"{dst}.q_proj.weight": q_w,
        f"{dst}.q_proj.bias": q_b,
        f"{dst}.k_proj.weight": k_w,
        f"{dst}.v_proj.weight": v_w,
        f"{dst}.v_proj.bias": v_b,
        f"{dst}.out_proj.weight": get(f"{src}/{out}/weight"),
        f"{dst}.out_proj.bias": get(f"{src}/{out}/bias"),
    }


def _norm(get, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": get(f"{src}/gamma"), f"{dst}.bias": get(f"{src}/beta")}


def _linear(get, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": get(f"{src}/weight"), f"{dst}.bias": get(f"{src}/bias")}


def _layer(get, side: str, i: int) -> dict[str, np.ndarray]:
    src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    out = _attention(get, f"{src}/self_attention", f"{dst}.self_attn", cross=False)
    out |= _norm(get, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
    if side == "decoder":
        out |= _attention(get, f"{src}/attention", f"{dst}.encoder_attn", cross=True)
        out |= _norm(get, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
    out |= _linear(get, f"{src}/ffn/linear_0", f"{dst}.fc1")
    out |= _linear(get, f"{src}/ffn/linear_1", f"{dst}.fc2")
    out |= _norm(get, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    return out


def ct2_to_transformers(
    variables: dict[str, np.ndarray], aliases: dict[str, str], config_json: dict | None = None
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Map CTranslate2 Whisper variables to a transformers `WhisperForConditionalGeneration`.

    Returns the config and a float32 state dict (fp16 widens exactly). Raises ValueError when a
    variable is missing, left over, or the stored decoder projection is not the token embedding.
    """
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        target = aliases.get(name, name)
        if target not in variables:
            raise ValueError(f"CTranslate2 variable {name} is missing")
        used.add(name)
        return variables[target]

    config = ct2_config(variables, config_json)
    out = {
        "model.encoder.embed_positions.weight": get("encoder/position_encodings/encodings"),
        "model.decoder.embed_positions.weight": get("decoder/position_encodings/encodings"),
        "model.decoder.embed_tokens.weight": get("decoder/embeddings/weight"),
    }
    for conv in ("conv1", "conv2"):
        out |= _linear(get, f"encoder/{conv}", f"model.encoder.{conv}")
    for side, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        out |= _norm(get, f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(n):
            out |= _layer(get, side, i)
    if not np.array_equal(
        get("decoder/projection/weight"), out["model.decoder.embed_tokens.weight"]
    ):
        raise ValueError("decoder/projection/weight is not the token embedding (untied weights)")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    scalars = {k for k, v in variables.items() if v.ndim == 0}
    left = sorted((set(variables) | set(aliases)) - used - scalars)
    if left:
        raise ValueError(f"CTranslate2 variables not mapped: {left[:5]} ({len(left)})")
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in out.items()}
    return config, state
