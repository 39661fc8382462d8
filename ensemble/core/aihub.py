"""Import an AI Hub emergency-audio dataset folder into a manifest (DESIGN §5, `import-aihub`).

One JSON per clip gives one manifest row per annotation. Audio pairs with its JSON by
`audio.fileName`, then `audio_id`, then the JSON's stem, then variants `<stem>_label`/`<stem>_1`.
Zips under the root are extracted first (cp437-mangled Korean names re-decoded as cp949). Every
unpaired file and every fault is listed in the `ImportReport`; nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import unicodedata
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ensemble.core.audio import AUDIO_EXTENSIONS
from ensemble.core.label_fields import provenance, segment
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import COLUMNS, validate

log = logging.getLogger(__name__)

UTF8_FLAG = 0x800  # ZipInfo.flag_bits: member name is UTF-8
VARIANT_SUFFIXES = ("_label", "_1")  # audio stem = <json stem><suffix>, or the other way round
SKIP_DIRS = frozenset({"__MACOSX"})  # macOS zip metadata, never data
_SPLIT_DIR = re.compile(r"^(\d+[._ ]?)?(training|validation|train|valid|val|test)$", re.IGNORECASE)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError)
_N_LEVELS = 5  # pairing priorities: fileName, fileName stem, audio_id, JSON stem, variants


@dataclass
class ImportReport:
    """What an import found: counts, every unpaired file and every error, as `(path, reason)`."""

    n_labels: int = 0
    n_audio: int = 0
    n_paired: int = 0
    n_rows: int = 0
    unpaired_labels: list[str] = field(default_factory=list)
    unpaired_audio: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A multi-line human-readable summary that lists every unpaired file and every error."""
        lines = [
            f"AI Hub import: {self.n_labels} label JSON, {self.n_audio} audio files, "
            f"{self.n_paired} paired, {self.n_rows} manifest rows"
        ]
        sections = (
            ("unpaired label files (no audio)", self.unpaired_labels),
            ("unpaired audio files (no label JSON)", self.unpaired_audio),
            ("errors", [f"{path}: {reason}" for path, reason in self.errors]),
        )
        for title, items in sections:
            lines.append(f"{title}: {len(items)}")
            lines += [f"  {item}" for item in items]
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """Columns path, kind ('label', 'audio'; 'zip' for archives), reason: one row per fault."""
        rows = [
            (p, "label", "no audio file (none found, or taken by another JSON)")
            for p in self.unpaired_labels
        ]
        rows += [(p, "audio", "no label JSON") for p in self.unpaired_audio]
        rows += [(p, _kind(p), reason) for p, reason in self.errors]
        return pd.DataFrame(rows, columns=["path", "kind", "reason"])


@dataclass(frozen=True)
class _File:
    """A file found by the walk: absolute `path`, and `rel` (NFC) below the folder scanned."""

    path: Path
    rel: PurePosixPath

    @property
    def source(self) -> str:
        parent = self.rel.parent.as_posix()
        return "" if parent == "." else parent

    @property
    def tree(self) -> str:
        """The release tree: the path down to `Training`/`Validation`/..., else the top folder."""
        parts = self.rel.parts[:-1]
        for i, part in enumerate(parts):
            if _SPLIT_DIR.match(part):
                return "/".join(parts[: i + 1])
        return parts[0] if parts else ""


