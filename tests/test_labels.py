"""ensemble.core.labels: the default 19-class taxonomy, lookups by any spelling, custom YAMLs."""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import yaml

from ensemble.core.labels import (
    DEFAULT_LABELS,
    LabelClass,
    Taxonomy,
    load_taxonomy,
    normalize_name,
)


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return load_taxonomy()


def test_default_file_exists():
    assert DEFAULT_LABELS.is_file()
    assert DEFAULT_LABELS.name == "labels.yaml"


def test_default_sizes(tax):
    assert tax.n_classes == 19
    assert tax.n_outputs == 20
    assert len(tax.keys) == 20
    assert tax.keys[0] == "none"
    assert len(set(tax.keys)) == 20
    assert [c.id for c in tax.classes] == list(range(20))


def test_default_emergency_split(tax):
    assert tax.emergency_ids == tuple(range(1, 15))
    for i in range(1, 15):
        assert tax.is_emergency(i), i
    for i in range(15, 20):
        assert not tax.is_emergency(i), i
    assert not tax.is_emergency("none")
    assert tax.is_emergency("fire")
    assert not tax.is_emergency("vacuum_cleaner")


def test_load_taxonomy_default_equals_explicit_path(tax):
    assert load_taxonomy(DEFAULT_LABELS) == tax
    assert Taxonomy.from_yaml() == tax


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("fire", "fire"),
        (8, "fire"),
        ("8", "fire"),
        (" 8 ", "fire"),
        (np.int64(8), "fire"),
        ("화재", "fire"),
        ("Fire", "fire"),
        ("sexual assault", "sexual_assault"),
        ("Sexual_Assault", "sexual_assault"),
        ("강제추행", "sexual_assault"),
        ("강제추행(성범죄)", "sexual_assault"),
        ("태풍/강풍", "typhoon"),
        ("태풍-강풍", "typhoon"),
        ("typhoon/strong wind", "typhoon"),
        ("가전소음_청소기", "vacuum_cleaner"),
        ("가전소음 청소기", "vacuum_cleaner"),
        ("가전소음_세탁기/건조기", "washer_dryer"),
        ("도움 요청", "help_request"),
        ("도움요청", "help_request"),
        (0, "none"),
        ("없음", "none"),
        (19, "other_appliance"),
    ],
)
def test_lookup(tax, label, key):
    assert tax.key(label) == key
    assert tax[label].key == key
    assert tax.classes[tax.id(label)].key == key


def test_lookup_returns_ids_and_classes(tax):
    assert tax.id("fire") == 8
    assert tax.id("응급의료") == 9
    cls = tax["낙상"]
    assert isinstance(cls, LabelClass)
    assert (cls.id, cls.key, cls.ko, cls.en, cls.emergency) == (12, "fall", "낙상", "fall", True)


@pytest.mark.parametrize("text", ["화재", "가전소음 청소기", "강제추행(성범죄)", "태풍-강풍"])
def test_nfd_korean_input(tax, text):
    nfd = unicodedata.normalize("NFD", text)
    assert nfd != text  # decomposed jamo: a different string that must still resolve
    assert tax.key(nfd) == tax.key(text)


def test_normalize_name():
    assert normalize_name(" Sexual_Assault ") == "sexualassault"
    assert normalize_name("가전소음 - 청소기") == "가전소음청소기"
    assert normalize_name(unicodedata.normalize("NFD", "화재")) == "화재"


@pytest.mark.parametrize("label", ["nope", "화제", 20, -1, "20", "", "fire alarm"])
def test_unknown_label_lists_valid_labels(tax, label):
    with pytest.raises(KeyError) as info:
        tax.id(label)
    message = info.value.args[0]
    assert "unknown label" in message
    assert repr(label) in message
    assert "8=fire(화재)" in message
    assert "19=other_appliance" in message
    assert "0=none" not in message  # none is no clip label


def test_taxonomy_is_frozen(tax):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tax.classes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tax.classes[8].key = "flames"  # type: ignore[misc]
    assert tax.key(8) == "fire"


# ---------------------------------------------------------------------------------------------
# custom taxonomies

