"""A linear probe on frozen Whisper features: how learnable a dataset and its splits are.

For each clip of a manifest (its first 30 s window), the frozen Whisper encoder's last four hidden
states are pooled over the clip's real timesteps (mean and max of each: 4 x 2 x D features); a
standardised logistic regression learns the 19 classes on the train split (its C chosen on val)
and is scored on test and, when the manifest has one, the held-out-source split. No member, no
fine-tuning: if this baseline cannot learn a dataset, no member should be expected to.

    python benchmarks/probe.py --manifest runs/demo/manifest.csv --name "new demo"

Features are cached per file content under `--cache`, so a second run (or another manifest over
the same audio) costs only the regressions. Results: `--out`/probe.json, and the section
`probe:<name>` of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import write_section

from ensemble.core.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLES_PER_TIMESTEP,
    load_audio,
    seconds_to_samples,
)
from ensemble.core.labels import load_taxonomy
from ensemble.core.manifest import clips, read_manifest
from ensemble.core.metrics import bootstrap_ci

log = logging.getLogger("probe")
BAR = {"mininterval": 0.1 if sys.stderr.isatty() else 30.0}  # a log file gets a line every 30 s
C_GRID = (0.001, 0.01, 0.1, 1.0)
EVAL_SPLITS = ("test", "holdout")
MARGIN_S = 0.5  # kept away from an event's bounds when only its surroundings are pooled


def clip_features(
    paths: list[str], source: str, layers: tuple[int, ...], cache: Path, batch: int = 4
) -> np.ndarray:
    """Pooled encoder features `(N, 2 * len(layers) * D)` float32, one row per file."""
    from whisper_head.decode import log_mel
    from whisper_head.weights import load_whisper

    tag = hashlib.sha1(f"{source}|{layers}".encode()).hexdigest()[:12]
    folder = cache / tag
    folder.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
    todo = [i for i, k in enumerate(keys) if not (folder / f"{k}.npy").is_file()]
    if todo:
        encoder = load_whisper(source)[0].model.encoder.eval()
        for lo in tqdm(range(0, len(todo), batch), desc="encoder features", unit="batch", **BAR):
            idx = todo[lo : lo + batch]
            waves = [load_audio(paths[i])[:N_SAMPLES] for i in idx]
            mel = log_mel(np.stack([np.pad(w, (0, N_SAMPLES - len(w))) for w in waves]))
            with torch.inference_mode():
                states = encoder(mel, output_hidden_states=True).hidden_states  # L + 1 x (B, T, D)
            for row, (i, w) in enumerate(zip(idx, waves, strict=True)):
                T = max(1, -(-len(w) // SAMPLES_PER_TIMESTEP))  # real timesteps of this clip
                parts = []
                for layer in layers:
                    x = states[layer][row, :T]  # (T, D)
                    parts += [x.mean(0), x.amax(0)]
                np.save(folder / f"{keys[i]}.npy", torch.cat(parts).numpy().astype(np.float32))
    return np.stack([np.load(folder / f"{k}.npy") for k in keys])


def _acc(y, p):
    return accuracy_score(y, p)


def _auc(y, s):
    return roc_auc_score(y, s)


def _ci(metric, *arrays) -> str:
    if len(arrays[0]) == 0:
        return "–"
    v, lo, hi = bootstrap_ci(metric, *arrays)
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def probe(manifest: Path, source: str, layers: tuple[int, ...], cache: Path, seed: int) -> dict:
    taxonomy = load_taxonomy()
    table = clips(read_manifest(manifest, taxonomy))
    X = clip_features(list(table["path"]), source, layers, cache)
    y = np.array([taxonomy.id(k) for k in table["label"]])
    emergency = np.isin(y, taxonomy.emergency_ids)
    split = table["split"].to_numpy()
    ident = table["identifiable"].to_numpy() if "identifiable" in table else np.full(len(y), "")

    def fit(C: float):
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed)
        )
        return model.fit(X[split == "train"], y[split == "train"])

    val = split == "val"
    scores = {C: accuracy_score(y[val], fit(C).predict(X[val])) for C in C_GRID}
    best_c = max(C_GRID, key=lambda c: (scores[c], -c))
    model = fit(best_c)
    emergency_cols = np.isin(model.classes_, taxonomy.emergency_ids)
    out = {
        "manifest": str(manifest),
        "source": source,
        "layers": list(layers),
        "n_train": int((split == "train").sum()),
        "train_per_class_min": int(np.bincount(y[split == "train"])[1:].min()),
        "val_acc19_by_C": {str(c): round(s, 4) for c, s in scores.items()},
        "C": best_c,
        "splits": {},
    }
    for name in EVAL_SPLITS:
        m = split == name
        if not m.any():
            continue
        proba = model.predict_proba(X[m])
        pred = model.classes_[proba.argmax(1)]
        p_em = proba[:, emergency_cols].sum(1)
        sure = ident[m] == "true"
        row = {
            "n": int(m.sum()),
            "n_emergency": int(emergency[m].sum()),
            "acc19": _ci(_acc, y[m], pred),
            "n_identifiable": int(sure.sum()),
            "acc19_identifiable": _ci(_acc, y[m][sure], pred[sure]) if sure.any() else "–",
            "binary_acc": _ci(_acc, emergency[m], p_em >= 0.5),
            "auc": _ci(_auc, emergency[m], p_em),
        }
        out["splits"][name] = row
    return out


def span_features(path: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel statistics (mean and std of 80 bins) of a clip inside [start, end] and outside it
    (`MARGIN_S` away from the bounds), each `(160,)`."""
    from whisper_head.decode import log_mel

    wave = load_audio(path)
    lo, hi, pad = (seconds_to_samples(t) for t in (start, end, MARGIN_S))
    inside = wave[lo:hi]
    outside = np.concatenate([wave[: max(lo - pad, 0)], wave[hi + pad :]])
    feats = []
    for part in (inside, outside):
        n = max(1, min(len(part), N_SAMPLES) // HOP_LENGTH)  # mel frames of real audio
        mel = log_mel(part[:N_SAMPLES])[0, :, :n]  # (80, n)
        feats.append(torch.cat([mel.mean(1), mel.std(1)]).numpy())
    return feats[0], feats[1]


def background_probe(manifest: Path, seed: int) -> dict:
    """Can the 14 emergencies be told apart from what surrounds their events? A logistic regression
    on log-mel statistics of the audio outside each event (train split, C chosen on val), against
    the same on the audio inside it. Near chance outside means the background gives nothing away."""
    taxonomy = load_taxonomy()
    table = clips(read_manifest(manifest, taxonomy))
    em = table[
        table["label"].map(taxonomy.is_emergency) & table["split"].isin(["train", "val", "test"])
    ]
    em = em[[not np.isnan(s[0][0]) for s in em["segments"]]]
    pairs = [
        span_features(p, s[0][0], s[0][1])
        for p, s in tqdm(
            zip(em["path"], em["segments"], strict=True), total=len(em), desc="spans", **BAR
        )
    ]
    y, split = em["label"].to_numpy(), em["split"].to_numpy()
    out = {"n_train": int((split == "train").sum()), "chance": float(1 / len(set(y)))}
    for name, X in (
        ("inside", np.stack([a for a, _ in pairs])),
        ("outside", np.stack([b for _, b in pairs])),
    ):

        def fit(C: float, X=X):
            m = make_pipeline(
                StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed)
            )
            return m.fit(X[split == "train"], y[split == "train"])

        val = split == "val"
        best = max(C_GRID, key=lambda c: (accuracy_score(y[val], fit(c).predict(X[val])), -c))
        test = split == "test"
        out[name] = _ci(_acc, y[test], fit(best).predict(X[test]))
    out["n_test"] = int((split == "test").sum())
    return out


