"""`emergency-ensemble listen SOURCE`: its options, and the run that wires source, ensemble and
sinks together. Alerts are JSON lines on stdout (unless --no-stdout); everything else is on
stderr."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "listen",
        help="listen to a microphone, stdin PCM or a stream; alert on emergencies",
        description="Listen live: score the newest audio every --hop seconds with the ensemble, "
        "alert once per event (JSON on stdout, in the log, to webhooks and commands).",
    )
    p.add_argument(
        "source",
        nargs="?",
        default="mic",
        help="`mic` (default input), `mic:DEVICE`, `-` (s16le PCM on stdin), or a URL or file "
        "that ffmpeg reads (rtsp://, http://, a path)",
    )
    p.add_argument(
        "--config", type=Path, default=Path("configs/ensemble.yaml"), help="the ensemble config"
    )
    p.add_argument("--out", type=Path, default=Path("runs/listen"), help="alert log and clips")
    p.add_argument("--rate", type=int, default=16000, help="stdin: samples per second")
    p.add_argument("--channels", type=int, default=1, help="stdin: interleaved channels")
    p.add_argument("--realtime", action="store_true", help="pace a file at wall-clock speed")
    p.add_argument("--hop", type=float, default=2.0, help="seconds between analyses")
    p.add_argument("--window", type=float, default=10.0, help="seconds of newest audio scored")
    p.add_argument("--confirm", type=int, default=1, help="emergency hops in a row to alert")
    p.add_argument("--cooldown", type=float, default=60.0, help="seconds between two alerts")
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="an alerting hop also needs the ensemble's score >= this (default: the vote alone)",
    )
    p.add_argument("--clip", type=float, default=30.0, help="seconds of audio saved per alert")
    p.add_argument("--location", default="", help="where the microphone is, sent with alerts")
    p.add_argument("--device-id", default=None, help="this listener's name (default: hostname)")
    p.add_argument("--log", type=Path, default=None, help="alert log (default OUT/alerts.jsonl)")
    p.add_argument("--no-stdout", action="store_true", help="no alert lines on stdout")
    p.add_argument(
        "--webhook", action="append", default=[], metavar="URL", help="POST alerts (repeatable)"
    )
    p.add_argument("--webhook-timeout", type=float, default=5.0, help="seconds per try")
    p.add_argument("--webhook-retries", type=int, default=3, help="tries after the first")
    p.add_argument(
        "--webhook-secret-env",
        default="EMERGENCY_WEBHOOK_SECRET",
        metavar="VAR",
        help="environment variable holding the HMAC secret that signs webhook bodies",
    )
    p.add_argument("--webhook-ca", type=Path, default=None, help="CA bundle for an HTTPS webhook")
    p.add_argument(
        "--on-alert",
        action="append",
        default=[],
        metavar="CMD",
        help="run CMD with the alert JSON on stdin (repeatable; never through a shell)",
    )
    p.add_argument("--keep-days", type=float, default=30.0, help="clips kept this long; 0: always")
    p.add_argument("--stall-timeout", type=float, default=10.0, help="seconds without audio")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the models")
    p.add_argument(
        "--record-hops", type=Path, default=None, help="every hop's row (holds transcripts)"
    )
    p.set_defaults(func=listen_command)


def listen_command(args: argparse.Namespace) -> None:
    listener = make_listener(args)
    previous = signal.getsignal(signal.SIGTERM)
    if _main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # systemd's stop: the same clean exit
    try:
        listener.run()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        if _main_thread():
            signal.signal(signal.SIGTERM, previous)
    print(listener.summary.line(), file=sys.stderr)


def make_listener(args: argparse.Namespace):
    """The Listener that `listen` runs, from its parsed options (benchmarks build it so too)."""
    import torch

    from ensemble.config import load_config
    from ensemble.listen.listener import Listener, ListenOptions, Scorer
    from ensemble.listen.sinks import CommandSink, LogSink, StdoutSink, WebhookSink
    from ensemble.listen.sources import open_source

    options = ListenOptions(
        out=args.out,
        hop_s=args.hop,
        window_s=args.window,
        confirm=args.confirm,
        cooldown_s=args.cooldown,
        min_score=args.min_score,
        clip_s=args.clip,
        location=args.location,
        keep_days=args.keep_days,
        stall_s=args.stall_timeout,
        realtime=args.realtime,
        record_hops=args.record_hops,
    )
    if args.device_id:
        options.device_id = args.device_id
    source = open_source(args.source, args.rate, args.channels)
    sinks: list = [LogSink(args.log or args.out / "alerts.jsonl")]
    sinks += [] if args.no_stdout else [StdoutSink()]
    sinks += [
        WebhookSink(
            url,
            timeout_s=args.webhook_timeout,
            retries=args.webhook_retries,
            secret_env=args.webhook_secret_env,
            cafile=args.webhook_ca,
        )
        for url in args.webhook
    ]
    sinks += [CommandSink(cmd) for cmd in args.on_alert]
    torch.set_num_threads(args.threads)
    scorer = Scorer(load_config(args.config))
    listener = Listener(source, scorer, sinks, options)
    log.info(
        "listening to %s: every %g s the newest %g s; alerts to %s",
        source.name,
        options.hop_s,
        options.window_s,
        ", ".join(type(s).__name__ for s in sinks),
    )
    return listener


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and os.name == "posix"
