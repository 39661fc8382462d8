"""The listening loop: a ring buffer of the newest audio, the ensemble every hop, alerts on events.

`Listener.run()` reads a `Source` block by block into a `Ring` (the last 30 s). Every `hop_s`
seconds of stream audio it scores the newest `window_s` seconds with the ensemble (`Scorer`: the
members and the config's vote, exactly as `infer` votes a window), and an `AlertGate` turns the
run of votes into events: an alert when the vote holds for `confirm` hops in a row, nothing more
until the audio is normal again and `cooldown_s` has passed since the last alert. Each alert saves
the ring's audio as a WAV readable by its owner only and goes to every sink.

Time is stream time (seconds of audio received), so a file streamed faster than real time gives
the same hops and alerts as the same audio from a microphone.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ensemble.config import EnsembleConfig
from ensemble.core.audio import CHUNK_LENGTH, SAMPLE_RATE, seconds_to_samples
from ensemble.listen.clips import private_dir, prune_clips, save_clip
from ensemble.listen.sinks import LogSink
from ensemble.listen.sources import Source, StallError, StreamError
from ensemble.members import EnsembleModule
from ensemble.rows import MemberTable, RowMaker
from ensemble.writer import member_extras

log = logging.getLogger(__name__)


class Ring:
    """The newest `capacity` samples, in one preallocated array (memory stays flat)."""

    def __init__(self, capacity: int):
        self.data = np.zeros(capacity, np.float32)
        self.size = 0  # valid samples, at most capacity
        self.end = 0  # where the next sample goes

    def append(self, x: np.ndarray) -> None:
        x = x[-len(self.data) :]
        n, cap = len(x), len(self.data)
        first = min(n, cap - self.end)
        self.data[self.end : self.end + first] = x[:first]
        self.data[: n - first] = x[first:]
        self.end = (self.end + n) % cap
        self.size = min(cap, self.size + n)

    def last(self, n: int) -> np.ndarray:
        """A copy of the newest `n` samples (fewer if fewer are held), oldest first."""
        n = min(n, self.size)
        idx = (self.end - n + np.arange(n)) % len(self.data)
        return self.data[idx]

    def clear(self) -> None:
        self.size = self.end = 0


class AlertGate:
    """Votes per hop -> "alert", "held", "clear" or None.

    An alert when the vote has held for `confirm` hops in a row and no event is open, and
    `cooldown_s` have passed since the last alert (before that: "held", once per event; it alerts
    when the cooldown ends if the vote still holds); the event is open until a normal hop clears
    it.
    """

    def __init__(self, confirm: int = 1, cooldown_s: float = 60.0):
        if confirm < 1:
            raise ValueError(f"--confirm must be at least 1, got {confirm}")
        self.confirm, self.cooldown_s = confirm, cooldown_s
        self.run = 0  # emergency hops in a row
        self.open = False  # an event was alerted and has not cleared
        self.last_alert: float | None = None
        self.normal_until: float | None = None  # stream time of the last normal hop
        self.held = False  # this run of emergency hops was held back once already

    def update(self, emergency: bool, t: float) -> str | None:
        if not emergency:
            self.run, self.normal_until, self.held = 0, t, False
            if self.open:
                self.open = False
                return "clear"
            return None
        self.run += 1
        cooled = self.last_alert is None or t - self.last_alert >= self.cooldown_s
        if self.open or self.run < self.confirm:
            return None
        if cooled:
            self.open, self.last_alert = True, t
            return "alert"
        if not self.held:
            self.held = True
            return "held"
        return None


def alerting(row: dict, min_score: float | None) -> bool:
    """Whether a hop's row counts towards an alert: the ensemble's vote, and its score at least
    `min_score` when one is set (a stricter bar for live alerts, chosen on validation streams)."""
    if min_score is None:
        return bool(row["emergency"])
    return bool(row["emergency"]) and row["score"] is not None and row["score"] >= min_score


class Scorer:
    """The ensemble of a config on one window of newest audio -> a window row (see `rows`)."""

    def __init__(self, config: EnsembleConfig):
        self.module = EnsembleModule(config)
        self.rows = RowMaker(config, self.module.taxonomy)
        self.names = config.names
        self.wave = torch.zeros(1, seconds_to_samples(CHUNK_LENGTH))  # reused every hop
        self.n = 0

    @property
    def taxonomy(self):
        return self.module.taxonomy

    def __call__(self, audio: np.ndarray, start_s: float) -> dict:
        n = len(audio)
        self.wave.zero_()
        self.wave[0, :n] = torch.from_numpy(audio)
        with torch.inference_mode():
            out = self.module(
                self.wave, torch.tensor([n]), torch.tensor([start_s], dtype=torch.float64)
            )
        table = MemberTable.from_outputs(out, self.names)
        meta = {"path": "stream", "window": self.n, "start_s": start_s}
        meta["end_s"] = start_s + n / SAMPLE_RATE
        self.n += 1
        return self.rows.windows([meta], table, [member_extras(out, self.names, 0, start_s)])[0]


@dataclass
class ListenOptions:
    out: Path = Path("runs/listen")
    hop_s: float = 2.0
    window_s: float = 10.0  # scored every hop: the newest audio (the encoder pads it to 30 s)
    confirm: int = 1
    cooldown_s: float = 60.0
    min_score: float | None = None  # an alerting hop also needs the ensemble's score >= this
    clip_s: float = 30.0  # audio saved with an alert, up to the alert
    location: str = ""
    device_id: str = field(default_factory=socket.gethostname)
    keep_days: float = 30.0
    stall_s: float = 10.0  # no audio for this long: a stalled stream
    realtime: bool = False  # pace the source at wall-clock speed (a file, for demos and tests)
    backoff_s: float = 1.0  # the first wait before reconnecting; it doubles up to max_backoff_s
    max_backoff_s: float = 60.0
    max_reconnects: int | None = None  # None: reconnect for ever
    record_hops: Path | None = None  # every hop's row (transcripts too): for benchmarks

    def __post_init__(self) -> None:
        if not 0 < self.window_s <= CHUNK_LENGTH:
            raise ValueError(f"--window must be in (0, {CHUNK_LENGTH:g}] s, got {self.window_s}")
        if self.hop_s <= 0 or self.clip_s <= 0 or self.stall_s <= 0:
            raise ValueError("--hop, --clip and --stall-timeout must be positive")


@dataclass
class Summary:
    stream_s: float = 0.0
    hops: int = 0
    skipped_hops: int = 0  # a live source ran ahead of the analysis
    alerts: int = 0
    reconnects: int = 0
    score_s: float = 0.0  # seconds spent scoring
    peak_delay_s: float = 0.0

    def line(self) -> str:
        per_hop = self.score_s / max(self.hops, 1)
        return (
            f"listened to {self.stream_s:.1f} s of audio: {self.hops} hops "
            f"({per_hop:.2f} s each, {self.skipped_hops} skipped), {self.alerts} alerts, "
            f"{self.reconnects} reconnects"
        )


class Listener:
    """A source, a scorer and sinks: `run()` listens until the stream ends or Ctrl-C."""

    def __init__(self, source: Source, scorer: Scorer, sinks: list, options: ListenOptions):
        self.source, self.scorer, self.sinks, self.o = source, scorer, sinks, options
        self.taxonomy = scorer.taxonomy
        self.clips = private_dir(options.out) / "clips"
        self.ring = Ring(seconds_to_samples(max(options.window_s, options.clip_s)))
        self.gate = AlertGate(options.confirm, options.cooldown_s)
        self.summary = Summary()
        self.hops = LogSink(options.record_hops) if options.record_hops else None
        self.samples = 0  # received since the start: stream time
        self._pruned = -np.inf

    def run(self) -> Summary:
        o, hop = self.o, seconds_to_samples(self.o.hop_s)
        next_hop = hop
        started = time.monotonic()
        backoff = o.backoff_s
        self._prune(force=True)
        self.source.open()
        try:
            while True:
                try:
                    block = self.source.read(o.stall_s)
                except (StallError, StreamError) as e:
                    log.warning("%s", e)
                    if not self.source.reconnect and isinstance(e, StreamError):
                        raise
                    if self.source.reconnect:
                        backoff = self._reopen(backoff)
                    continue
                if block is None:
                    if not self.source.reconnect:
                        log.info("%s: the stream ended", self.source.name)
                        break
                    log.warning("%s: the stream ended; reconnecting", self.source.name)
                    backoff = self._reopen(backoff)
                    continue
                backoff = o.backoff_s
                arrived = time.monotonic()
                self.ring.append(block)
                self.samples += len(block)
                if o.realtime:  # the block ends at stream time samples / rate
                    time.sleep(max(0.0, started + self.samples / SAMPLE_RATE - time.monotonic()))
                    arrived = time.monotonic()
                if self.samples < next_hop:
                    continue
                next_hop += hop * ((self.samples - next_hop) // hop + 1)
                if self.source.live and self.source.backlog_s() > o.hop_s:
                    self.summary.skipped_hops += 1  # behind a live source: catch up first
                    continue
                self._hop(arrived)
        finally:
            self.source.close()
            self.summary.stream_s = self.samples / SAMPLE_RATE
            for sink in [*self.sinks, *([self.hops] if self.hops else [])]:
                sink.close()
        return self.summary

    def _reopen(self, backoff: float) -> float:
        """Close, wait `backoff` seconds, reopen; the next backoff doubles (up to a bound)."""
        self.source.close()
        if self.o.max_reconnects is not None and self.summary.reconnects >= self.o.max_reconnects:
            raise StreamError(
                f"{self.source.name}: gave up after {self.summary.reconnects} reconnects"
            )
        self.ring.clear()  # no window spans the gap
        log.info("%s: reconnecting in %.0f s", self.source.name, backoff)
        time.sleep(backoff)
        self.summary.reconnects += 1
        self.source.open()
        return min(2 * backoff, self.o.max_backoff_s)

    def _hop(self, arrived: float) -> None:
        """Score the newest window; alert or clear."""
        o = self.o
        audio = self.ring.last(seconds_to_samples(o.window_s))
        if len(audio) < seconds_to_samples(self.scorer.module.config.min_duration_s):
            return
        stream_s = self.samples / SAMPLE_RATE
        t0 = time.perf_counter()
        row = self.scorer(audio, stream_s - len(audio) / SAMPLE_RATE)
        self.summary.score_s += time.perf_counter() - t0
        self.summary.hops += 1
        if self.hops is not None:
            self.hops.send(row)
        self._prune()
        since = self.gate.normal_until
        event = self.gate.update(alerting(row, o.min_score), stream_s)
        if event == "clear":
            log.info("%.1f s: the audio is normal again", stream_s)
        elif event == "held":
            log.info(
                "%.1f s: an emergency (%s) held back: within --cooldown %g s of the last alert",
                stream_s,
                row["class"],
                o.cooldown_s,
            )
        elif event == "alert":
            self._alert(row, stream_s, since, arrived)

    def _alert(self, row: dict, stream_s: float, since: float | None, arrived: float) -> None:
        now = dt.datetime.now().astimezone()
        key = row["class"]
        situation = self.taxonomy[key] if key else None
        alert_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        clip = save_clip(
            self.clips,
            f"{alert_id}-{key or 'unknown'}",
            self.ring.last(seconds_to_samples(self.o.clip_s)),
        )
        names = self.scorer.names
        alert = {
            "type": "alert",
            "id": alert_id,
            "time": now.isoformat(timespec="milliseconds"),
            "stream_s": round(stream_s, 3),
            "since_s": None if since is None else round(since, 3),  # last normal hop before
            "class": key,
            "class_ko": situation.ko if situation else None,
            "class_en": situation.en if situation else None,
            "score": row["score"],
            "votes": {
                n: {"vote": row[f"vote_{n}"], "p": row[f"p_{n}"], "opinion": row[f"opinion_{n}"]}
                for n in names
            },
            "transcript": row.get("transcript"),
            "location": self.o.location,
            "device_id": self.o.device_id,
            "source": self.source.name,
            "clip": str(clip.resolve()),
            "clip_s": round(min(self.o.clip_s, self.ring.size / SAMPLE_RATE), 3),
            "delay_s": round(time.monotonic() - arrived, 3),  # newest audio's arrival -> now
        }
        self.summary.alerts += 1
        self.summary.peak_delay_s = max(self.summary.peak_delay_s, alert["delay_s"])
        log.warning(
            "ALERT %s (%s) at %.1f s of the stream, score %s",
            alert["class_en"],
            alert["class_ko"],
            stream_s,
            alert["score"],
        )
        for sink in self.sinks:
            sink.send(alert)
        self._prune(force=True)

    def _prune(self, force: bool = False) -> None:
        """Remove clips older than --keep-days: at the start, after each alert, and hourly."""
        if not force and time.monotonic() - self._pruned < 3600:
            return
        self._pruned = time.monotonic()
        removed = prune_clips(self.clips, self.o.keep_days)
        if removed:
            log.info("removed %d clips older than %g days", removed, self.o.keep_days)
