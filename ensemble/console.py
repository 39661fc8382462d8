"""What a command prints: our progress and results, not the dependencies' notices.

`quiet(verbose)` sets logging for a command: the INFO lines of this project's packages, only
warnings and errors of the dependencies, and no deprecation notices, Lightning tips or batch-index
notes; `--verbose` shows everything at DEBUG.
"""

from __future__ import annotations

import logging
import os
import warnings

OURS = ("emergency-ensemble", "ensemble", "whisper_head", "cnn", "anomaly")
NOISE = (  # what dependencies print that a user of a command cannot act on
    r".*Couldn't infer the batch indices.*",
    r".*is deprecated.*",
    r".*does not have many workers.*",
    r".*`isinstance\(treespec, LeafSpec\)`.*",
)


def quiet(verbose: bool) -> None:
    """Logging for a command: our INFO lines, the dependencies' warnings and errors only, and no
    deprecation notices, Lightning tips or batch-index notes; `verbose` shows everything."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    for handler in logging.getLogger().handlers:  # the dependencies' INFO, whatever their level
        handler.addFilter(_ours_or_warnings)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight loading
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in OURS