def import_aihub(
    root: str | Path, extract_dir: str | Path | None = None, taxonomy: Taxonomy | None = None
) -> tuple[pd.DataFrame, ImportReport]:
    """Import the AI Hub folder `root` (walked recursively, sorted) into a validated manifest.

    Zips under `root` are extracted into `extract_dir` (default `root/.extracted`), one subfolder
    per zip named after its path below `root`. Returns the manifest and the report.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    taxonomy = taxonomy or load_taxonomy()
    extract_dir = Path(extract_dir).resolve() if extract_dir else root / ".extracted"
    report = ImportReport()
    files = [_File(p, _rel(p, root)) for p in _walk(root, skip=extract_dir)]
    for target in _extract_zips(extract_dir, files, report):
        files += [_File(p, _rel(p, extract_dir)) for p in _walk(target)]
    jsons = [f for f in files if f.path.suffix.lower() == ".json"]
    audio = [f for f in files if f.path.suffix.lower() in AUDIO_EXTENSIONS]
    report.n_labels, report.n_audio = len(jsons), len(audio)
    rows = []
    for label, data, wav in _pair(_read_labels(jsons, report), audio, report):
        for k, ann in enumerate(data["annotations"]):
            try:
                rows.append(_row(ann, wav, taxonomy, data.get("synthesis")))
            except ValueError as e:  # one bad annotation costs only its own row
                report.errors.append((str(label.path), f"annotation {k}: {e}"))
    df = validate(pd.DataFrame(rows, columns=list(COLUMNS)), taxonomy, where=str(root))
    report.n_rows = len(df)
    log.info(report.summary().splitlines()[0])
    if report.unpaired_labels or report.unpaired_audio or report.errors:
        log.warning("AI Hub import %s: unpaired files or errors; see ImportReport.summary()", root)
    return df, report


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _rel(path: Path, base: Path) -> PurePosixPath:
    return PurePosixPath(_nfc(path.relative_to(base).as_posix()))


def _kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return (
        "audio" if suffix in AUDIO_EXTENSIONS else {".json": "label", ".zip": "zip"}.get(suffix, "")
    )


def _walk(base: Path, skip: Path | None = None) -> Iterator[Path]:
    """Every file below `base`, sorted, top-down, through symlinked folders (each real folder
    once); `skip` and macOS metadata left out."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and here / d != skip)
        yield from (here / f for f in sorted(filenames) if not f.startswith("._"))


def _extract_zips(extract_dir: Path, files: list[_File], report: ImportReport) -> list[Path]:
    """Extract every zip in `files`; returns the folders to scan (one per zip, where it exists)."""
    targets = []
    for z in (f for f in files if f.path.suffix.lower() == ".zip"):
        target = extract_dir / z.rel.with_suffix("")
        try:
            _extract_zip(z.path, target, report)
        except _ZIP_ERRORS as e:
            report.errors.append(
                (str(z.path), f"cannot extract (corrupt, unreadable or unwritable): {e}")
            )
        if target.is_dir():
            targets.append(target)
    return targets


def _extract_zip(zpath: Path, target: Path, report: ImportReport) -> None:
    """Extract one zip into `target`, skipping members already there with the same size."""
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = _member_name(info)
            dest = _safe_dest(target, name)
            if dest is None:
                report.errors.append((str(zpath), f"member {name!r} escapes the folder; skipped"))
                continue
            if dest.is_file() and dest.stat().st_size == info.file_size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            try:
                with zf.open(info) as src, part.open("wb") as out:
                    shutil.copyfileobj(src, out)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            os.replace(part, dest)
    log.info("extracted %s into %s", zpath, target)


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's real name: names without the UTF-8 flag are cp949 read as cp437."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        with contextlib.suppress(UnicodeError):
            name = name.encode("cp437").decode("cp949")
    return _nfc(name.replace("\\", "/"))


def _safe_dest(target: Path, name: str) -> Path | None:
    """Where member `name` goes below `target`, or None when it would escape (zip-slip)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        return None
    dest = target.joinpath(*parts)
    return dest if dest.resolve().is_relative_to(target.resolve()) else None


def _read_labels(jsons: list[_File], report: ImportReport) -> list[tuple[_File, dict[str, Any]]]:
    """Parsed label files; each unreadable or malformed one becomes an error."""
    labels = []
    for f in jsons:
        try:
            labels.append((f, _read_label(f.path)))
        except ValueError as e:
            report.errors.append((str(f.path), str(e)))
    return labels


def _read_label(path: Path) -> dict[str, Any]:
    """One AI Hub label JSON (utf-8-sig); ValueError names the fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not an AI Hub label: top level is {type(data).__name__}, not an object")
    anns = data.get("annotations")
    if not (isinstance(anns, list) and anns and all(isinstance(a, dict) for a in anns)):
        raise ValueError("not an AI Hub label: 'annotations' is not a non-empty list of objects")
    if not isinstance(data.get("audio") or {}, dict):
        raise ValueError("not an AI Hub label: 'audio' is not an object")
    return data


def _stem(name: str) -> str:
    """`name` without an audio extension (names such as `1.강제추행_3` keep their dots)."""
    p = PurePosixPath(name)
    return p.stem if p.suffix.lower() in AUDIO_EXTENSIONS else name


