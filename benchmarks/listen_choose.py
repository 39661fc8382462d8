"""Choose `listen --confirm` and `--min-score` on validation streams, from recorded hops.

Reads runs of `benchmarks/listen_latency.py` on validation audio: `events` runs and `hour` runs
of normal clips (several of each: val's own, and those of a fresh draw of the demo data,
`benchmarks/fresh_draw.py`), replays the alert gate on their recorded hops for every --confirm
(1-5) and --min-score (exact: the hops depend on neither), and chooses the setting that alerts
the most events among those with no false alert on all the normal audio (ties: fewer confirming
hops, then the lower bar). Writes the table and the choice to benchmarks/RESULTS.md.

    python benchmarks/listen_choose.py \\
        --events-run runs/bench_listen_val/events-val-w10-c1 runs/fresh/events-fresh-w10-c1 \\
        --normal-run runs/bench_listen_val/hour-normal-val-w10-c1 runs/fresh/hour-normal-fresh-w10-c1

`--config C` first revotes the recorded hops under another ensemble config with the same members
or fewer (each hop row holds every member's outputs), as `listen --config C` would have voted
them; `--name` names the section. Runs on the test split (or the held-out one), or any runs with
`--test` (a fresh draw kept for testing), give that config's test figures and choose nothing.

`--hop-fpr F [F ...]` also tries member thresholds set on the hops: each member votes where its p
exceeds the (1 - F) quantile of its p over the normal runs' hops (where it has an opinion), so it
calls about F of the normal 10 s hops emergency (the file-level calibration sets 5 % on files,
which is not 5 % of hops). The setting (F, --confirm, --min-score) is chosen as above, and
`--write-config PATH` writes the config with the chosen thresholds for `listen --config PATH`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listen_latency import cell, events_stream, normal_stream, replay, score_events
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
        + (f" --window {setting['window']:g}" if setting.get("window", 10.0) != 10.0 else "")
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


def alert_splits(alerts: list[dict], parts: list[dict]) -> list[str]:
    """The split of the clip that holds each alert's newest audio."""
    starts = np.array([p["clip_start"] for p in parts])
    idx = np.searchsorted(starts, [a["stream_s"] for a in alerts], side="left") - 1
    return [str(parts[max(i, 0)].get("split", "?")) for i in idx]


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
    if result["mode"] == "events":
        parts = events_stream(
            Path(o["manifest"]), o["split"], int(o["events"]), int(o["seed"]), None
        )
    else:
        splits = o["splits"].split(",")
        parts = normal_stream(
            Path(o["manifest"]), splits, float(o["minutes"]), int(o["seed"]), None
        )
    hops = [json.loads(line) for line in (run / "hops.jsonl").read_text().splitlines()]
    return result, parts, hops


def load_vote_rule(config) -> str:
    from ensemble.config import load_config

    return load_config(config).vote.rule


CONFIRMS = (1, 2, 3, 4, 5)  # --confirm values tried: 5 hops of 2 s still catch a 3 s event
MIN_SCORES = (None, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)  # --min-score values tried


def setting_row(ev_runs, no_runs, k: int, m, cooldown: float, window: float) -> dict:
    """One setting replayed on every run: events alerted (pooled over the event runs), false
    alerts (between events and in the normal runs) and the median latency in stream time."""
    events, latency, false, at_join, normal_s, by_split = [], [], 0, 0, 0.0, {}
    for _, parts, hops in ev_runs:
        s = score_events(parts, replay(hops, k, cooldown, 0.0, m), window)
        events += s["events"]
        latency += [e["latency_s"] for e in s["events"] if e["latency_s"] is not None]
        false, normal_s = false + s["false_alerts"], normal_s + s["normal_s"]
    for result, parts, hops in no_runs:
        alerts = replay(hops, k, cooldown, 0.0, m)
        false, at_join = false + len(alerts), at_join + at_joins(alerts, parts, window)
        for split in alert_splits(alerts, parts):
            by_split[split] = by_split.get(split, 0) + 1
        normal_s += result["summary"]["stream_s"]
    n = len(events)
    return {
        "confirm": k,
        "min_score": m,
        "events_alerted": f"{sum(e['alerted'] for e in events)} / {n}",
        "right_class": f"{sum(e['right_class'] for e in events)} / {n}",
        "false_alerts": false,
        "false_per_hour": false / (normal_s / 3600),
        "normal_run_at_joins": at_join,
        "normal_run_by_split": ", ".join(f"{s} {n}" for s, n in sorted(by_split.items())) or "-",
        "stream_latency_median_s": float(np.median(latency)) if latency else None,
        "_alerted": sum(e["alerted"] for e in events),
        "_normal_min": normal_s / 60,
    }


def choose(rows: list[dict]) -> tuple[dict, bool]:
    """The setting that alerts the most events among those with no false alert (ties: fewer
    confirming hops, then the lower bar); when none is clean, the fewest false alerts first."""
    clean = [r for r in rows if r["false_alerts"] == 0]
    best = max(
        clean or rows,
        key=lambda r: (-r["false_alerts"], r["_alerted"], -r["confirm"], -(r["min_score"] or 0)),
    )
    return best, bool(clean)


