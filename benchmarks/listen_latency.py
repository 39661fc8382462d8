"""Live listening with the demo's trained members: events alerted, latency from onset, CPU, memory.

Runs `emergency-ensemble listen` on a stream built from the demo's clips (the Listener is built
exactly as the command builds it, `ensemble.listen.cli.make_listener`, so this process can watch
its stream time and memory):

- `events`: N emergency clips of a split, each after a normal clip, streamed at real time
  (`--realtime`): how many events were alerted, with the right class, how many false alerts, the
  latency from each event's onset (the manifest's event_start) to its alert, median and 95th
  percentile, and the share of the machine's cores that listening used;
- `hour`: an hour of normal clips only, streamed as fast as the CPU allows (the hops are the same
  as at real time: time is stream time): the alerts (all false) and the peak resident memory in
  stream minute 5 against minute 60. Splits with less normal audio than `--minutes` are played
  again in a new order (the demo's test and held-out normal clips hold 28 min: each plays about
  twice); the result says how much of the stream is distinct. A fresh draw of the demo data
  (`benchmarks/fresh_draw.py`) has an hour of distinct normal audio.

    python benchmarks/listen_latency.py events --config runs/demo/ensemble.calibrated.yaml
    python benchmarks/listen_latency.py hour --config runs/demo/ensemble.calibrated.yaml

An alert belongs to an event when it comes between the start of the event's clip and `--window`
seconds after the event's end (the window still hears it); latency = the alert's stream time
+ its processing delay - the onset, which at real time is the wall-clock delay from the onset
sample's arrival to the alert. Results go to OUT/*.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import write_section

SR = 16000
MIN_SCORES = (0.8, 0.85, 0.9, 0.95)  # --min-score values replayed beside the vote alone
SETTINGS = [(k, m) for m in (None, *MIN_SCORES) for k in (1, 2, 3)]  # (--confirm, --min-score)


def clips(manifest: Path, splits: list[str], emergency: bool) -> pd.DataFrame:
    from ensemble.core.labels import load_taxonomy

    taxonomy = load_taxonomy()
    df = pd.read_csv(manifest)
    df = df[df["split"].isin(splits)]
    df = df[df["label"].map(taxonomy.is_emergency) == emergency].reset_index(drop=True)
    df["file"] = [str((manifest.parent / p).resolve()) for p in df["path"]]
    return df


def build_stream(parts: list[dict], path: Path | None) -> list[dict]:
    """Concatenate `parts` ({file, ...}) into one 16 kHz WAV; each part gets its clip_start and
    clip_end in the stream (and onset, end for emergencies). With `path` None only the times are
    set: from the files' headers where they are 16 kHz (no audio read), as the WAV would have
    them."""
    from ensemble.core.audio import load_audio

    def samples(file: str) -> int:
        info = sf.info(file)
        return info.frames if info.samplerate == SR else len(load_audio(file))

    f = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = sf.SoundFile(path, "w", SR, 1, subtype="PCM_16")
    offset = 0.0
    try:
        for part in parts:
            if f is None:
                n = samples(part["file"])
            else:
                wave = np.clip(load_audio(part["file"]), -1, 1)
                f.write(wave)
                n = len(wave)
            part["clip_start"], part["clip_end"] = offset, offset + n / SR
            if part.get("emergency"):
                part["onset"] = offset + float(part["event_start"])
                part["end"] = offset + float(part["event_end"])
            offset = part["clip_end"]
    finally:
        if f is not None:
            f.close()
    return parts


def events_stream(manifest: Path, split: str, n: int, seed: int, path: Path | None) -> list[dict]:
    rng = np.random.default_rng(seed)
    normal, emergency = clips(manifest, [split], False), clips(manifest, [split], True)
    normal = normal.iloc[rng.permutation(len(normal))]
    emergency = emergency.iloc[rng.permutation(len(emergency))[:n]]
    parts = []
    for i, (_, e) in enumerate(emergency.iterrows()):
        parts.append({**normal.iloc[i % len(normal)].to_dict(), "emergency": False})
        parts.append({**e.to_dict(), "emergency": True})
    parts.append({**normal.iloc[n % len(normal)].to_dict(), "emergency": False})
    return build_stream(parts, path)


def normal_stream(manifest: Path, splits: list[str], minutes: float, seed: int, path: Path | None):
    rng = np.random.default_rng(seed)
    normal = clips(manifest, splits, False)
    parts, total = [], 0.0
    while total < minutes * 60:  # the clips again, in a new order, when they run out
        for _, row in normal.iloc[rng.permutation(len(normal))].iterrows():
            parts.append({**row.to_dict(), "emergency": False})
            total += sf.info(row["file"]).duration
            if total >= minutes * 60:
                break
    return build_stream(parts, path)


def unique_audio(parts: list[dict]) -> dict:
    """How many clips the stream plays and how many distinct ones, and their minutes: a split
    with less normal audio than `--minutes` is played again, in a new order."""
    first = {}
    for p in parts:
        first.setdefault(p["file"], p["clip_end"] - p["clip_start"])
    return {"clips": len(parts), "unique_clips": len(first), "unique_min": sum(first.values()) / 60}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def listen(wav: Path, out: Path, args: argparse.Namespace, realtime: bool) -> dict:
    """One `listen` run on `wav`: its alerts, summary, CPU share and peak RSS per stream minute."""
    from ensemble.cli import build_parser
    from ensemble.listen.cli import make_listener

    words = ["listen", str(wav), "--config", str(args.config), "--out", str(out), "--no-stdout"]
    words += ["--log", str(out / "alerts.jsonl"), "--record-hops", str(out / "hops.jsonl")]
    words += ["--hop", str(args.hop), "--window", str(args.window), "--confirm", str(args.confirm)]
    words += ["--cooldown", str(args.cooldown), "--threads", str(args.threads)]
    words += [] if args.min_score is None else ["--min-score", str(args.min_score)]
    words += ["--realtime"] if realtime else []
    for name in ("alerts.jsonl", "hops.jsonl"):
        (out / name).unlink(missing_ok=True)
    listener = make_listener(build_parser().parse_args(words))
    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            minute = int(listener.samples / SR // 60) + 1
            peaks[minute] = max(peaks.get(minute, 0.0), rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    summary = listener.run()
    wall = time.perf_counter() - t0
    done.set()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(r1, k) - getattr(r0, k) for k in ("ru_utime", "ru_stime"))
    cpu += sum(getattr(c1, k) - getattr(c0, k) for k in ("ru_utime", "ru_stime"))
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    return {
        "alerts": alerts,
        "summary": vars(summary),
        "wall_s": wall,
        "cpu_s": cpu,
        "cores": os.cpu_count(),
        "cpu_share": cpu / (wall * os.cpu_count()),
        "peak_rss_mb_by_minute": peaks,
    }


def replay(
    hops: list[dict], confirm: int, cooldown_s: float, delay_s: float, min_score=None
) -> list[dict]:
    """The alerts `listen --confirm --cooldown --min-score` gives on these recorded hops (time is
    stream time, so the hops depend on none of them): each with its hop's class and `delay_s`."""
    from ensemble.listen.listener import AlertGate, alerting

    gate, out = AlertGate(confirm, cooldown_s), []
    for h in hops:
        if gate.update(alerting(h, min_score), h["end_s"]) == "alert":
            out.append({"stream_s": h["end_s"], "class": h["class"], "delay_s": delay_s})
    return out


