"""The benchmark scripts' report helpers (the benchmarks themselves run outside the tests)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed
import speed_steps


def test_sections_are_replaced_in_place_and_the_rest_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    speed.write_section(path, "speed", "table 1")
    path.write_text(path.read_text() + "\nhand-written notes\n")
    speed.write_section(path, "steps", "steps 1")
    speed.write_section(path, "speed", "table 2")
    text = path.read_text()
    assert "table 1" not in text and text.count("table 2") == 1 and "steps 1" in text
    assert text.index("table 2") < text.index("hand-written notes") < text.index("steps 1")


def test_table_ratios_against_openai_whisper():
    results = {
        "ensemble": {"wall_s": 50.0, "peak_mb": 900.0},
        "openai-whisper": {"wall_s": 200.0, "peak_mb": 800.0},
    }
    rows = speed.table(results, audio_s=1000.0).splitlines()
    assert rows[2].split("|")[1:5] == [" ensemble ", " 50.0 ", " 20.0 ", " 0.25 "]
    assert rows[3].split("|")[4] == " 1.00 "


def test_largest_change_in_points_skips_missing_metrics():
    assert speed_steps.largest_change([0.5, None, 0.81], [0.52, 0.3, 0.8]) == pytest.approx(2.0)
    assert speed_steps.largest_change([None], [0.1]) == 0