def held_out(ev_runs, no_runs, names, cooldown: float, window: float) -> str:
    """A table: each normal run left out in turn, the setting `choose` takes on the events and
    the other normal runs, and the false alerts it then raises on the run left out. What a
    setting chosen this way does on normal audio it was not chosen on (a setting chosen clean is
    clean on its own runs by construction)."""
    settings = [(k, m) for m in MIN_SCORES for k in CONFIRMS]
    on_events = {s: setting_row(ev_runs, [], *s, cooldown, window) for s in settings}
    per_run = {
        s: [len(replay(h, s[0], cooldown, 0.0, s[1])) for _, _, h in no_runs] for s in settings
    }
    text = (
        "| normal run left out | its minutes | chosen on the rest | events alerted | "
        "false alerts in the run left out |\n| --- | ---: | --- | ---: | ---: |\n"
    )
    total_false, total_min = 0, 0.0
    for i, ((result, _, _), name) in enumerate(zip(no_runs, names, strict=True)):
        rows = [
            {
                **on_events[s],
                "false_alerts": on_events[s]["false_alerts"] + sum(per_run[s]) - per_run[s][i],
            }
            for s in settings
        ]
        best, clean = choose(rows)
        s = (best["confirm"], best["min_score"])
        minutes = result["summary"]["stream_s"] / 60
        total_false, total_min = total_false + per_run[s][i], total_min + minutes
        setting = f"`--confirm {s[0]}" + (f" --min-score {s[1]}`" if s[1] else "`")
        text += (
            f"| {name} | {minutes:.0f} | {setting}{'' if clean else ' (none clean)'} | "
            f"{best['events_alerted']} | {per_run[s][i]} |\n"
        )
    text += (
        f"\nOn normal audio it was not chosen on: {total_false} false alerts in {total_min:.0f} min "
        f"({total_false / (total_min / 60):.1f} per hour).\n"
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-run", type=Path, nargs="+", required=True)
    parser.add_argument("--normal-run", type=Path, nargs="+", required=True)
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
    parser.add_argument(
        "--test",
        action="store_true",
        help="the runs are a test (e.g. a fresh draw): choose nothing",
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    ev_runs, no_runs = [load(r) for r in args.events_run], [load(r) for r in args.normal_run]
    first = ev_runs[0][0]
    config = args.config or Path(first["options"]["config"])
    window = float(first["options"]["window"])
    windows = {float(r["options"]["window"]) for r, _, _ in (*ev_runs, *no_runs)}
    if len(windows) > 1:
        parser.error(f"the runs were listened to with different --window: {sorted(windows)}")
    splits = sorted({r["options"]["split"] for r, _, _ in ev_runs})
    normal_splits = {x for r, _, _ in no_runs for x in r["options"]["splits"].split(",")}
    test = args.test or bool({"test", "holdout"} & (set(splits) | normal_splits))
    if test and args.write_config:
        parser.error("--write-config chooses a setting: not on test runs")
    all_normal = [h for _, _, hops in no_runs for h in hops]
    rows, chosen_thresholds = [], {}
    for fpr in (None, *args.hop_fpr):
        thresholds = None if fpr is None else hop_thresholds(all_normal, config, fpr)
        chosen_thresholds[fpr] = thresholds
        if args.config is None and thresholds is None:
            ev, no = ev_runs, no_runs
        else:
            ev, no = (
                [(r, p, revote_with(h, config, thresholds)) for r, p, h in runs]
                for runs in (ev_runs, no_runs)
            )
        if fpr is None:
            ev_own, no_own = ev, no  # the config's own thresholds
        for m in MIN_SCORES:
            for k in CONFIRMS:
                row = setting_row(ev, no, k, m, args.cooldown, window)
                rows.append({**({"hop_fpr": fpr} if args.hop_fpr else {}), **row})
    best, clean = choose(rows)
    n_events = sum(r["n_events"] for r, _, _ in ev_runs)
    hop_col = "hop FPR of each member | " if args.hop_fpr else ""
    runs = ", ".join(str(r) for r in (*args.events_run, *args.normal_run))
    text = (
        f"### Listening: --confirm and --min-score on {'+'.join(splits)} ({n_events} events; "
        f"{rows[0]['_normal_min']:.0f} min of normal audio; `--window {window:g} --cooldown "
        f"{args.cooldown:g}`; {config})\n\nRuns: {runs}\n\n"
        f"| {hop_col}--confirm | --min-score | events alerted | right class | false alerts | "
        "per hour | of the normal runs', at a clip join | of the normal runs', by split | "
        "median latency in stream s |\n"
        f"|{' ---: |' * (9 + bool(args.hop_fpr))}\n"
    )
    for r in rows:
        shown = [v for key, v in r.items() if not key.startswith("_")]
        text += "| " + " | ".join(cell(v) for v in shown) + " |\n"
    text += (
        "\nAt a clip join: the alerting hop's window holds the join of two clips of the normal "
        "stream (a background, level or voice changing from one sample to the next).\n"
    )
    for (result, parts, hops), run in zip(no_runs, args.normal_run, strict=True):
        text += (
            f"\n{run}'s hops as recorded ({result['options']['config']}), with a full window:\n\n"
            + join_rates(hops, parts, window)
        )
    if len(no_runs) > 1 and not test:
        text += (
            "\nEach normal run left out of the choice in turn (the config's own member "
            "thresholds):\n\n" + held_out(ev_own, no_own, args.normal_run, args.cooldown, window)
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
    if not test:  # never chosen on test
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
            write_config(Path(config), thresholds, {**best, "window": window}, args.write_config)
            text += f"Written: {args.write_config}\n"
    print(text)
    write_section(args.results, f"listen-choose-{args.name}", text)


if __name__ == "__main__":
    main()