def confirm_table(parts, hops, args, hours: float) -> list[dict]:
    """Per --confirm 1..4 and --min-score, replayed on the run's hops: events alerted and false
    alerts per hour."""
    rows = []
    for k, m in SETTINGS:
        alerts = replay(hops, k, args.cooldown, 0.0, m)  # latency in stream time only
        if any(p["emergency"] for p in parts):
            s = score_events(parts, alerts, args.window)
            rows.append(
                {
                    "confirm": k,
                    "min_score": m,
                    "alerted": s["alerted"][0],
                    "right_class": s["right_class"][0],
                    "false_per_hour": s["false_alerts"] / (s["normal_s"] / 3600),
                    "stream_latency_median_s": s["latency_median_s"],
                }
            )
        else:
            rows.append(
                {
                    "confirm": k,
                    "min_score": m,
                    "false_alerts": len(alerts),
                    "per_hour": len(alerts) / hours,
                }
            )
    return rows


def score_events(parts: list[dict], alerts: list[dict], window_s: float) -> dict:
    """Each event's first alert within its span, its latency and class; the rest false alerts."""
    from ensemble.core.metrics import bootstrap_ci

    events = [p for p in parts if p["emergency"]]
    used, rows = set(), []
    for e in events:
        lo, hi = e["clip_start"], e["end"] + window_s
        mine = [i for i, a in enumerate(alerts) if lo <= a["stream_s"] <= hi and i not in used]
        first = alerts[mine[0]] if mine else None
        used.update(mine)
        rows.append(
            {
                "label": e["label"],
                "onset_s": round(e["onset"], 3),
                "alerted": first is not None,
                "class": None if first is None else first["class"],
                "right_class": first is not None and first["class"] == e["label"],
                "latency_s": None
                if first is None
                else round(first["stream_s"] + first["delay_s"] - e["onset"], 3),
            }
        )
    hit = np.array([r["alerted"] for r in rows], float)
    right = np.array([r["right_class"] for r in rows], float)
    latency = np.array([r["latency_s"] for r in rows if r["latency_s"] is not None], float)
    false = [a for i, a in enumerate(alerts) if i not in used]
    return {
        "n_events": len(rows),
        "alerted": bootstrap_ci(np.mean, hit),
        "right_class": bootstrap_ci(np.mean, right),
        "false_alerts": len(false),
        "normal_s": sum(p["clip_end"] - p["clip_start"] for p in parts if not p["emergency"]),
        "latency_median_s": float(np.median(latency)) if len(latency) else None,
        "latency_p95_s": float(np.percentile(latency, 95)) if len(latency) else None,
        "early_alerts": int((latency < 0).sum()),  # before the onset: on the clip's background
        "events": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["events", "hour"])
    parser.add_argument("--config", type=Path, default=Path("runs/demo/ensemble.calibrated.yaml"))
    parser.add_argument("--manifest", type=Path, default=Path("runs/demo/manifest.csv"))
    parser.add_argument("--split", default="test", help="events: the split of the clips")
    parser.add_argument("--splits", default="test,holdout", help="hour: the normal clips' splits")
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--hop", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--confirm", type=int, default=1)
    parser.add_argument("--min-score", type=float, default=None)
    parser.add_argument(
        "--cooldown", type=float, default=10.0, help="shorter than the events' spacing here"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="events: not at real time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_listen"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    from ensemble.console import quiet

    quiet(False)
    where = args.split if args.mode == "events" else "normal-" + args.splits.replace(",", "+")
    tag = f"{args.mode}-{where}-w{args.window:g}-c{args.confirm}"
    out = args.out / tag
    if args.mode == "events":
        parts = events_stream(args.manifest, args.split, args.events, args.seed, out / "stream.wav")
        run = listen(out / "stream.wav", out, args, realtime=not args.fast)
        figures = score_events(parts, run["alerts"], args.window)
        hours = figures["normal_s"] / 3600
    else:
        splits = args.splits.split(",")
        parts = normal_stream(args.manifest, splits, args.minutes, args.seed, out / "stream.wav")
        run = listen(out / "stream.wav", out, args, realtime=False)
        peaks = run["peak_rss_mb_by_minute"]
        last = max(peaks)
        figures = {
            "stream_min": run["summary"]["stream_s"] / 60,
            "false_alerts": len(run["alerts"]),
            "false_alert_classes": [a["class"] for a in run["alerts"]],
            "rss_minute_5_mb": peaks.get(5),
            "rss_last_minute_mb": peaks[last],
            "last_minute": last,
            "rss_ratio": peaks[last] / peaks[5] if peaks.get(5) else None,
            "speed_x": run["summary"]["stream_s"] / run["wall_s"],
            **unique_audio(parts),
        }
        hours = figures["stream_min"] / 60
    hops = [json.loads(line) for line in (out / "hops.jsonl").read_text().splitlines()]
    lived = [a["stream_s"] for a in run["alerts"]]
    again = replay(hops, args.confirm, args.cooldown, 0.0, args.min_score)
    if lived != [a["stream_s"] for a in again]:
        raise RuntimeError("the replayed gate does not give the alerts listen gave")
    figures["by_confirm"] = confirm_table(parts, hops, args, hours)
    result = {"mode": args.mode, "options": {k: str(v) for k, v in vars(args).items()}}
    result |= figures | {k: v for k, v in run.items() if k != "alerts"}
    result["options"]["cooldown"] = str(args.cooldown)
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "events"}, indent=2, default=str))
    write_section(args.results, f"listen-{tag}", report(result))


