"""A transformers Whisper exported to openai-whisper's checkpoint format.

`save_openai` writes `dims` and `model_state_dict` as `whisper.load_model` reads them; the reverse
of `weights.openai_to_transformers`. The CTranslate2 export is `whisper_head.ct2.export_ct2`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import whisper.model
from transformers import WhisperForConditionalGeneration

from whisper_head.weights import openai_key


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

    Every key of openai-whisper's model is mapped through `weights.openai_key`, so the two
    directions share one table; raises ValueError when a tensor is missing or mis-shaped.
    """
    dims = openai_dims(model)
    keys = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).state_dict()
    source = model.state_dict()
    state, bad = {}, []
    for key, ref in keys.items():
        tensor = source.get(openai_key(key))
        if tensor is None or tuple(tensor.shape) != tuple(ref.shape):
            bad.append(f"{key} <- {openai_key(key)}")
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
