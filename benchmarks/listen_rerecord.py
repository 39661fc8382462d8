"""Record a retrained member's outputs on the stream of an earlier listening run, keep the rest.

A run of `benchmarks/listen_latency.py` records every member's outputs at every hop. When one
member is trained again (the CNN, say), this listens to the run's own `stream.wav` with that
member alone (the listener built as `listen --config` builds it, at the run's hop and window, not
at real time: the hops are the same as the run's) and writes a new run whose hops hold the new
member's outputs beside the other members' recorded ones, voted by the whole ensemble of
`--config`: the hops `listen --config` would have recorded. `listen_choose.py` replays them.
Only runs that skipped no hop qualify (`--fast` events and the hour: time is stream time).

    python benchmarks/listen_rerecord.py runs/bl32_val/events-val-w10-c1 \\
        --config runs/demo_j2/ensemble.calibrated.yaml --members cnn --out runs/bl33_val
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))


PREFIXES = ("p_", "vote_", "own_vote_", "opinion_", "own_opinion_", "class_", "probs_")
WHISPER_KEYS = ("transcript", "no_speech_prob")  # of the Whisper member's single pass


def member_keys(row: dict, name: str) -> list[str]:
    """The fields of a hop row that belong to member `name` (p_NAME, vote_NAME, ...)."""
    keys = [p + name for p in PREFIXES if p + name in row]
    whisper = name in ("whisper_head", "keyword_judge")
    return keys + [k for k in WHISPER_KEYS if whisper and keys and k in row]


def merge_hops(old: list[dict], new: list[dict], names: list[str]) -> list[dict]:
    """`old` hop rows with the fields of members `names` taken from `new` (matched by stream
    time; the two runs must have hopped at the same times)."""
    if [h["end_s"] for h in old] != [h["end_s"] for h in new]:
        raise ValueError(
            f"the hops differ ({len(old)} recorded, {len(new)} now): was a hop skipped?"
        )
    out = []
    for a, b in zip(old, new, strict=True):
        row = dict(a)
        for name in names:
            keys = member_keys(b, name)
            if not keys:
                raise ValueError(f"the new run has no outputs of member {name!r}")
            row.update({k: b[k] for k in keys})
        out.append(row)
    return out


def single_member_config(config: Path, names: list[str], path: Path) -> Path:
    """`config` with only the members `names` and a plain majority vote (their outputs are what
    is kept; the whole config revotes them later), written to `path` beside `config`."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    missing = set(names) - {m["name"] for m in raw["members"]}
    if missing:
        raise ValueError(f"{config}: no member {sorted(missing)}")
    raw["members"] = [m for m in raw["members"] if m["name"] in names]
    raw["vote"] = {"rule": "majority"}
    raw.pop("calibration", None)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a listen_latency.py run folder (stream.wav)")
    parser.add_argument("--config", type=Path, required=True, help="holds the new member(s)")
    parser.add_argument("--members", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="the new run goes to OUT/RUN")
    args = parser.parse_args()
    from listen_choose import revote_with  # the whole ensemble of --config votes every hop
    from listen_latency import listen

    from ensemble.console import quiet

    quiet(False)
    result = json.loads((args.run / "result.json").read_text())
    o = result["options"]
    if result.get("summary", {}).get("skipped_hops"):
        raise SystemExit(f"{args.run}: it skipped hops (real time); its hops cannot be matched")
    out = args.out / args.run.name
    out.mkdir(parents=True, exist_ok=True)
    # beside the config: its checkpoint paths are relative to its folder
    cfg = single_member_config(args.config, args.members, args.config.with_suffix(".rerecord.yaml"))
    try:
        ns = argparse.Namespace(
            config=cfg,
            hop=float(o["hop"]),
            window=float(o["window"]),
            confirm=1,
            cooldown=float(o["cooldown"]),
            threads=int(o["threads"]),
            min_score=None,
        )
        with tempfile.TemporaryDirectory() as work:
            run = listen(args.run / "stream.wav", Path(work), ns, realtime=False)
            new = [json.loads(x) for x in (Path(work) / "hops.jsonl").read_text().splitlines()]
    finally:
        cfg.unlink(missing_ok=True)
    old = [json.loads(x) for x in (args.run / "hops.jsonl").read_text().splitlines()]
    hops = revote_with(merge_hops(old, new, args.members), args.config, None)
    (out / "hops.jsonl").write_text(
        "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hops), encoding="utf-8"
    )
    # what listen_choose reads; the run's own figures (alerts, CPU, memory) were of the old members
    result = {k: result[k] for k in ("mode", "options", "n_events", "summary") if k in result}
    result["options"]["config"] = str(args.config)
    result["rerecorded"] = {
        "from": str(args.run),
        "members": args.members,
        "wall_s": run["wall_s"],
        "hops": len(hops),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    shutil.copyfile(args.run / "stream.wav", out / "stream.wav")
    print(f"{out}: {len(hops)} hops, {', '.join(args.members)} recorded again "
          f"in {run['wall_s'] / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