def markdown(result: dict, name: str, seconds: float) -> str:
    lines = [
        f"## Linear probe: {name}",
        "",
        f'Written by `python benchmarks/probe.py --manifest {result["manifest"]} --name "{name}"` '
        f"({seconds / 60:.1f} min). Frozen `{result['source']}` encoder, hidden states "
        f"{result['layers']} pooled (mean and max) over each clip; logistic regression on "
        f"{result['n_train']} training clips (at least {result['train_per_class_min']} per "
        f"class), C = {result['C']} chosen on val (val 19-class accuracy by C: "
        f"{result['val_acc19_by_C']}). Bootstrap 95 % intervals.",
        "",
        "| split | clips | emergencies | 19-class acc | identifiable clips | 19-class acc on them "
        "| emergency/normal acc | AUC |",
        "| --- | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    for split, r in result["splits"].items():
        lines.append(
            f"| {split} | {r['n']} | {r['n_emergency']} | {r['acc19']} | {r['n_identifiable']} "
            f"| {r['acc19_identifiable']} | {r['binary_acc']} | {r['auc']} |"
        )
    bg = result.get("background")
    if bg:
        lines += [
            "",
            "Does the background give the emergency away? Log-mel statistics (mean and std of 80 "
            f"bins) of the audio outside each emergency's event ({MARGIN_S} s away from it) against "
            f"inside it; 14-class logistic regression on {bg['n_train']} training emergencies, "
            f"scored on {bg['n_test']} test ones (chance {bg['chance']:.3f}):",
            "",
            "| audio | 14-class accuracy |",
            "| --- | --- |",
            f"| inside the event | {bg['inside']} |",
            f"| outside the event | {bg['outside']} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", type=Path, required=True, help="a split manifest")
    p.add_argument("--name", default="demo", help="the results section's name")
    p.add_argument("--source", default="bundled:base", help="Whisper weights (frozen)")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6], help="hidden states")
    p.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/emergency-ensemble/probe-features"
    )
    p.add_argument("--out", type=Path, default=Path("runs/probe"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = probe(args.manifest, args.source, tuple(args.layers), args.cache, args.seed)
    result["background"] = background_probe(args.manifest, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in args.name.lower())
    (args.out / f"probe-{slug}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    text = markdown(result, args.name, time.perf_counter() - t0)
    write_section(args.results, f"probe:{slug}", text)
    print(text)
    return result


if __name__ == "__main__":
    main()