def report(r: dict) -> str:
    s = r["summary"]
    o = r["options"]
    table = "| --confirm | --min-score | " + " | ".join(list(r["by_confirm"][0])[2:]) + " |\n"
    table += "| ---: " * len(r["by_confirm"][0]) + "|\n"
    for row in r["by_confirm"]:
        table += "| " + " | ".join(cell(v) for v in row.values()) + " |\n"
    table = (
        "\nReplayed on the recorded hops (time is stream time: exact for every --confirm):\n\n"
        + table
    )
    head = (
        f"### Listening: {r['mode']} (`--hop {o['hop']} --window {o['window']} --confirm "
        f"{o['confirm']} --cooldown {o['cooldown']} --min-score {o['min_score']} --threads "
        f"{o['threads']}`, {o['config']})\n\n"
    )
    per_hop = s["score_s"] / max(s["hops"], 1)
    common = (
        f"- {s['stream_s'] / 60:.1f} min of stream in {r['wall_s'] / 60:.1f} min; {s['hops']} hops "
        f"of {per_hop:.2f} s each ({s['skipped_hops']} skipped); CPU {r['cpu_s']:.0f} s = "
        f"{100 * r['cpu_share']:.0f} % of {r['cores']} cores\n"
    )
    if r["mode"] == "hour":
        return (
            head
            + common
            + (
                f"- false alerts on {r['stream_min']:.0f} min of normal audio ({o['splits']}): "
                f"{r['false_alerts']} ({', '.join(map(str, r['false_alert_classes']))})\n"
                f"- the stream plays {r.get('clips', '?')} clips, {r.get('unique_clips', '?')} "
                f"of them distinct ({r.get('unique_min', float('nan')):.1f} min of distinct audio)\n"
                f"- peak RSS: minute 5 {r['rss_minute_5_mb']:.0f} MB, minute {r['last_minute']} "
                f"{r['rss_last_minute_mb']:.0f} MB (ratio {r['rss_ratio']:.3f}); "
                f"{r['speed_x']:.1f}x real time\n"
            )
            + table
        )
    a, c = r["alerted"], r["right_class"]
    return (
        head
        + common
        + (
            f"- {r['n_events']} events of the {o['split']} split"
            f"{'' if o['fast'] == 'True' else ' at real time'}: alerted {a[0]:.2f} "
            f"[{a[1]:.2f}, {a[2]:.2f}], right class {c[0]:.2f} [{c[1]:.2f}, {c[2]:.2f}]; "
            f"{r['false_alerts']} false alerts in {r['normal_s'] / 60:.1f} min of normal clips\n"
            f"- latency from onset to alert: median {r['latency_median_s']:.2f} s, 95th percentile "
            f"{r['latency_p95_s']:.2f} s ({r['early_alerts']} alerts before the onset, on the "
            "event clip's background)\n"
        )
        + table
    )


def cell(v) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
