"""The keyword judge's reading: a Whisper member's transcripts of a split, from the feature cache.

For every window of the split (val by default: choices are made there), the decoder of a fitted
`WhisperHeadModule` checkpoint transcribes the cached encoder output as the member does at
prediction (language detected among the config's languages). Reported:

- CER (NFC, jiwer) over the windows with speech, with every decoding loop kept once
  (`decode.collapse_repeats`, the default) and as decoded (loops whole);
- language detection: the share of windows with speech whose detected language is the reference's;
- the no-speech probability: its mean on windows with and without speech, and the ROC AUC with
  which it tells a speechless window from one with speech;
- the keyword judge (the checkpoint's lexicon) on the transcripts: the share of windows with
  speech it votes emergency, in emergency classes (heard) and in normal ones (everyday talk
  taken for an emergency line).

    python benchmarks/transcripts.py --ckpt runs/demo/whisper_head/version_0/checkpoints/best.ckpt \
        --manifest runs/demo/manifest.csv --cache runs/demo/features [--split val] [--out rows.csv]

Windows missing from the cache are encoded from the audio first (and stored); the rest is read
from the cache alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ensemble.core.data import AudioDataModule
from ensemble.core.member import load_member
from ensemble.core.metrics import cer_metrics
from ensemble.core.progress import progress
from ensemble.core.text import script_language
from whisper_head.decode import collapse_repeats


def transcribe_split(module, manifest: str, split: str, batch_size: int = 8) -> pd.DataFrame:
    """One row per window: reference, hypothesis (loops collapsed) and as decoded, language,
    no-speech probability, average log-probability of the decoded tokens, the window's class is
    an emergency, the keyword judge's vote."""
    module.decoding = dataclasses.replace(module.decoding, collapse_loops=False)
    data = AudioDataModule(manifest, batch_size=batch_size, predict_split=split)
    data.setup("predict")
    dataset = data.datasets[split]
    if module.feature_cache() is not None:  # fill what is missing, then read the cache alone
        module.build_feature_cache(dataset, f"{split} encoder features")
        dataset.read_audio = False
    rows = []
    with torch.no_grad():
        for batch in progress(data.predict_dataloader(), desc=f"{split} transcripts", unit="batch"):
            hyps = module._transcribe(module._encode(batch))
            emergency = module._emergency[batch["label"].cpu()].tolist()
            for path, ref, h, e in zip(
                batch["path"], batch["transcript"], hyps, emergency, strict=True
            ):
                text = module.tokenizer.decode(collapse_repeats(h.tokens)).strip()
                judged = module.judge.judge(text, h.no_speech_prob, h.avg_logprob)
                rows.append(
                    {
                        "path": path,
                        "reference": ref,
                        "hypothesis": text,
                        "as_decoded": h.text,
                        "language": h.language,
                        "no_speech_prob": h.no_speech_prob,
                        "avg_logprob": h.avg_logprob,
                        "emergency": e,
                        "judge_vote": judged.vote,
                    }
                )
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> dict[str, float]:
    speech = rows["reference"].str.strip() != ""
    said = rows[speech]
    out = {"windows": len(rows), "with_speech": int(speech.sum())}
    out["cer"] = cer_metrics(said["reference"], said["hypothesis"])["cer"]
    out["cer_as_decoded"] = cer_metrics(said["reference"], said["as_decoded"])["cer"]
    out["language_acc"] = float((said["reference"].map(script_language) == said["language"]).mean())
    out["no_speech_prob_speech"] = float(said["no_speech_prob"].mean())
    out["no_speech_prob_speechless"] = float(rows.loc[~speech, "no_speech_prob"].mean())
    for name, kind in (("emergency", True), ("everyday", False)):
        votes = said.loc[said["emergency"] == kind, "judge_vote"]
        if len(votes):
            out[f"judge_votes_{name}_speech"] = float(votes.mean())
    if speech.any() and (~speech).any():
        out["no_speech_auc"] = float(roc_auc_score(~speech, rows["no_speech_prob"]))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="a WhisperHeadModule checkpoint")
    p.add_argument("--manifest", required=True)
    p.add_argument("--cache", default=None, help="the feature cache (default: the checkpoint's)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", default=None, help="write the rows to this CSV")
    args = p.parse_args(argv)
    overrides = {} if args.cache is None else {"feature_cache": args.cache}
    module = load_member(args.ckpt, **overrides).eval()
    rows = transcribe_split(module, args.manifest, args.split)
    rows["reference"] = rows["reference"].fillna("")
    if args.out:
        rows.to_csv(args.out, index=False)
    result = summary(rows)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
