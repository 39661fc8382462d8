"""Listening windows cut from train clips: training data shaped like what `listen` scores.

`emergency-ensemble listen` scores the newest 10 s of the stream every 2 s, so the members are
asked about windows that start and end anywhere: the middle of a scene, the tail of one clip and
the head of the next, an event near an edge. The training clips are 10-30 s, each heard whole
from its first sample. `crop_windows` writes N train clips of `window_s` each, cut from train
clips (joined ones included, `core/joins.py`) and appends them to the manifest's train split
with their rows re-timed to the cut:

- half from emergency clips, each cut so that it holds the whole event (the clip's speech is
  inside its event, so the transcript stays true); clips whose event is longer than the window
  are not cut;
- half from normal clips without speech (a cut through speech would leave a wrong transcript),
  anywhere in the clip: a cut of a joined clip often holds its join.

Only train clips are read, so no val or test audio leaks into them. A rerun replaces the crops.

    python -m ensemble.core.crops runs/demo/manifest.csv --n 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ensemble.core.audio import SAMPLE_RATE, audio_duration, load_audio
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import read_manifest, write_manifest

CROP_SOURCE = "crops"  # the `source` of cut windows: `--n` counts them, a rerun replaces them
WINDOW_S = 10.0  # `listen --window`'s default


class CropError(ValueError):
    """The manifest has no train clip a window can be cut from."""


def _train_clips(df: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One row per train clip (not itself a crop): path, whether it holds an emergency, the
    span of its emergency rows and whether it has speech."""
    train = df[(df["split"] == "train") & (df["source"] != CROP_SOURCE)].copy()
    train["emergency"] = train["label"].map(taxonomy.is_emergency)
    train["speech"] = train["transcript"].fillna("").str.strip() != ""
    em = train[train["emergency"]]
    spans = em.groupby("path").agg(start=("event_start", "min"), end=("event_end", "max"))
    clips = train.groupby("path", sort=False).agg(
        emergency=("emergency", "any"), speech=("speech", "any")
    )
    return clips.join(spans).reset_index()


def crop_rows(rows: pd.DataFrame, start: float, window_s: float, path: str) -> pd.DataFrame:
    """A clip's manifest rows re-timed to the cut `[start, start + window_s)`: each row's span
    intersected with it and shifted; rows outside it dropped. An empty span (the whole clip)
    becomes the whole cut."""
    out = rows.copy()
    lo = out["event_start"].astype(float).fillna(start).clip(lower=start) - start
    hi = (
        out["event_end"].astype(float).fillna(start + window_s).clip(upper=start + window_s) - start
    )
    keep = (hi - lo) > 1e-3
    out["event_start"], out["event_end"] = lo.round(3), hi.round(3)
    out = out[keep].copy()
    out["path"], out["source"] = path, CROP_SOURCE
    return out


def crop_windows(
    manifest: str | Path,
    n: int,
    folder: str | Path | None = None,
    seed: int = 0,
    window_s: float = WINDOW_S,
    taxonomy: Taxonomy | None = None,
) -> pd.DataFrame:
    """Write `n` cut windows into `folder` (default: `crops/` beside the manifest) and the
    manifest with their rows in its train split (crops of an earlier call replaced); returns the
    new rows. The same manifest and seed give the same clips, byte for byte."""
    taxonomy = taxonomy or load_taxonomy()
    manifest = Path(manifest)
    df = read_manifest(manifest, taxonomy)
    df = df[df["source"] != CROP_SOURCE].reset_index(drop=True)
    folder = Path(folder) if folder is not None else manifest.parent / "crops"
    clips = _train_clips(df, taxonomy)
    clips["duration"] = [audio_duration(p) for p in clips["path"]]  # headers only
    long_enough = clips["duration"] >= window_s
    emergency = clips[
        long_enough & clips["emergency"] & (clips["end"] - clips["start"] <= window_s)
    ]
    normal = clips[long_enough & ~clips["emergency"] & ~clips["speech"]]
    n_em = n // 2
    if (n_em and emergency.empty) or (n - n_em and normal.empty):  # a pool that is drawn from
        raise CropError(
            f"{manifest}: cuts of {window_s:g} s need an emergency train clip of at least "
            f"{window_s:g} s whose event fits in it ({len(emergency)}) and a normal train clip "
            f"without speech of at least {window_s:g} s ({len(normal)})"
        )
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_win, new = round(window_s * SAMPLE_RATE), []
    for i in range(n):
        pool = emergency if i < n_em else normal
        clip = pool.iloc[int(rng.integers(len(pool)))]
        room = clip["duration"] - window_s
        if clip["emergency"]:  # the whole event inside the cut
            lo, hi = max(0.0, clip["end"] - window_s), min(clip["start"], room)
        else:
            lo, hi = 0.0, room
        start = round(float(rng.uniform(lo, max(lo, hi))) * SAMPLE_RATE) / SAMPLE_RATE
        wave = load_audio(clip["path"])[round(start * SAMPLE_RATE) :][:n_win]
        path = folder / f"crop_{i:04d}.wav"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        rows = df[df["path"] == clip["path"]]
        new.append(crop_rows(rows, start, len(wave) / SAMPLE_RATE, str(path)))
    new = pd.concat(new, ignore_index=True) if new else df.iloc[:0]
    write_manifest(pd.concat([df, new], ignore_index=True), manifest, taxonomy)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="the split manifest; crops go to its train")
    parser.add_argument("--n", type=int, default=300, help="windows to write (half emergency)")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="seconds per window")
    parser.add_argument("--folder", type=Path, default=None, help="default: crops/ beside it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    new = crop_windows(args.manifest, args.n, args.folder, args.seed, args.window)
    print(f"{new['path'].nunique()} cut windows in the train split of {args.manifest}")


if __name__ == "__main__":
    main()
