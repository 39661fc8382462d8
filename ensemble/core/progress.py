"""Progress bars that suit where they are read: redrawn in place on a terminal, and in a log file
(output not a terminal) one plain line at most every 5 % and 10 s, so a log stays readable."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


class _Lines:
    """A stream for tqdm that turns each redraw into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Any = None, *, total: float | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, total=total, **kwargs)`, quiet in log files (see the module's text)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if stream.isatty():
        return tqdm(iterable, total=total, file=stream, dynamic_ncols=True, **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    every = max(total / 20, 1) if total else 1
    kwargs.setdefault("mininterval", 10.0)
    plain = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]{postfix}"
    return tqdm(
        iterable, total=total, file=_Lines(stream), miniters=every, bar_format=plain, **kwargs
    )