KO16 = ["강제추행", "강도범죄", "절도범죄", "폭력범죄", "갇힘", "전기사고", "가스사고", "화재"]
KO16 += ["응급의료", "태풍/강풍", "지진", "낙상", "붕괴사고", "도움요청", "실내", "실외"]


def _sixteen() -> list[dict]:
    classes = [{"id": 0, "key": "none", "ko": "없음", "en": "none", "emergency": False}]
    for i, ko in enumerate(KO16, start=1):
        classes.append(
            {"id": i, "key": f"c{i:02d}", "ko": ko, "en": f"class {i}", "emergency": i <= 14}
        )
    classes[8]["aliases"] = ["불", "fire"]
    return classes


def _write(path: Path, classes: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"classes": classes}, allow_unicode=True), encoding="utf-8")
    return path


def test_custom_16_class_taxonomy(tmp_path):
    path = _write(tmp_path / "labels16.yaml", _sixteen())
    tax = load_taxonomy(path)
    assert tax.source == str(path)
    assert tax.n_classes == 16
    assert tax.n_outputs == 17
    assert tax.emergency_ids == tuple(range(1, 15))
    assert tax.key("화재") == "c08"
    assert tax.key("불") == "c08"
    assert tax.key("FIRE") == "c08"
    assert tax.key(16) == "c16"
    assert tax.key("16") == "c16"
    assert tax.key(unicodedata.normalize("NFD", "실외")) == "c16"
    assert not tax.is_emergency("실내")
    with pytest.raises(KeyError, match="unknown label 17"):
        tax.id(17)
    with pytest.raises(KeyError, match="가전소음"):
        tax.id("가전소음_청소기")  # a default-taxonomy alias, absent here
    with pytest.raises(dataclasses.FrozenInstanceError):
        tax.source = "elsewhere"  # type: ignore[misc]


def test_custom_taxonomy_equality_ignores_source(tmp_path):
    a = load_taxonomy(_write(tmp_path / "a.yaml", _sixteen()))
    b = load_taxonomy(_write(tmp_path / "b.yaml", _sixteen()))
    assert a == b
    assert a != load_taxonomy()


def test_gap_in_ids_raises(tmp_path):
    classes = _sixteen()
    del classes[5]  # ids 0..4, 6..16
    with pytest.raises(ValueError, match="ids"):
        load_taxonomy(_write(tmp_path / "gap.yaml", classes))


def test_ids_out_of_order_raise(tmp_path):
    classes = _sixteen()
    classes[2], classes[3] = classes[3], classes[2]
    with pytest.raises(ValueError, match="ids"):
        load_taxonomy(_write(tmp_path / "order.yaml", classes))


def test_ids_not_starting_at_zero_raise(tmp_path):
    classes = _sixteen()[1:]
    with pytest.raises(ValueError, match="ids"):
        load_taxonomy(_write(tmp_path / "no_none.yaml", classes))


def test_class_zero_must_be_none(tmp_path):
    classes = _sixteen()
    classes[0]["key"] = "silence"
    with pytest.raises(ValueError, match="none"):
        load_taxonomy(_write(tmp_path / "zero.yaml", classes))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ko", "화재"),
        ("en", "class 8"),
        ("key", "c08"),
        ("aliases", ["불"]),
        ("aliases", ["F-I_RE"]),
    ],
)
def test_duplicate_name_across_classes_raises(tmp_path, field, value):
    classes = _sixteen()
    classes[3][field] = value  # class 3 takes a name class 8 already has
    path = _write(tmp_path / "dup.yaml", classes)
    with pytest.raises(ValueError, match="names classes") as info:
        load_taxonomy(path)
    assert str(path) in str(info.value)
    assert "3" in str(info.value) and "8" in str(info.value)


def test_same_name_twice_in_one_class_is_allowed(tmp_path):
    classes = _sixteen()
    classes[8]["aliases"] = ["화재", "c08", "class 8"]
    tax = load_taxonomy(_write(tmp_path / "self.yaml", classes))
    assert tax.key("화재") == "c08"
