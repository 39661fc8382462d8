"""Choose `listen --confirm` and `--min-score` on validation streams, from recorded hops.

Reads two runs of `benchmarks/listen_latency.py` on the val split, an `events` run and an `hour`
run of val normal clips, replays the alert gate on their recorded hops for every --confirm and
--min-score (exact: the hops depend on neither), and chooses the setting that alerts the most val
events among those with no false alert on all the val normal audio (ties: fewer confirming hops,
then the lower bar). Writes the table and the choice to benchmarks/RESULTS.md.

    python benchmarks/listen_choose.py --events-run runs/bench_listen_val/events-val-w10-c1 \\
        --normal-run runs/bench_listen_val/hour-normal-val-w10-c1

`--config C` first revotes the recorded hops under another ensemble config with the same members
or fewer (each hop row holds every member's outputs), as `listen --config C` would have voted
them; `--name` names the section. Runs on the test split give that config's test figures.

`--hop-fpr F [F ...]` also tries member thresholds set on the hops: each member votes where its p
exceeds the (1 - F) quantile of its p over the normal run's hops (where it has an opinion), so it
calls about F of the normal 10 s hops emergency (the file-level calibration sets 5 % on files,
which is not 5 % of hops). The setting (F, --confirm, --min-score) is chosen as above, and
`--write-config PATH` writes the config with the chosen thresholds for `listen --config PATH`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listen_latency import SETTINGS, cell, events_stream, normal_stream, replay, score_events
from speed import write_section


def hop_thresholds(hops: list[dict], config_path: Path, fpr: float) -> dict[str, float]:
    """Each member's threshold at `fpr` of the normal `hops` where it has an opinion: the
    (1 - fpr) quantile of its p (the config's own threshold where it never has one)."""
    from ensemble.config import load_config

    out = {}
    for m in load_config(config_path).members:
        p = [h[f"p_{m.name}"] for h in hops if h.get(f"opinion_{m.name}", True)]
        p = np.asarray([x for x in p if x is not None], dtype=float)
        # a config threshold lies in (0, 1): a member whose p is 1 on more than `fpr` of the
        # hops (the keyword judge's p is near 0 or 1) cannot be brought down to `fpr` this way
        q = float(np.clip(np.quantile(p, 1.0 - fpr), 1e-6, 1.0 - 1e-6)) if len(p) else None
        out[m.name] = m.threshold if q is None else q
    return out


def revote_with(hops: list[dict], config_path: Path, thresholds: dict | None) -> list[dict]:
    """The hop rows as the ensemble of `config_path` votes them (its members' recorded outputs,
    the rows' members or fewer), with its members' thresholds replaced by `thresholds`."""
    from ensemble.config import load_config
    from ensemble.core.labels import load_taxonomy
    from ensemble.revote import revote_windows

    config = load_config(config_path)
    if thresholds:
        members = tuple(
            dataclasses.replace(m, threshold=thresholds[m.name]) for m in config.members
        )
        config = dataclasses.replace(config, members=members)
    return revote_windows(hops, config, load_taxonomy(config.labels))


def write_config(base: Path, thresholds: dict[str, float], setting: dict, path: Path) -> None:
    """`base` with the members' thresholds replaced, written to `path` (the same folder as base,
    so its relative paths still hold), with the chosen --confirm and --min-score noted."""
    if path.resolve().parent != base.resolve().parent:
        raise ValueError(f"{path}: write the listen config beside {base} (relative paths)")
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    for m in raw["members"]:
        t = thresholds[m["name"]]
        m["threshold"] = None if t is None else round(float(t), 6)
    raw.pop("calibration", None)
    head = (
        f"# {base.name} with member thresholds set on val hops (benchmarks/listen_choose.py):\n"
        f"#   emergency-ensemble listen SOURCE --config {path.name} --confirm {setting['confirm']}"
        + (f" --min-score {setting['min_score']}" if setting["min_score"] else "")
        + "\n"
    )
    text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    path.write_text(head + text, encoding="utf-8")


def at_joins(alerts: list[dict], parts: list[dict], window_s: float) -> int:
    """Alerts whose hop window (the `window_s` before the alert) holds a join of two clips of the
    stream: a background, level or voice that changes from one sample to the next."""
    joins = np.array([p["clip_start"] for p in parts[1:]])
    return sum(bool(((joins > a["stream_s"] - window_s) & (joins < a["stream_s"])).any())
               for a in alerts)  # fmt: skip


def join_rates(hops: list[dict], parts: list[dict], window_s: float) -> str:
    """A table: of the full-window hops of a normal run, the share each member (its own vote,
    where it has an opinion) and the ensemble voted emergency, where the window holds a clip join
    and where it does not. Tells a benchmark artefact (the joins) from the members' own errors."""
    joins = np.array([p["clip_start"] for p in parts[1:]])
    full = [h for h in hops if h["end_s"] >= window_s]
    at = np.array(
        [bool(((joins > h["end_s"] - window_s) & (joins < h["end_s"])).any()) for h in full]
    )
    names = sorted(
        k[len("own_vote_") :] for k in (full[0] if full else {}) if k.startswith("own_vote_")
    )
    text = (
        "| of the normal run's hops | at a clip join | away from joins |\n| --- | ---: | ---: |\n"
    )
    for name in [*names, None]:
        vote = np.array(
            [bool(h["emergency"] if name is None else h[f"own_vote_{name}"]) for h in full]
        )
        has = np.array([name is None or bool(h.get(f"own_opinion_{name}", True)) for h in full])
        cells = []
        for where in (at, ~at):
            n = int((has & where).sum())
            cells.append(f"{(vote & has & where).sum() / n:.2f} of {n}" if n else "–")
        text += f"| {name or 'ensemble'} votes emergency | {cells[0]} | {cells[1]} |\n"
    return text


def load(run: Path) -> tuple[dict, list[dict], list[dict]]:
    """A run's result, its stream's parts (rebuilt from the run's own options) and its hops."""
    result = json.loads((run / "result.json").read_text())
    o = result["options"]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "stream.wav"
        if result["mode"] == "events":
            parts = events_stream(
                Path(o["manifest"]), o["split"], int(o["events"]), int(o["seed"]), wav
            )
        else:
            splits = o["splits"].split(",")
            parts = normal_stream(
                Path(o["manifest"]), splits, float(o["minutes"]), int(o["seed"]), wav
            )
    hops = [json.loads(line) for line in (run / "hops.jsonl").read_text().splitlines()]
    return result, parts, hops


def load_vote_rule(config) -> str:
    from ensemble.config import load_config

    return load_config(config).vote.rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-run", type=Path, required=True)
    parser.add_argument("--normal-run", type=Path, required=True)
    parser.add_argument("--cooldown", type=float, default=10.0, help="replayed with every setting")
    parser.add_argument("--config", type=Path, default=None, help="revote the hops under this")
    parser.add_argument("--name", default="val", help="the section: listen-choose-NAME")
    parser.add_argument(
        "--hop-fpr",
        type=float,
        nargs="*",
        default=[],
        help="also try member thresholds at these false-positive rates of the normal hops",
    )
    parser.add_argument(
        "--write-config", type=Path, default=None, help="val: the chosen config, for listen"
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    ev_result, ev_parts, ev_hops = load(args.events_run)
    no_result, no_parts, no_hops = load(args.normal_run)
    config = args.config or Path(ev_result["options"]["config"])
    window = float(ev_result["options"]["window"])
    cooldown = args.cooldown
    normal_h = no_result["summary"]["stream_s"] / 3600
    rows, chosen_thresholds = [], {}
    for fpr in (None, *args.hop_fpr):
        thresholds = None if fpr is None else hop_thresholds(no_hops, config, fpr)
        chosen_thresholds[fpr] = thresholds
        if args.config is None and thresholds is None:
            ev, no = ev_hops, no_hops
        else:
            ev, no = (
                revote_with(ev_hops, config, thresholds),
                revote_with(no_hops, config, thresholds),
            )
        for k, m in SETTINGS:
            s = score_events(ev_parts, replay(ev, k, cooldown, 0.0, m), window)
            normal_alerts = replay(no, k, cooldown, 0.0, m)
            false = s["false_alerts"] + len(normal_alerts)
            hours = normal_h + s["normal_s"] / 3600  # all the normal audio
            rows.append(
                {
                    **({"hop_fpr": fpr} if args.hop_fpr else {}),
                    "confirm": k,
                    "min_score": m,
                    "events_alerted": s["alerted"][0],
                    "right_class": s["right_class"][0],
                    "false_alerts": false,
                    "false_per_hour": false / hours,
                    "normal_run_at_joins": f"{at_joins(normal_alerts, no_parts, window)} / "
                    f"{len(normal_alerts)}",
                    "stream_latency_median_s": s["latency_median_s"],
                }
            )
    clean = [r for r in rows if r["false_alerts"] == 0]
    best = max(  # none clean: the fewest false alerts first
        clean or rows,
        key=lambda r: (
            -r["false_alerts"],
            r["events_alerted"],
            -r["confirm"],
            -(r["min_score"] or 0),
        ),
    )
    minutes = 60 * hours
    split = ev_result["options"]["split"]
    hop_col = "hop FPR of each member | " if args.hop_fpr else ""
    text = (
        f"### Listening: --confirm and --min-score on {split} ({ev_result['n_events']} {split} "
        f"events; {minutes:.0f} min of normal audio; `--window {window:g} --cooldown "
        f"{cooldown:g}`; {config})\n\n"
        f"| {hop_col}--confirm | --min-score | events alerted | right class | false alerts | "
        "per hour | of the normal run's, at a clip join | median latency in stream s |\n"
        f"|{' ---: |' * (8 + bool(args.hop_fpr))}\n"
    )
    for r in rows:
        text += "| " + " | ".join(cell(v) for v in r.values()) + " |\n"
    text += (
        "\nAt a clip join: the alerting hop's window holds the join of two clips of the normal "
        "stream (a background, level or voice changing from one sample to the next).\n"
    )
    text += (
        f"\nThe normal run's hops as recorded ({no_result['options']['config']}), "
        "with a full window:\n\n" + join_rates(no_hops, no_parts, window)
    )
    if args.hop_fpr:
        text += "Hop FPR empty: the config's own thresholds (set on val files).\n"
    rule = (
        "the most events among settings without a false alert"
        if clean
        else "none is clean: the fewest false alerts, then the most events"
    )
    if load_vote_rule(config) == "stack":
        text += (
            "The config votes with `stack`, on its own threshold: member thresholds (the hop "
            "FPR rows) change no vote; --min-score, on the stack's probability, is the knob.\n"
        )
    if split == "val":  # never chosen on test
        fpr = best.get("hop_fpr")
        hop = f"member thresholds at {fpr} of the normal hops, " if fpr else ""
        text += (
            f"\nChosen ({rule}): {hop}`--confirm {best['confirm']} --min-score "
            f"{best['min_score']}`\n"
        )
        if args.write_config:
            thresholds = chosen_thresholds[fpr]
            if thresholds is None:  # the config's own thresholds
                from ensemble.config import load_config

                thresholds = {m.name: m.threshold for m in load_config(config).members}
            write_config(Path(config), thresholds, best, args.write_config)
            text += f"Written: {args.write_config}\n"
    print(text)
    write_section(args.results, f"listen-choose-{args.name}", text)


if __name__ == "__main__":
    main()
