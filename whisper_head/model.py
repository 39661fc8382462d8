"""Whisper encoder with an MLP over every timestep, and the decoder's teacher-forced text loss.

The backbone is transformers' `WhisperForConditionalGeneration`. The encoder runs once per window
(`encode`); the timestep head (`frame_logits`) and the decoder (`text_loss`, or decoding through
`whisper_head.decode.transcribe_encoded`) share its output.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

from ensemble.core.labels import IGNORE_ID
from whisper_head.attention import AttentionClipHead
from whisper_head.tokens import language_ids, prompt_tokens, special_token_ids, text_language
from whisper_head.weights import load_whisper

RANDOM_PREFIX = "random:"
IGNORE = IGNORE_ID  # target id that cross-entropy skips (one value for frames and tokens)


@dataclass(frozen=True)
class WhisperHeadConfig:
    # what `load_whisper` loads; "random:tiny" builds a random multilingual-vocabulary Whisper with
    # d_model 16 and one layer each side, from no file (tests); a checkpoint's state dict replaces
    # the weights either way
    source: str = "bundled:base"
    hidden_dim: int = 3072
    n_outputs: int = 20  # 19 classes + none (column 0)
    layer_weights: bool = False  # learned softmax-weighted sum over encoder hidden states
    # the hidden states that sum mixes (0: the embeddings, L: the last layer); None: all L + 1
    layers: tuple[int, ...] | None = None
    # each mixed hidden state layer-normalised first (no parameters): the residual stream inside
    # the encoder has a few channels in the hundreds, its last layer is normalised already
    layer_norm: bool = False
    # a linear clip classifier on the head's states pooled (mean and max) over the event
    clip_head: bool = False
    # how the clip head pools: "event", the mean and max over the event the timestep head points
    # at; "attention", gated attention over the whole window (`whisper_head.attention`)
    clip_pool: str = "event"
    clip_hidden: int = 256  # attention pooling: the width of its per-step MLP
    clip_stride: int = 4  # attention pooling: timesteps averaged into one step (80 ms at 4)
    clip_dropout: float = 0.3  # attention pooling
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.source.startswith(RANDOM_PREFIX) and self.source != "random:tiny":
            raise ValueError(f"the only random source is 'random:tiny', got {self.source!r}")
        if self.hidden_dim < 1 or self.n_outputs < 2:
            raise ValueError(f"bad sizes in {self}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.clip_dropout < 1.0):
            raise ValueError(
                f"dropouts must lie in [0, 1), got {self.dropout}, {self.clip_dropout}"
            )
        if self.clip_pool not in ("event", "attention"):
            raise ValueError(f"clip_pool must be 'event' or 'attention', got {self.clip_pool!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
            if not self.layers or min(self.layers) < 0 or len(set(self.layers)) < len(self.layers):
                raise ValueError(f"layers must be distinct indices >= 0, got {self.layers}")


def tiny_random_whisper(
    seed: int = 0, vocab_size: int = 51865, ffn_dim: int = 32
) -> WhisperForConditionalGeneration:
    """A random Whisper with openai-whisper's vocabulary (51865 multilingual, 51864 English),
    d_model 16, 1+1 layers (openai-whisper's shape needs `ffn_dim` 64); the same weights for the
    same seed, the global generator untouched."""
    config = WhisperConfig(
        vocab_size=vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        **special_token_ids(vocab_size),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.model.encoder.embed_positions.requires_grad_(False)
    return model


def build_backbone(source: str) -> WhisperForConditionalGeneration:
    if source == "random:tiny":
        return tiny_random_whisper()
    return load_whisper(source)[0]


class Encoded(NamedTuple):
    hidden: Tensor | None  # (B, 1500, D): the encoder's output, what the decoder attends to
    states: tuple[Tensor, ...] | None  # the head's layers (B, 1500, D) when layers are weighted
    # set when `states` hold only these timesteps `(B, k)` (read so from a feature cache)
    index: Tensor | None = None


class TimestepHead(nn.Module):
    """MLP over every timestep: `(B, T, D)` -> logits `(B, T, K)`."""

    def __init__(self, d_model: int, hidden_dim: int, n_outputs: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(d_model, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class WhisperHeadModel(nn.Module):
    """Whisper backbone + timestep head. Log-mel `(B, 80, 3000)` -> frame logits `(B, 1500, K)`."""

    config_class: ClassVar[type[WhisperHeadConfig]] = WhisperHeadConfig

    def __init__(self, config: WhisperHeadConfig | None = None):
        super().__init__()
        self.config = c = config or WhisperHeadConfig()
        self.backbone = build_backbone(c.source).train()  # loaders leave it in eval mode
        bc = self.backbone.config
        self.head = TimestepHead(bc.d_model, c.hidden_dim, c.n_outputs, c.dropout)
        last = bc.encoder_layers
        if c.layer_weights and c.layers is not None and max(c.layers) > last:
            raise ValueError(f"layers {c.layers}: the encoder has hidden states 0..{last}")
        if not c.layer_weights:
            self.head_layers: tuple[int, ...] = (last,)
        else:
            self.head_layers = tuple(range(last + 1)) if c.layers is None else c.layers
        # what a feature cache stores: the head's layers and the last one (the decoder's input)
        self.cached_layers = tuple(sorted({*self.head_layers, last}))
        if c.layer_weights:  # uniform at first
            self.layer_logits = nn.Parameter(torch.zeros(len(self.head_layers)))
        if c.clip_head and c.clip_pool == "attention":
            self.clip_head = AttentionClipHead(
                len(self.head_layers) if c.layer_weights else 1,
                bc.d_model,
                c.n_outputs,
                hidden=c.clip_hidden,
                stride=c.clip_stride,
                dropout=c.clip_dropout,
            )
        elif c.clip_head:
            n_in = 2 * len(self.head_layers) * bc.d_model
            self.clip_head = nn.Sequential(  # the pooled features standardised, as a probe's
                nn.BatchNorm1d(n_in, affine=False),
                nn.Dropout(c.dropout),
                nn.Linear(n_in, c.n_outputs),
            )

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.model.encoder

    def encode(self, mel: Tensor) -> Encoded:
        """The one encoder pass: log-mel `(B, 80, 3000)` -> `Encoded` with `(B, 1500, D)` tensors."""
        weighted = self.config.layer_weights
        out = self.encoder(mel, output_hidden_states=weighted)
        states = tuple(out.hidden_states[i] for i in self.head_layers) if weighted else None
        return Encoded(out.last_hidden_state, states)

    def cache_states(self, encoded: Encoded) -> Tensor:
        """What a feature cache stores of `Encoded`: `(B, S, T, D)`, S = `len(cached_layers)`."""
        if not self.config.layer_weights:
            return encoded.hidden[:, None]
        by_layer = dict(zip(self.head_layers, encoded.states, strict=True))
        by_layer[self.cached_layers[-1]] = encoded.hidden
        return torch.stack([by_layer[i] for i in self.cached_layers], dim=1)

    def from_cache(
        self, states: Tensor, index: Tensor | None = None, hidden: Tensor | None = None
    ) -> Encoded:
        """`Encoded` from cached states `(B, S, T, D)` (see `cache_states`); with `index`, the
        states hold only those timesteps `(B, k)` and `hidden` is the full last layer (or None
        where no decoder reads it)."""
        if states.shape[1] != len(self.cached_layers):
            raise ValueError(f"{states.shape[1]} cached layers, expected {self.cached_layers}")
        by_layer = dict(zip(self.cached_layers, states.unbind(1), strict=True))
        head = tuple(by_layer[i] for i in self.head_layers) if self.config.layer_weights else None
        # kept in the cache's float16 until `frame_logits` picks the timesteps it scores
        if index is None:
            return Encoded(by_layer[self.cached_layers[-1]], head)
        if not self.config.layer_weights:
            raise ValueError("timesteps are read from the cache for the layer mix only")
        return Encoded(hidden, head, index)

    def recompute_top(self, states: Tensor, n: int) -> Tensor:
        """Cached states `(B, S, T, D)` with the hidden states above `last - n` computed again by
        the encoder's last `n` blocks (and its final layer norm) from the cached state `last - n`,
        so that those blocks can train on a cache of the frozen ones below them."""
        last = self.backbone.config.encoder_layers
        if not 0 < n <= last or last - n not in self.cached_layers:
            raise ValueError(f"top blocks {n}: hidden state {last - n} is not cached "
                             f"(cached: {self.cached_layers})")  # fmt: skip
        encoder = self.encoder
        dtype = encoder.layer_norm.weight.dtype
        h = states[:, self.cached_layers.index(last - n)].to(dtype)
        computed = {}
        for i in range(last - n, last):
            h = encoder.layers[i](h, None)
            computed[i + 1] = h
        computed[last] = encoder.layer_norm(h)
        layers = [computed.get(i, states[:, j]).to(dtype) for j, i in enumerate(self.cached_layers)]
        return torch.stack(layers, dim=1)

    def frame_logits(self, encoded: Encoded, index: Tensor | None = None) -> Tensor:
        """`Encoded` -> logits `(B, 1500, K)`, column 0 = none; with `index (B, k)` only at those
        timesteps: `(B, k, K)`."""
        dtype = self.head.layers[1].weight.dtype
        if encoded.index is not None:  # the states are those timesteps already
            if index is not None and not torch.equal(index, encoded.index):
                raise ValueError("the states hold other timesteps than asked for")
            index = None

        def pick(t: Tensor) -> Tensor:  # (B, T, D) -> (B, k, D) in the head's dtype
            if index is not None:  # cached states stay float16 until only these are left
                t = t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
            t = t.to(dtype)
            return F.layer_norm(t, t.shape[-1:]) if self.config.layer_norm else t

        if self.config.layer_weights:
            w = self.layer_logits.softmax(0)  # (len(head_layers),)
            states = torch.stack([pick(t) for t in encoded.states])  # (L, B, k, D)
            x = torch.einsum("l,lbtd->btd", w.to(states.dtype), states)
        else:
            x = pick(encoded.hidden)
        return self.head(x)

    @property
    def attention_pool(self) -> bool:
        """Whether the clip head pools by attention over the whole window."""
        return self.config.clip_head and self.config.clip_pool == "attention"

    def attention_logits(self, encoded: Encoded, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Clip logits `(B, K + 1)` of the attention clip head over the valid timesteps `mask (B, T)`
        of whole windows, and its attention's log-probabilities `(B, S)` (`AttentionClipHead`)."""
        if not self.attention_pool:
            raise ValueError("this model has no attention clip head (config.clip_pool)")
        if encoded.index is not None:
            raise ValueError("the attention clip head reads whole windows, not picked timesteps")
        states = encoded.states if self.config.layer_weights else (encoded.hidden,)
        return self.clip_head(states, mask)

    def clip_logits(self, encoded: Encoded, pick: Tensor) -> Tensor:
        """Clip logits `(B, K)` of the head's states pooled over the timesteps `pick (B, T)`
        (those of `encoded`: all, or the ones it was read at): each state's mean and maximum
        there, side by side, into a linear layer. A row picking nothing pools every timestep."""
        if not self.config.clip_head or self.attention_pool:
            raise ValueError("this model has no event-pooled clip head (config.clip_head)")
        pick = torch.where(pick.any(1, keepdim=True), pick, torch.ones_like(pick))
        w = pick[..., None].to(self.clip_head[-1].weight.dtype)  # (B, T, 1)
        states = encoded.states if self.config.layer_weights else (encoded.hidden,)
        pooled = []
        for t in states:
            t = t.to(w.dtype)
            if self.config.layer_norm:
                t = F.layer_norm(t, t.shape[-1:])
            pooled.append((t * w).sum(1) / w.sum(1))
            pooled.append(t.masked_fill(w == 0, float("-inf")).amax(1))
        return self.clip_head(torch.cat(pooled, dim=-1))

    def forward(self, mel: Tensor) -> Tensor:
        """Log-mel `(B, 80, 3000)` -> frame logits `(B, 1500, K)`."""
        return self.frame_logits(self.encode(mel))

    def text_loss(self, hidden: Tensor, input_ids: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced cross-entropy of the decoder on encoder outputs `hidden (B, T, D)`.

        `input_ids (B, L)` decoder inputs; `labels (B, L)` the next token at each position, -100
        where no loss is taken (prompt, padding). See `text_targets`.
        """
        logits = self.backbone(encoder_outputs=(hidden,), decoder_input_ids=input_ids).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


def text_targets(
    prompts: Sequence[Sequence[int]],
    texts: Sequence[Sequence[int]],
    eot: int,
    max_len: int = 448,
    lead: Sequence[int | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Decoder inputs and labels `(B, L)` for `prompt + text + [eot]` per row, cut to `max_len`.

    Labels are the inputs shifted by one, -100 at prompt positions and padding; inputs are padded
    with `eot`. The text tokens and the end token are scored, and `lead[i]` (when given and not
    None) at the first position: the token after the start token, the language or
    `<|nospeech|>`, as Whisper itself was trained.
    """
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    seqs = [
        list(p) + list(t)[: max_len - len(p) - 1] + [eot]
        for p, t in zip(prompts, texts, strict=True)
    ]
    L = max(map(len, seqs)) - 1
    input_ids = torch.full((len(seqs), L), eot, dtype=torch.long)
    labels = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        input_ids[i, : len(s) - 1] = torch.tensor(s[:-1])
        labels[i, len(p) - 1 : len(s) - 1] = torch.tensor(s[len(p) :])
        if lead is not None and lead[i] is not None:
            labels[i, 0] = lead[i]
    return input_ids, labels


def transcript_targets(
    tokenizer,
    transcripts: Sequence[str],
    languages: Sequence[str],
    multilingual: bool,
    lead: bool = False,
) -> tuple[Tensor, Tensor]:
    """`text_targets` for reference transcripts ("" for a window without speech).

    Each row's prompt takes its reference's language (`text_language`). `lead`: a multilingual
    decoder also learns the token after the start token: the language where something is said,
    `<|nospeech|>` where nothing is (language detection and the no-speech probability then learn
    the data's voices and sounds).
    """
    texts = [
        tokenizer.encode(" " + unicodedata.normalize("NFC", t).strip()) if t.strip() else []
        for t in transcripts
    ]
    langs = [text_language(t, tuple(languages)) for t in transcripts]
    prompts = [prompt_tokens(tokenizer, lang, multilingual) for lang in langs]
    firsts = None
    if lead and multilingual:
        firsts = [
            language_ids(tokenizer, [lang])[0] if t.strip() else tokenizer.no_speech
            for t, lang in zip(transcripts, langs, strict=True)
        ]
    return text_targets(prompts, texts, tokenizer.eot, lead=firsts)
