"""`CT2Generator`: decoding by CTranslate2 from the PyTorch encoder's outputs, the `generator` of
`decode.transcribe_encoded`."""

from __future__ import annotations

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration

from whisper_head.ct2.export import ct2_cache
from whisper_head.decode import DecodingOptions


class CT2Generator:
    """Decoding by CTranslate2 from encoder outputs of the PyTorch encoder.

    The backbone is exported once per weights (`ct2_cache`); `compute_type` float32 gives
    the transcripts of transformers' greedy decoding, int8 is faster and may change some words.
    Prompts go per row, so windows of several languages decode in one batch.
    """

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        compute_type: str = "float32",
        threads: int = 0,
        cache_dir: str | None = None,
    ):
        import ctranslate2

        if compute_type not in ("float32", "int8", "int8_float32"):
            raise ValueError(
                f"compute_type must be float32, int8 or int8_float32: {compute_type!r}"
            )
        quantization = "float32" if compute_type == "float32" else "int8"
        self.folder = ct2_cache(model, quantization, cache_dir)
        self.model = ctranslate2.models.Whisper(
            str(self.folder),
            device="cpu",
            compute_type=compute_type,
            intra_threads=threads or torch.get_num_threads(),
        )
        self._ctranslate2 = ctranslate2

    @staticmethod
    def max_length(prompt_len: int, max_new_tokens: int) -> int:
        """CTranslate2's `max_length` that allows `max_new_tokens` after a prompt: it decodes
        min(max_length / 2, max_length - prompt_len + 1) tokens (at most 224 in a 448 context)."""
        return max(2 * max_new_tokens, max_new_tokens + prompt_len - 1)

    def generate(
        self,
        hidden: torch.Tensor,
        prompts: list[list[int]],
        options: DecodingOptions,
        eot: int,
    ) -> list[tuple[list[int], float]]:
        """Text tokens and avg_logprob per row of encoder outputs `(B, T, D)` and prompts."""
        features = np.ascontiguousarray(hidden.detach().float().cpu().numpy())
        results = self.model.generate(
            self._ctranslate2.StorageView.from_array(features),
            prompts,
            beam_size=options.beam_size,
            max_length=self.max_length(len(prompts[0]), options.max_new_tokens),
            return_scores=True,
        )
        out = []
        for r in results:
            tokens = [t for t in r.sequences_ids[0] if t < eot]
            # the score is the log-prob sum over len(tokens); as faster-whisper, spread it over
            # the text tokens and the end token like openai-whisper's avg_logprob
            n = len(r.sequences_ids[0])
            out.append((tokens, r.scores[0] * n / (n + 1)))
        return out
