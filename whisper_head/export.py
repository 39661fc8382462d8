"""Exports of a transformers Whisper to the formats of the other engines.

- `save_openai`: an openai-whisper checkpoint (`dims`, `model_state_dict`) that `whisper.load_model`
  reads; the reverse of `weights.openai_to_transformers`.
- `export_ct2`: a CTranslate2 folder (model.bin, config.json, vocabulary.txt) written by
  ctranslate2's own Whisper converter from the model in memory, with the vocabulary of
  openai-whisper's tokenizer. faster-whisper reads it when a `tokenizer.json` lies beside.
- `ct2_cache`: `export_ct2` once per weights and quantisation, under the cache folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from functools import cache
from pathlib import Path

import torch
import whisper.model
from transformers import WhisperConfig, WhisperForConditionalGeneration

from whisper_head.decode import default_suppress_ids, tokenizer_for
from whisper_head.weights import _openai_key, default_cache

log = logging.getLogger(__name__)


# --- openai-whisper ----------------------------------------------------------------------------


def openai_dims(model: WhisperForConditionalGeneration) -> dict[str, int]:
    """openai-whisper's `ModelDimensions` of a transformers Whisper, as a dict."""
    c = model.config
    if c.encoder_ffn_dim != 4 * c.d_model or c.decoder_ffn_dim != 4 * c.d_model:
        raise ValueError(f"openai-whisper needs feed-forward width 4 × d_model, got {c}")
    return {
        "n_mels": c.num_mel_bins,
        "n_audio_ctx": c.max_source_positions,
        "n_audio_state": c.d_model,
        "n_audio_head": c.encoder_attention_heads,
        "n_audio_layer": c.encoder_layers,
        "n_vocab": c.vocab_size,
        "n_text_ctx": c.max_target_positions,
        "n_text_state": c.d_model,
        "n_text_head": c.decoder_attention_heads,
        "n_text_layer": c.decoder_layers,
    }


def transformers_to_openai(model: WhisperForConditionalGeneration) -> dict:
    """`{"dims", "model_state_dict"}` of openai-whisper for a transformers Whisper (fp32 copies).

    Every key of openai-whisper's model is mapped through `weights._openai_key`, so the two
    directions share one table; raises ValueError when a tensor is missing or mis-shaped.
    """
    dims = openai_dims(model)
    keys = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).state_dict()
    source = model.state_dict()
    state, bad = {}, []
    for key, ref in keys.items():
        tensor = source.get(_openai_key(key))
        if tensor is None or tuple(tensor.shape) != tuple(ref.shape):
            bad.append(f"{key} <- {_openai_key(key)}")
            continue
        state[key] = tensor.detach().to("cpu", torch.float32).clone()
    if bad:
        raise ValueError(f"cannot map to openai-whisper: {bad[:5]} ({len(bad)} in all)")
    return {"dims": dims, "model_state_dict": state}


def save_openai(model: WhisperForConditionalGeneration, path: str | Path) -> Path:
    """Write an openai-whisper `.pt` that `whisper.load_model(path)` loads (weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(transformers_to_openai(model), path)
    return path


# --- CTranslate2 -------------------------------------------------------------------------------


@cache
def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in which byte-level BPE vocabularies are written."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def whisper_vocabulary(n_vocab: int) -> list[str]:
    """The token strings of openai-whisper's tokenizer for a vocabulary size, in id order.

    Ordinary tokens in byte-level BPE characters, then the special tokens (`<|endoftext|>`, ...,
    `<|notimestamps|>`, timestamps), as in CTranslate2's and transformers' Whisper vocabularies.
    """
    encoding = tokenizer_for(WhisperConfig(vocab_size=n_vocab)).encoding
    table = _byte_chars()
    tokens: list[str | None] = [None] * encoding.n_vocab
    for token, rank in encoding._mergeable_ranks.items():
        tokens[rank] = "".join(table[b] for b in token)
    for token, rank in encoding._special_tokens.items():
        tokens[rank] = token
    if encoding.n_vocab != n_vocab or None in tokens:  # (multilingual id 50256 is "")
        raise ValueError(f"openai-whisper's tokenizer has no vocabulary of {n_vocab} tokens")
    return tokens


class _Tokens:
    """What ctranslate2's Whisper loader asks of a tokenizer: the vocabulary, no special list."""

    additional_special_tokens: tuple = ()

    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


def export_ct2(
    model: WhisperForConditionalGeneration,
    folder: str | Path,
    quantization: str | None = "int8",
    tokenizer_json: str | Path | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write `model` as a CTranslate2 Whisper into `folder` (replaced atomically).

    `quantization`: CTranslate2's weight type (int8, int8_float32, float32, ...; None keeps fp32).
    `tokenizer_json` is copied beside when given (faster-whisper reads it); `extra_files` (name ->
    text) are written beside before the folder appears.
    """
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters.transformers import WhisperLoader

    model = copy.deepcopy(model).float().cpu()  # ctranslate2 quantises the tensors it is given
    tokens = _Tokens(whisper_vocabulary(model.config.vocab_size))
    tokenizer = tokenizer_for(model)
    lang = sorted(tokenizer.all_language_tokens) if model.config.vocab_size >= 51865 else []

    class _InMemory(Converter):
        def _load(self):
            spec = WhisperLoader()(model, tokens)
            spec.config.lang_ids = lang
            spec.config.suppress_ids = default_suppress_ids(tokenizer)
            spec.config.suppress_ids_begin = [tokenizer.encode(" ")[0], tokenizer.eot]
            return spec

    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    with torch.no_grad():
        _InMemory().convert(str(tmp), quantization=quantization, force=True)
    if tokenizer_json is not None:
        shutil.copy(tokenizer_json, tmp / "tokenizer.json")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote the same export meanwhile: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a model's tensors (the key of exported copies)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def ct2_cache(
    model: WhisperForConditionalGeneration,
    quantization: str = "int8",
    cache_dir: str | Path | None = None,
) -> Path:
    """A CTranslate2 copy of `model` in `cache_dir` (default `weights.default_cache()`), written
    the first time these weights are asked for with this quantisation."""
    digest = weights_digest(model)
    folder = Path(cache_dir or default_cache()) / "ct2" / f"{digest[:16]}-{quantization}"
    marker = folder / "source.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == digest):
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting the Whisper backbone to CTranslate2 (%s): %s", quantization, folder)
        export_ct2(model, folder, quantization, extra_files={"source.json": json.dumps(digest)})
    return folder