def _keys(label: _File, data: dict[str, Any]) -> list[list[tuple[str, str]]]:
    """Lookup keys `(index, key)` per pairing priority level, most trusted first."""
    file_name = _nfc(re.split(r"[\\/]", str((data.get("audio") or {}).get("fileName") or ""))[-1])
    ids = [str(a.get("audio_id") or "").strip() for a in data["annotations"]]
    ids = list(dict.fromkeys(_nfc(i) for i in ids if i))
    bases = [b for b in dict.fromkeys([label.rel.stem, _stem(file_name), *map(_stem, ids)]) if b]
    variants = []
    for b in bases:
        variants += [("stem", b + s) for s in VARIANT_SUFFIXES]
        variants += [("stem", b[: -len(s)]) for s in VARIANT_SUFFIXES if b.endswith(s) and b != s]
    return [
        [("name", file_name)] if file_name else [],
        [("stem", _stem(file_name))] if file_name else [],
        [(index, i) for i in ids for index in ("name", "stem")] + [("stem", _stem(i)) for i in ids],
        [("stem", label.rel.stem)],
        variants,
    ]


def _pair(
    labels: list[tuple[_File, dict[str, Any]]], audio: list[_File], report: ImportReport
) -> list[tuple[_File, dict[str, Any], _File]]:
    """Pair labels with audio, one priority level at a time for all labels; report the rest."""
    index: dict[str, dict[str, list[int]]] = {"name": defaultdict(list), "stem": defaultdict(list)}
    for i, a in enumerate(audio):
        index["name"][a.rel.name].append(i)
        index["stem"][a.rel.stem].append(i)
    keys = [_keys(f, d) for f, d in labels]
    found: dict[int, int] = {}  # label index -> audio index
    claimed: set[int] = set()
    failed: set[int] = set()
    for level in range(_N_LEVELS):
        for j, (label, _) in enumerate(labels):
            if j in found or j in failed:
                continue
            for idx, key in keys[j][level]:
                cands = [i for i in index[idx].get(key, ()) if i not in claimed]
                if not cands:
                    continue
                pick = _choose(cands, audio, label)
                if pick is None:
                    shown = ", ".join(str(audio[i].path) for i in cands)
                    report.errors.append((str(label.path), f"ambiguous audio {key!r}: {shown}"))
                    failed.add(j)
                else:
                    found[j] = pick
                    claimed.add(pick)
                break
    report.n_paired = len(found)
    done = failed | found.keys()
    report.unpaired_labels = [str(f.path) for j, (f, _) in enumerate(labels) if j not in done]
    report.unpaired_audio = [str(a.path) for i, a in enumerate(audio) if i not in claimed]
    return [(labels[j][0], labels[j][1], audio[found[j]]) for j in sorted(found)]


def _choose(cands: list[int], audio: list[_File], label: _File) -> int | None:
    """The one candidate, else the one in the label's release tree, else None (ambiguous)."""
    if len(cands) == 1:
        return cands[0]
    same = [i for i in cands if audio[i].tree == label.tree]
    return same[0] if len(same) == 1 else None


def _row(
    ann: dict[str, Any], wav: _File, taxonomy: Taxonomy, synthesis: Any = None
) -> dict[str, Any]:
    """The manifest row of one annotation; ValueError names the fault.

    `synthesis` is the demo generator's record of the clip (absent from AI Hub's own JSON): it
    gives the background class, whether the clip is identifiable and what it was made from.
    """
    categories = ann.get("categories")
    category = categories.get("category_02") if isinstance(categories, dict) else None
    if category is None or not str(category).strip():
        raise ValueError("no categories.category_02")
    try:
        key = taxonomy.key(str(category).strip())
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    if key == taxonomy.classes[0].key:
        raise ValueError(f"category_02 {category!r} names '{key}', which is not a clip label")
    start, end = segment(ann.get("area"))
    note, speaker = ann.get("note"), ann.get("speaker")
    return {
        "path": str(wav.path),
        "label": key,
        "transcript": "" if note is None else str(note).strip(),
        "event_start": start,
        "event_end": end,
        "speaker": "" if speaker is None else str(speaker).strip(),
        "split": "",
        "source": wav.source,
        **provenance(categories, synthesis, taxonomy),
    }
