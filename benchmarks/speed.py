"""Speed of the ensemble against Whisper's own transcription of the same audio, one process each.

Audio: the demo test split (real speech and sound clips) plus longer recordings made from it (each
half of the split joined end to end), so the set holds `--min-minutes` or more. Engines, each run
once in a fresh process with the same number of compute threads:

- `ensemble`: `emergency-ensemble infer` (`ensemble.pipeline.infer`) with all four members;
- `openai-whisper`: `whisper.transcribe`, greedy (temperature 0), with the Whisper member's own
  weights exported to an openai-whisper checkpoint (`whisper_head.export.save_openai`);
- `faster-whisper`: CTranslate2 int8, greedy, the same weights exported by `export_ct2`;
- `openai-whisper:en`, `faster-whisper:en`: the same with the language forced (English: the test
  split's speech), which spares them language detection and the loops it starts on noise;
- `member:NAME`: the ensemble config cut to one member.

Wall time counts model loading and audio reading, not Python's imports. Peak memory is the
process's maximum resident set (VmHWM; the ensemble's audio-reading worker is not counted). The table, with
ratios against openai-whisper and the machine's description, goes to `benchmarks/RESULTS.md`.

    python benchmarks/speed.py --config configs/ensemble.yaml --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

SAMPLE_RATE = 16000


# --- the audio set ---------------------------------------------------------------------------


def build_audio(manifest: Path, out: Path, min_minutes: float, split: str = "test") -> Path:
    """`out/clips/` (links to the split's clips) and `out/long/` (each half of the split joined,
    again until the whole set reaches `min_minutes`). Returns `out`."""
    from ensemble.core.audio import load_audio
    from ensemble.core.manifest import read_manifest

    df = read_manifest(manifest)
    clips = sorted({Path(p) for p in df.loc[df["split"] == split, "path"]})
    if not clips:
        raise SystemExit(f"{manifest}: no clip in split {split!r}")
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "long").mkdir(parents=True, exist_ok=True)
    total = 0.0
    for i, clip in enumerate(clips):
        link = out / "clips" / f"{i:03d}_{clip.name}"
        if not link.exists():
            link.symlink_to(clip.resolve())
        total += sf.info(clip).duration
    halves = [clips[0::2], clips[1::2]]
    n = 0
    while total < min_minutes * 60 or n < 2:
        path = out / "long" / f"long_{n}.wav"
        if not path.exists():
            with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
                for clip in halves[n % 2]:
                    f.write(np.clip(load_audio(clip), -1, 1))
        total += sf.info(path).duration
        n += 1
    return out


def audio_files(folder: Path) -> list[Path]:
    from ensemble.windows import list_audio

    return list_audio(folder)


# --- engines (each in its own process) ---------------------------------------------------------


def whisper_source(config: str):
    """The Whisper backbone of the ensemble's Whisper member."""
    from ensemble.config import load_config
    from whisper_head.module import WhisperHeadModule

    spec = next(
        m for m in load_config(config).members if m.class_path.endswith("WhisperHeadModule")
    )
    return WhisperHeadModule.from_checkpoint(spec.checkpoint).model.backbone


def export_weights(config: str, work: Path) -> dict[str, Path]:
    """The Whisper member's weights as an openai-whisper `.pt` and a CTranslate2 int8 folder."""
    from whisper_head.ct2 import export_ct2, weights_digest
    from whisper_head.export import save_openai
    from whisper_head.weights import read_bundle

    backbone = whisper_source(config)
    digest = weights_digest(backbone)[:16]
    pt = work / "weights" / f"{digest}.pt"
    ct2 = work / "weights" / f"{digest}-ct2-int8"
    if not pt.is_file():
        save_openai(backbone, pt)
    if not (ct2 / "model.bin").is_file():
        # faster-whisper reads tokenizer.json beside the model: the bundled one (same vocabulary)
        _, assets, _ = read_bundle("base")
        export_ct2(backbone, ct2, "int8", assets / "tokenizer.json")
    return {"openai": pt, "ct2": ct2}


def run_ensemble(folder: Path, out: Path, config: str) -> dict:
    from ensemble.pipeline import infer

    result = infer(folder, out, config, overwrite=True)
    return {"files": result.n_files, "errors": result.n_errors}


def run_openai(folder: Path, weights: Path, language: str | None) -> dict:
    import whisper

    from ensemble.core.audio import load_audio

    model = whisper.load_model(str(weights), device="cpu")
    n = 0
    for path in audio_files(folder):
        model.transcribe(
            load_audio(path), temperature=0.0, fp16=False, verbose=None, language=language
        )
        n += 1
    return {"files": n, "errors": 0}


def run_faster(folder: Path, weights: Path, threads: int, language: str | None) -> dict:
    from faster_whisper import WhisperModel

    from ensemble.core.audio import load_audio

    model = WhisperModel(str(weights), device="cpu", compute_type="int8", cpu_threads=threads)
    n = 0
    for path in audio_files(folder):
        segments, _ = model.transcribe(
            load_audio(path), beam_size=1, temperature=0.0, language=language
        )
        list(segments)  # decoding happens while the generator is read
        n += 1
    return {"files": n, "errors": 0}


