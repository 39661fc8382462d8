"""The label taxonomy: 19 situations plus `none`, loaded from a YAML file into one frozen object."""

from __future__ import annotations

import numbers
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_LABELS = CONFIG_DIR / "labels.yaml"
DEFAULT_KEYWORDS = CONFIG_DIR / "keywords.yaml"  # the keyword judge's lexicon
NONE_KEY = "none"
IGNORE_ID = -100  # a timestep (or token) target that losses and accuracies skip: nothing is known


def normalize_name(name: str) -> str:
    """A spelling-insensitive form of a label: NFC, lower case, no spaces, `_`/`-`/`.` dropped."""
    name = unicodedata.normalize("NFC", str(name)).strip().lower()
    return re.sub(r"[\s_\-.·]+", "", name)


@dataclass(frozen=True)
class LabelClass:
    id: int
    key: str  # stable ASCII identifier, e.g. "fire"
    ko: str  # Korean name as AI Hub spells it, e.g. "화재"
    en: str
    emergency: bool
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    """Classes indexed by id; index 0 is `none` and exists only for timestep labels.

    `n_classes` counts the situations (19 by default); `n_outputs` adds `none` (20), the width of
    a timestep classifier.
    """

    classes: tuple[LabelClass, ...]
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"{self.source}: class ids must run 0..K in order, got {ids}")
        if self.classes[0].key != NONE_KEY:
            raise ValueError(f"{self.source}: class 0 must be '{NONE_KEY}'")
        seen: dict[str, int] = {}
        for c in self.classes:
            for name in (c.key, c.ko, c.en, *c.aliases):
                n = normalize_name(name)
                if seen.get(n, c.id) != c.id:
                    raise ValueError(
                        f"{self.source}: name {name!r} names classes {seen[n]} and {c.id}"
                    )
                seen[n] = c.id

    @classmethod
    def from_yaml(cls, path: str | Path = DEFAULT_LABELS) -> Taxonomy:
        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        classes = tuple(
            LabelClass(
                id=int(c["id"]),
                key=str(c["key"]),
                ko=str(c["ko"]),
                en=str(c["en"]),
                emergency=bool(c["emergency"]),
                aliases=tuple(str(a) for a in c.get("aliases", ())),
            )
            for c in raw["classes"]
        )
        return cls(classes=classes, source=str(path))

    @property
    def n_classes(self) -> int:
        return len(self.classes) - 1

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.classes)

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return {
            normalize_name(name): c.id
            for c in self.classes
            for name in (c.key, c.ko, c.en, *c.aliases)
        }

    @property
    def emergency_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.emergency)

    def is_emergency(self, label: str | int) -> bool:
        return self.classes[self.id(label)].emergency

    def id(self, label: str | int) -> int:
        """Class id from a key, an id (int or digits), a Korean or English name, or an alias."""
        # numbers.Integral: numpy ints too (`taxonomy.key(logits.argmax())`)
        if isinstance(label, numbers.Integral) or (
            isinstance(label, str) and label.strip().isdigit()
        ):
            i = int(label)
            if 0 <= i < len(self.classes):
                return i
        else:
            i = self._by_name.get(normalize_name(label))
            if i is not None:
                return i
        valid = ", ".join(f"{c.id}={c.key}({c.ko})" for c in self.classes[1:])
        raise KeyError(f"unknown label {label!r}; valid labels: {valid}")

    def key(self, label: str | int) -> str:
        return self.classes[self.id(label)].key

    def __getitem__(self, label: str | int) -> LabelClass:
        return self.classes[self.id(label)]


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """The taxonomy in `path`, or the default 19-class one in configs/labels.yaml."""
    return Taxonomy.from_yaml(path or DEFAULT_LABELS)
