"""Text facts shared by the splits and the members: which script a transcript is written in, and
the key that joins spellings of one transcript."""

from __future__ import annotations

import re
import unicodedata

HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
LATIN = re.compile(r"[a-z]")  # on lower-cased text


def script_language(text: str) -> str:
    """`ko` for Hangul, `en` for Latin letters, `other` for other text, "" for none."""
    text = str(text)
    if not text.strip():
        return ""
    return "ko" if HANGUL.search(text) else "en" if LATIN.search(text.lower()) else "other"


def normalize_text(text: str) -> str:
    """Transcript key for grouping: NFC, lower case, letters and digits only."""
    text = unicodedata.normalize("NFC", str(text)).lower()
    return re.sub(r"[\W_]+", "", text)
