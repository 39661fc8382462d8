"""Peak memory of `emergency-ensemble infer` on a long file against a short one.

Builds two WAV files by tiling real clips (default: the demo test split) to `--short-min` and
`--long-min` minutes, runs `infer` on each in a fresh process, and reports each process's peak
resident memory (VmHWM), wall time and audio seconds per second. Memory must not grow with the
length of the input: files are read block by block and windows are streamed.

    python benchmarks/infer_memory.py --config runs/demo/ensemble.yaml --out runs/infer_memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import peak_rss_mb, write_section


def build(clips: list[Path], minutes: float, path: Path, sr: int = 16000) -> Path:
    """Tile `clips` (read one at a time) into one 16 kHz PCM file of `minutes` minutes."""
    from ensemble.core.audio import load_audio

    need = int(minutes * 60 * sr)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        written, i = 0, 0
        while written < need:
            wave = load_audio(clips[i % len(clips)])[: need - written]
            f.write(np.clip(wave, -1, 1))
            written += len(wave)
            i += 1
    return path


def child(audio: str, out: str, config: str) -> None:
    """One infer run in this process; prints its figures as JSON on the last line."""
    from ensemble.pipeline import infer

    t0 = time.perf_counter()
    result = infer(audio, out, config, overwrite=True)
    wall = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # data loaders
    figures = {
        "audio_s": result.audio_s,
        "wall_s": wall,
        "peak_mb": peak_mb,
        "workers_mb": workers_mb,
    }
    print(json.dumps(figures | {"errors": result.n_errors}))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="runs/demo/ensemble.yaml")
    p.add_argument(
        "--manifest", default="runs/demo/manifest.csv", help="clips to tile: its test split"
    )
    p.add_argument("--out", type=Path, default=Path("runs/infer_memory"))
    p.add_argument("--short-min", type=float, default=5.0)
    p.add_argument("--long-min", type=float, default=60.0)
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    p.add_argument("--child", nargs=3, metavar=("AUDIO", "OUT", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    from ensemble.core.manifest import read_manifest

    df = read_manifest(args.manifest)
    clips = sorted({Path(x) for x in df.loc[df["split"] == "test", "path"]})
    results = {}
    for name, minutes in (("short", args.short_min), ("long", args.long_min)):
        audio = build(clips, minutes, args.out / f"{name}.wav")
        command = [
            sys.executable,
            __file__,
            "--child",
            str(audio),
            str(args.out / name),
            args.config,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{name} run failed:\n{done.stderr[-3000:]}")
        results[name] = {"minutes": minutes, **json.loads(done.stdout.strip().splitlines()[-1])}
        r = results[name]
        print(
            f"{name}: {minutes:.0f} min of audio, peak {r['peak_mb']:.0f} MB (decoding worker "
            f"{r['workers_mb']:.0f} MB), {r['wall_s']:.0f} s "
            f"({r['audio_s'] / r['wall_s']:.1f} audio s/s)",
            flush=True,
        )
    ratio = results["long"]["peak_mb"] / results["short"]["peak_mb"]
    results["peak_ratio_long_over_short"] = ratio
    print(
        f"peak memory long/short: {ratio:.3f} for {args.long_min / args.short_min:.0f}x the audio"
    )
    (args.out / "infer_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "## Peak memory against the length of the input\n",
        f"Written by `python benchmarks/infer_memory.py --config {args.config}`: one file of "
        "tiled test clips per run, `infer` in a fresh process each.\n",
        "| file | peak MB (VmHWM) | audio-reading worker MB | wall s | audio s / wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("short", "long"):
        r = results[name]
        lines.append(
            f"| {r['minutes']:.0f} min | {r['peak_mb']:.0f} | {r['workers_mb']:.0f} | "
            f"{r['wall_s']:.0f} | {r['audio_s'] / r['wall_s']:.1f} |"
        )
    lines.append(
        f"\nLong over short: {ratio:.3f} for {args.long_min / args.short_min:.0f}x the audio."
    )
    write_section(args.results, "memory", "\n".join(lines))
    return results


if __name__ == "__main__":
    main()
