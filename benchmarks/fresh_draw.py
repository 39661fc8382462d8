"""A fresh draw of the demo data, as more validation audio for choices made on streams.

The demo's val split holds 55 normal clips (19 min) and 152 emergency clips: too little normal
audio to tell a listening setting with one false alert an hour from one with none. This script
builds the demo data again with another seed (`make-demo-data --seed S`: new synthetic speakers,
new mixes of the same sound files) and keeps, in a manifest whose `split` is `fresh`, only the clips
that no member was trained on in any sense that matters:

- no clip whose sources hold a held-out origin (festival, sonic-pi-samples): those stay unheard;
- no clip whose transcript was spoken in the reference run's train or test split: only the val
  split's sentences, or none (clips without speech).

The rest are written with `split` = `unused`. Listen to the fresh clips with
`benchmarks/listen_latency.py --manifest OUT/manifest.csv --split fresh` (events) or
`--splits fresh` (hour), and pass the runs to `benchmarks/listen_choose.py` beside val's.

    python benchmarks/fresh_draw.py --seed 1 --out runs/fresh1 --reference runs/demo/manifest.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import soundfile as sf

from ensemble.demo import DEMO_HOLDOUT

log = logging.getLogger("fresh_draw")


def fresh_rows(df: pd.DataFrame, reference: pd.DataFrame, held_out=DEMO_HOLDOUT) -> pd.Series:
    """Which rows of a fresh draw `df` may validate: no held-out origin, and a transcript that is
    empty or spoken only in the val split of `reference` (the trained run's manifest)."""
    spoken = reference["transcript"].fillna("")
    val_text = set(spoken[reference["split"] == "val"]) - {""}
    seen = set(spoken[reference["split"] != "val"]) - {""}
    origin = df["origin"].fillna("").str.split(";")
    clean_origin = origin.map(lambda o: not set(o) & set(held_out))
    text = df["transcript"].fillna("")
    clean_text = (text == "") | (text.isin(val_text) & ~text.isin(seen))
    return clean_origin & clean_text


def main() -> None:
    from ensemble.core.aihub import import_aihub
    from ensemble.core.labels import load_taxonomy
    from ensemble.demodata.build import make_demo_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="not the demo's (0)")
    parser.add_argument("--out", type=Path, default=Path("runs/fresh1"))
    parser.add_argument("--reference", type=Path, default=Path("runs/demo/manifest.csv"))
    parser.add_argument("--per-class", type=int, default=None, help="default: the demo's")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.seed == 0:
        parser.error("--seed 0 is the demo's own draw: its clips were trained on")
    taxonomy = load_taxonomy()
    kwargs = {} if args.per_class is None else {"per_class": args.per_class}
    make_demo_data(args.out, seed=args.seed, workers=args.workers, **kwargs)
    df, _ = import_aihub(args.out, taxonomy=taxonomy)
    keep = fresh_rows(df, pd.read_csv(args.reference))
    df["split"] = ["fresh" if k else "unused" for k in keep]
    path = args.out / "manifest.csv"  # `fresh` is no split of a trained manifest: plain CSV
    root = args.out.resolve()
    df.assign(path=[str(Path(f).resolve().relative_to(root)) for f in df["path"]]).to_csv(
        path, index=False, encoding="utf-8"
    )
    fresh = df[keep]
    emergency = fresh["label"].map(taxonomy.is_emergency)
    minutes = sum(sf.info(p).duration for p in fresh.loc[~emergency, "path"]) / 60
    log.info(
        "%s: %d fresh clips of %d (%d emergency; %d normal, %.1f min)",
        path, len(fresh), len(df), emergency.sum(), (~emergency).sum(), minutes,
    )  # fmt: skip


if __name__ == "__main__":
    main()
