"""Fields of an AI Hub label JSON read into manifest values: an annotation's time span in seconds,
and a clip's provenance (its background class, whether it can be identified, what made it)."""

from __future__ import annotations

import math
from typing import Any

from ensemble.core.labels import Taxonomy


def provenance(categories: Any, synthesis: Any, taxonomy: Taxonomy) -> dict[str, str]:
    """`background`, `identifiable` and `origin` of a row ("" where the label JSON does not say).

    The background is the normal class of what surrounds the event: the generator's recorded
    background (`synthesis.background.kind`), else `category_03` when it names a normal class.
    """
    record = synthesis if isinstance(synthesis, dict) else {}
    candidates = [(record.get("background") or {}).get("kind")]
    if isinstance(categories, dict):
        candidates.append(categories.get("category_03"))
    background = ""
    for value in candidates:
        try:
            key = taxonomy.key(str(value).strip()) if value else ""
        except KeyError:
            continue
        if key and not taxonomy.is_emergency(key) and key != taxonomy.classes[0].key:
            background = key
            break
    flag = record.get("identifiable")
    origin = record.get("origin") or []
    return {
        "background": background,
        "identifiable": "" if flag is None else str(bool(flag)).lower(),
        "origin": ";".join(str(o) for o in origin),
    }


def segment(area: Any) -> tuple[float | None, float | None]:
    """`area{start, end}` in seconds; (None, None) when missing, null or empty."""
    if area is None:
        return None, None
    if not isinstance(area, dict):
        raise ValueError(f"area is not an object: {area!r}")
    start, end = seconds(area.get("start")), seconds(area.get("end"))
    if start is None and end is None:
        return None, None
    if start is None or end is None or not 0 <= start < end:
        raise ValueError(f"area must have 0 <= start < end, got {area!r}")
    return start, end


def seconds(value: Any) -> float | None:
    """Seconds from a number or a string (`"1.5"`, `"00:01.5"`, `"0:00:01.5"`); None if empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = [float(p) for p in str(value).strip().split(":")]
    except ValueError:
        raise ValueError(f"not a time: {value!r}") from None
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    if isinstance(value, bool) or len(parts) > 3 or not math.isfinite(seconds):
        raise ValueError(f"not a time: {value!r}")
    return seconds