def member_config(config: str, name: str, out: Path) -> Path:
    """The ensemble config cut to the member `name`."""
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    raw["members"] = [m for m in raw["members"] if m["name"] == name]
    if not raw["members"]:
        raise SystemExit(f"{config}: no member {name!r}")
    path = out / f"member_{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def language_of(engine: str) -> str | None:
    """`openai-whisper:en` -> "en" (forced); no suffix: the engine detects it."""
    return engine.split(":", 1)[1] if ":" in engine else None


def child(args: argparse.Namespace) -> None:
    """Run one engine in this process; print its figures as JSON on the last line."""
    import torch

    torch.set_num_threads(args.threads)
    engine, work = args.child, args.work
    folder = work / "audio"
    t0 = time.perf_counter()
    if engine == "ensemble":
        figures = run_ensemble(folder, work / "out" / "ensemble", args.config)
    elif engine.startswith("member:"):
        config = member_config(args.config, engine.split(":", 1)[1], work)
        figures = run_ensemble(folder, work / "out" / engine.replace(":", "_"), str(config))
    elif engine.split(":")[0] == "openai-whisper":  # openai-whisper[:LANGUAGE]
        figures = run_openai(folder, Path(args.weights), language_of(engine))
    elif engine.split(":")[0] == "faster-whisper":
        figures = run_faster(folder, Path(args.weights), args.threads, language_of(engine))
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    wall = time.perf_counter() - t0
    figures |= {"wall_s": wall, "peak_mb": peak_rss_mb()}
    print(json.dumps(figures))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which, unlike ru_maxrss, does not carry
    over the parent's peak through fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


# --- the report --------------------------------------------------------------------------------


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` between this section's markers in `path`, keeping the rest of the file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Speed\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


# --- the table ---------------------------------------------------------------------------------


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.backends.cpu.get_cpu_capability()} kernels"
    )


def table(results: dict[str, dict], audio_s: float, baseline: str = "openai-whisper") -> str:
    base = results.get(baseline, {}).get("wall_s")
    lines = [
        f"| engine | wall s | audio s / wall s | × {baseline} wall | peak MB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        ratio = f"{r['wall_s'] / base:.2f}" if base else "–"
        peak = f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {name} | {r['wall_s']:.1f} | {audio_s / r['wall_s']:.1f} | {ratio} | {peak} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/ensemble.yaml")
    p.add_argument("--manifest", type=Path, default=Path("runs/demo/manifest.csv"))
    p.add_argument("--work", type=Path, default=Path("runs/speed"))
    p.add_argument("--min-minutes", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2, help="compute threads of every engine")
    p.add_argument(
        "--engines",
        nargs="+",
        default=[
            "ensemble",
            "openai-whisper",
            "faster-whisper",
            "openai-whisper:en",
            "faster-whisper:en",
            "member:whisper_head",
            "member:keyword_judge",
            "member:cnn",
            "member:anomaly",
        ],
    )
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return {}
    if args.export:
        paths = export_weights(args.config, args.work)
        print(json.dumps({k: str(v) for k, v in paths.items()}))
        return {}
    folder = build_audio(args.manifest, args.work / "audio", args.min_minutes)
    files = audio_files(folder)
    audio_s = sum(sf.info(f).duration for f in files)
    print(f"{len(files)} files, {audio_s / 60:.1f} min of audio under {folder}", flush=True)
    weights = {  # in a child process too: this one stays small
        k: Path(v)
        for k, v in json.loads(
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--export",
                    "--config",
                    args.config,
                    "--work",
                    str(args.work),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        ).items()
    }
    env = {
        **os.environ,
        **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    results: dict[str, dict] = {}
    for engine in args.engines:
        command = [sys.executable, __file__, "--child", engine, "--config", args.config]
        command += ["--work", str(args.work), "--threads", str(args.threads)]
        kind = engine.split(":")[0]
        if kind in ("openai-whisper", "faster-whisper"):
            command += ["--weights", str(weights["openai" if kind[0] == "o" else "ct2"])]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[engine]
        print(
            f"{engine}: {r['wall_s']:.1f} s, {audio_s / r['wall_s']:.1f} audio s/s, "
            f"peak {r['peak_mb']:.0f} MB",
            flush=True,
        )
    text = table(results, audio_s)
    print(text)
    report = (
        "## The ensemble against Whisper's own transcription\n\n"
        f"Written by `python benchmarks/speed.py --config {args.config} "
        f"--threads {args.threads}`.\n\n"
        f"- Machine: {machine()}.\n"
        f"- Threads: {args.threads} compute threads for every engine (torch, CTranslate2, "
        "OMP/MKL); the ensemble also runs one audio-reading process beside.\n"
        f"- Audio: {len(files)} files, {audio_s / 60:.1f} min: the demo test split and recordings "
        "made by joining its halves.\n"
        "- Wall time: model loading and audio reading included, Python imports not; one run "
        "each, engines one after another in fresh processes.\n\n"
        f"{text}\n"
    )
    write_section(args.results, "speed", report)
    (args.work / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
