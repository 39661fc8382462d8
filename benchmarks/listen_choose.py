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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listen_latency import SETTINGS, cell, events_stream, normal_stream, replay, score_events
from speed import write_section


def revote_hops(hops: list[dict], config_path: Path) -> list[dict]:
    """The hop rows as the ensemble of `config_path` votes them (its members' recorded outputs)."""
    from ensemble.config import load_config
    from ensemble.core.labels import load_taxonomy
    from ensemble.revote import revote_windows

    config = load_config(config_path)
    return revote_windows(hops, config, load_taxonomy(config.labels))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-run", type=Path, required=True)
    parser.add_argument("--normal-run", type=Path, required=True)
    parser.add_argument("--cooldown", type=float, default=10.0, help="replayed with every setting")
    parser.add_argument("--config", type=Path, default=None, help="revote the hops under this")
    parser.add_argument("--name", default="val", help="the section: listen-choose-NAME")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    ev_result, ev_parts, ev_hops = load(args.events_run)
    no_result, _, no_hops = load(args.normal_run)
    if args.config is not None:
        ev_hops, no_hops = revote_hops(ev_hops, args.config), revote_hops(no_hops, args.config)
    window = float(ev_result["options"]["window"])
    cooldown = args.cooldown
    normal_h = no_result["summary"]["stream_s"] / 3600
    rows = []
    for k, m in SETTINGS:
        s = score_events(ev_parts, replay(ev_hops, k, cooldown, 0.0, m), window)
        false = s["false_alerts"] + len(replay(no_hops, k, cooldown, 0.0, m))
        hours = normal_h + s["normal_s"] / 3600  # all the val normal audio
        rows.append(
            {
                "confirm": k,
                "min_score": m,
                "events_alerted": s["alerted"][0],
                "right_class": s["right_class"][0],
                "false_alerts": false,
                "false_per_hour": false / hours,
                "stream_latency_median_s": s["latency_median_s"],
            }
        )
    clean = [r for r in rows if r["false_alerts"] == 0]
    best = max(
        clean or rows,
        key=lambda r: (r["events_alerted"], -r["confirm"], -(r["min_score"] or 0)),
    )
    minutes = 60 * hours
    split = ev_result["options"]["split"]
    config = args.config or ev_result["options"]["config"]
    text = (
        f"### Listening: --confirm and --min-score on {split} ({ev_result['n_events']} {split} "
        f"events; {minutes:.0f} min of normal audio; `--window {window:g} --cooldown "
        f"{cooldown:g}`; {config})\n\n"
        "| --confirm | --min-score | events alerted | right class | false alerts | per hour | "
        "median latency in stream s |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    for r in rows:
        text += "| " + " | ".join(cell(v) for v in r.values()) + " |\n"
    rule = "the most events among settings without a false alert" if clean else "none is clean"
    if split == "val":  # never chosen on test
        text += (
            f"\nChosen ({rule}): `--confirm {best['confirm']} --min-score {best['min_score']}`\n"
        )
    print(text)
    write_section(args.results, f"listen-choose-{args.name}", text)


if __name__ == "__main__":
    main()
