"""Normal clips joined to a piece of another normal clip: training data for "a change is normal".

A microphone in a home hears the scene change: the washing machine starts, the television goes
off, someone walks out into the street. The training clips each hold one scene from start to end,
so the one place a member ever heard a sound begin in the middle of a clip was an emergency: a
join of two everyday scenes then sounds like one (the listening benchmark's false alerts come
mostly from such joins, `benchmarks/listen_choose.py`). `join_normal_clips` writes N new train
clips, each a whole normal train clip (A, with its speech and transcript) joined, before or after
it at random, to a piece of a speechless normal train clip of another class (B) up to 30 s in all,
without a fade, and appends them to the manifest's train split as two rows each (A's class over
A's part, B's over B's). Only train clips are read, so no val or test audio leaks into them.

    python -m ensemble.core.joins runs/demo/manifest.csv --n 150
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ensemble.core.audio import SAMPLE_RATE, audio_duration, load_audio
from ensemble.core.crops import CROP_SOURCE
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import read_manifest, write_manifest

JOIN_SOURCE = "joins"  # the `source` of joined clips: `--n` counts them, a rerun replaces them
WINDOW_S = 30.0  # a joined clip fills at most one 30 s window
MIN_PIECE_S = 3.0  # the shortest piece of B


class JoinError(ValueError):
    """The manifest has no normal train clips that can be joined."""


def _normal_train_clips(df: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One row per normal train clip (no emergency row, not itself a join or a cut window)."""
    emergency = df["label"].map(taxonomy.is_emergency).groupby(df["path"]).transform("any")
    keep = (df["split"] == "train") & ~emergency & ~df["source"].isin([JOIN_SOURCE, CROP_SOURCE])
    return df[keep].drop_duplicates("path").reset_index(drop=True)


def join_normal_clips(
    manifest: str | Path,
    n: int,
    folder: str | Path | None = None,
    seed: int = 0,
    taxonomy: Taxonomy | None = None,
) -> pd.DataFrame:
    """Write `n` joined clips into `folder` (default: `joins/` beside the manifest) and the
    manifest with their rows in its train split (joins of an earlier call replaced); returns the
    new rows. The same manifest and seed give the same clips, byte for byte."""
    taxonomy = taxonomy or load_taxonomy()
    manifest = Path(manifest)
    df = read_manifest(manifest, taxonomy)
    df = df[df["source"] != JOIN_SOURCE].reset_index(drop=True)
    folder = Path(folder) if folder is not None else manifest.parent / "joins"
    normal = _normal_train_clips(df, taxonomy)
    durations = np.array([audio_duration(p) for p in normal["path"]])  # headers only
    fits = durations <= WINDOW_S - MIN_PIECE_S  # A leaves room for a piece of B
    quiet = (normal["transcript"].str.strip() == "").to_numpy()
    # A needs a speechless clip of another class to join
    quiet_labels = set(normal["label"][quiet])
    fits &= np.array([bool(quiet_labels - {lab}) for lab in normal["label"]])
    if n > 0 and not fits.any():
        raise JoinError(
            f"{manifest}: joins need a normal train clip of at most {WINDOW_S - MIN_PIECE_S:g} s "
            f"and a speechless normal train clip of another class (two classes); found "
            f"{len(normal)} normal train clips, {int(quiet.sum())} without speech"
        )
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a = normal.iloc[rng.choice(np.flatnonzero(fits))]
        others = np.flatnonzero(quiet & (normal["label"] != a["label"]).to_numpy())  # never empty
        b = normal.iloc[rng.choice(others)]
        wave_a, wave_b = load_audio(a["path"]), load_audio(b["path"])
        room = min(int(WINDOW_S * SAMPLE_RATE) - len(wave_a), len(wave_b))
        piece = int(rng.integers(min(int(MIN_PIECE_S * SAMPLE_RATE), room), room + 1))
        offset = int(rng.integers(0, len(wave_b) - piece + 1))
        wave_b = wave_b[offset : offset + piece]
        b_first = bool(rng.integers(2))
        wave = np.concatenate([wave_b, wave_a] if b_first else [wave_a, wave_b])
        path = folder / f"join_{i:04d}.wav"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        cut = (len(wave_b) if b_first else len(wave_a)) / SAMPLE_RATE
        end = len(wave) / SAMPLE_RATE
        spans = {
            "a": (cut, end) if b_first else (0.0, cut),
            "b": (0.0, cut) if b_first else (cut, end),
        }
        for part, clip in (("a", a), ("b", b)):
            start, stop = spans[part]
            rows.append(
                {
                    **{c: clip.get(c, "") for c in df.columns},
                    "path": str(path),
                    "transcript": clip["transcript"] if part == "a" else "",
                    "event_start": round(start, 3),
                    "event_end": round(stop, 3),
                    "speaker": a["speaker"],
                    "split": "train",
                    "source": JOIN_SOURCE,
                    "background": "",  # the two rows cover the clip: nothing is outside them
                    "origin": ";".join(
                        dict.fromkeys(f"{a['origin']};{b['origin']}".split(";"))
                    ).strip(";"),
                }
            )
    new = pd.DataFrame(rows, columns=df.columns)
    write_manifest(pd.concat([df, new], ignore_index=True), manifest, taxonomy)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="the split manifest; joins go to its train")
    parser.add_argument("--n", type=int, default=150, help="joined clips to write")
    parser.add_argument("--folder", type=Path, default=None, help="default: joins/ beside it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    new = join_normal_clips(args.manifest, args.n, args.folder, args.seed)
    print(f"{new['path'].nunique()} joined clips in the train split of {args.manifest}")


if __name__ == "__main__":
    main()
