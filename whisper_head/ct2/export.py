"""A transformers Whisper written as a CTranslate2 model.

- `export_ct2`: a CTranslate2 folder (model.bin, config.json, vocabulary.txt) written by
  ctranslate2's own Whisper converter from the model in memory, with the vocabulary of
  openai-whisper's tokenizer. faster-whisper reads it when a `tokenizer.json` lies beside.
- `ct2_cache`: `export_ct2` once per weights (`weights_digest`) and quantisation, under the cache
  folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration

from whisper_head.cache import default_cache
from whisper_head.tokens import (
    MULTILINGUAL_VOCAB,
    VocabularyTokens,
    default_suppress_ids,
    tokenizer_for,
    whisper_vocabulary,
)

log = logging.getLogger(__name__)


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
    tokens = VocabularyTokens(whisper_vocabulary(model.config.vocab_size))
    tokenizer = tokenizer_for(model)
    multilingual = model.config.vocab_size >= MULTILINGUAL_VOCAB
    lang = sorted(tokenizer.all_language_tokens) if multilingual else []

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
    """A CTranslate2 copy of `model` in `cache_dir` (default `cache.default_cache()`), written
    the first time these weights are asked for with this quantisation."""
    digest = weights_digest(model)
    folder = Path(cache_dir or default_cache()) / "ct2" / f"{digest[:16]}-{quantization}"
    marker = folder / "source.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == digest):
        folder.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting the Whisper backbone to CTranslate2 (%s): %s", quantization, folder)
        export_ct2(model, folder, quantization, extra_files={"source.json": json.dumps(digest)})
    return folder
