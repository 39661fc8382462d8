"""What each speed change of the ensemble buys, and what it costs in accuracy, on the test split.

Runs `infer` on the demo test split once per step (each step adds one change to the one before,
each run in a fresh process with the same threads), scores it with `evaluate`, and reports wall
time, audio seconds per wall second and the evaluation metrics, with the largest change of any
metric against the first step in points. Then:

- the speech gate's proof: Whisper's no-speech probability of every test window without the gate,
  split by whether the clip's reference holds speech, and what the gate would have skipped;
- a profile of the last step (cProfile, cumulative seconds of the main stages).

    python benchmarks/speed_steps.py --config configs/ensemble.yaml --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import write_section

WHISPER = "whisper_head.module.WhisperHeadModule"

# (name, what changes, whisper overrides, ensemble config changes); each step adds to the one
# before; the variants are tried on top of the last step and not kept (see RESULTS.md for why)
STEPS = [
    ("before", "batch 8, transformers decoding, fp32", {}, {"batch_size": 8}),
    ("CTranslate2 decoding", "fp32 weights, the same greedy search", {"decoder": "ct2"}, {}),
    ("speech gate 0.6", "no decoding above no_speech_prob 0.6", {"speech_gate": 0.6}, {}),
    ("one window per batch", "batch 1 on CPU", {}, {"batch_size": None}),
]
VARIANTS = [
    ("bf16 encoder", "encoder and head in bfloat16 on CPU", {"cpu_bf16": True}, {}),
    ("int8 decoding", "CTranslate2 int8 weights", {"ct2_compute_type": "int8"}, {}),
]

METRICS = [
    ("ensemble", "binary_acc"),
    ("ensemble", "precision"),
    ("ensemble", "recall"),
    ("ensemble", "auc"),
    ("ensemble", "acc19"),
    ("whisper_head", "acc19"),
    ("whisper_head", "binary_acc"),
    ("whisper_head", "auc"),
    ("whisper_head", "timestep_acc"),
    ("keyword_judge", "binary_acc"),
    ("keyword_judge", "auc"),
    ("keyword_judge", "cer"),
    ("cnn", "binary_acc"),
    ("anomaly", "binary_acc"),
]
PROFILED = [  # (file suffix or "", function, stage)
    ("", "log_mel", "log-mel"),
    ("whisper_head/model.py", "encode", "Whisper encoder (+ layer states)"),
    ("", "frame_logits", "timestep head"),
    ("", "_first_step", "decoder first step (language, no-speech)"),
    ("whisper_head/ct2/generator.py", "generate", "decoding (CTranslate2)"),
    ("", "_generate_transformers", "decoding (transformers)"),
    ("", "judge_batch", "keyword judge"),
    ("cnn/module.py", "predict_step", "mel CNN"),
    ("anomaly/module.py", "predict_step", "CutPaste anomaly"),
    ("", "write_on_batch_end", "vote and rows"),
    ("torch/utils/data/dataloader.py", "__next__", "waiting for audio (DataLoader)"),
]


def step_config(base: str, whisper: dict, changes: dict, path: Path) -> Path:
    raw = yaml.safe_load(Path(base).read_text(encoding="utf-8"))
    for member in raw["members"]:
        if member["class_path"] == WHISPER:
            member["overrides"] = dict(whisper)  # the step's settings alone, not the base's
    raw.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def child(config: str, folder: str, out: str, profile: str | None) -> None:
    from ensemble.pipeline import infer

    t0 = time.perf_counter()
    if profile:
        prof = cProfile.Profile()
        result = prof.runcall(infer, folder, out, config, overwrite=True)
        prof.dump_stats(profile)
    else:
        result = infer(folder, out, config, overwrite=True)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "audio_s": result.audio_s}))


def profile_table(path: Path, wall: float) -> str:
    """Cumulative seconds of the main stages (cProfile; a stage counted once however it nests)."""
    stats = pstats.Stats(str(path)).stats
    lines = ["| stage | s | share of wall |", "| --- | ---: | ---: |"]
    for suffix, func, label in PROFILED:
        total = sum(
            cumulative
            for (filename, _, name), (_, _, _, cumulative, _) in stats.items()
            if name == func and filename.endswith(suffix)
        )
        if total:
            lines.append(f"| {label} | {total:.1f} | {total / wall:.0%} |")
    return "\n".join(lines)


def gate_table(windows: Path, manifest: Path, gate: float) -> str:
    """No-speech probability of each test window, by whether its reference holds speech."""
    import pandas as pd

    from ensemble.core.manifest import read_manifest

    rows = [json.loads(line) for line in windows.read_text(encoding="utf-8").splitlines() if line]
    df = read_manifest(manifest)
    speech = {
        Path(p).name: bool(str(t).strip()) and str(t) != "nan"
        for p, t in zip(df["path"], df["transcript"], strict=True)
    }
    w = pd.DataFrame(rows)
    w["speech"] = [speech.get(Path(p).name, False) for p in w["path"]]
    lines = [
        "| windows | n | no_speech_prob min | median | max | above the gate |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, part in (("reference with speech", w[w.speech]), ("no speech", w[~w.speech])):
        p = part["no_speech_prob"]
        lines.append(
            f"| {label} | {len(p)} | {p.min():.3f} | {p.median():.3f} | {p.max():.3f} | "
            f"{int((p > gate).sum())} |"
        )
    return "\n".join(lines)


def largest_change(values: list, reference: list) -> float:
    """The largest absolute difference of two metric rows, in points (hundredths)."""
    pairs = zip(values, reference, strict=True)
    return max((abs(v - r) * 100 for v, r in pairs if v is not None and r is not None), default=0)


def run_child(threads, config, folder, out, profile, env) -> dict:
    command = [sys.executable, __file__, "--threads", str(threads), "--child"]
    command += [str(config), str(folder), str(out), str(profile) if profile else "-"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        sys.exit(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/ensemble.yaml", help="the base: its checkpoints")
    p.add_argument("--manifest", type=Path, default=Path("runs/demo/manifest.csv"))
    p.add_argument("--audio", type=Path, default=Path("runs/demo/test_audio"))
    p.add_argument("--work", type=Path, default=Path("runs/speed_steps"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        child(*args.child[:3], args.child[3] if args.child[3] != "-" else None)
        return
    from ensemble.demo import test_folder
    from ensemble.evaluate import evaluate

    folder = args.audio if args.audio.is_dir() else test_folder(args.manifest, args.audio)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    whisper: dict = {}
    changes: dict = {}
    base_metrics = kept_metrics = None
    lines = [
        "| step | change | wall s | audio s / wall s | "
        + " | ".join(f"{m} {k}" for m, k in METRICS)
        + " | largest change vs before (points) | vs the step above |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " | ---: | ---: |",
    ]
    plan = [(s, True) for s in STEPS] + [(s, False) for s in VARIANTS]
    last_kept = None
    for (name, what, w, c), kept in plan:
        step_w, step_c = {**whisper, **w}, {**changes, **c}
        if kept:
            whisper, changes = step_w, step_c
        tag = name.replace(" ", "_")
        config = step_config(args.config, step_w, step_c, args.work / tag / "ensemble.yaml")
        out = args.work / tag / "predictions"
        timing = run_child(args.threads, config, folder, out, None, env)
        scores = evaluate(out, args.manifest, args.work / tag / "report", split="test")
        values = [
            (scores["ensemble"] if m == "ensemble" else scores["members"][m]).get(k)
            for m, k in METRICS
        ]
        base_metrics = base_metrics or values
        kept_metrics = kept_metrics or values
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in values)
        label = name if kept else f"+ {name} (tried, not kept)"
        lines.append(
            f"| {label} | {what} | {timing['wall_s']:.1f} | "
            f"{timing['audio_s'] / timing['wall_s']:.1f} | {cells} | "
            f"{largest_change(values, base_metrics):.1f} | "
            f"{largest_change(values, kept_metrics):.1f} |"
        )
        if kept:
            kept_metrics = values
        print(lines[-1], flush=True)
        if kept:
            last_kept = config
        if kept and "speech_gate" not in step_w:
            no_gate = out / "windows.jsonl"
    gate = whisper.get("speech_gate", 0.6)
    prof = args.work / "profile.out"
    timing = run_child(args.threads, last_kept, folder, args.work / "profiled", prof, env)
    text = (
        "## Each speed step on the test split\n\n"
        f"Written by `python benchmarks/speed_steps.py --config {args.config} --threads "
        f"{args.threads}`: `infer` on the {len(list(folder.rglob('*.wav')))} test files, each "
        "step adding one change to the one above, each run in a fresh process; metrics by "
        "`evaluate` against the manifest (test split); a tried variant adds its change to the "
        "last kept step.\n\n" + "\n".join(lines) + "\n\n"
        f"### The speech gate\n\nWhisper's no-speech probability per test window, from the last "
        f"step without the gate; windows above {gate} are not decoded (their transcript is "
        "empty, the judge votes normal).\n\n" + gate_table(no_gate, args.manifest, gate) + "\n\n"
        "### Where the time goes (all steps kept; one more run under cProfile)\n\n"
        + profile_table(prof, timing["wall_s"])
        + "\n"
    )
    print(text)
    write_section(args.results, "steps", text)


if __name__ == "__main__":
    main()
