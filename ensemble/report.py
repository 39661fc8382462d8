"""The evaluation report as text: the Markdown table of every member and the ensemble, the table of
accuracies and AUC with their bootstrap 95 % intervals, and `report.md`."""

from __future__ import annotations

import math
from pathlib import Path

ENSEMBLE = "ensemble"
COLUMNS = (
    "abstain",
    "acc19",
    "macro_f1",
    "binary_acc",
    "precision",
    "recall",
    "f1",
    "auc",
    "pauc",
    "timestep_acc",
    "event_timestep_acc",
    "cer",
    "cer_nospace",
)
CI_COLUMNS = ("acc19", "acc19_identifiable", "binary_acc", "auc")  # shown with 95 % intervals
N_LISTED = 10  # unmatched predictions / clips without a prediction named in the report


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def report_table(metrics: dict) -> str:
    """The Markdown table: one row per member, then the ensemble; NaN or absent shown as "–"."""
    rows = [*metrics["members"].items(), (ENSEMBLE, metrics[ENSEMBLE])]
    lines = [
        "| model | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
        *(f"| {n} | " + " | ".join(_fmt(m.get(c)) for c in COLUMNS) + " |" for n, m in rows),
    ]
    return "\n".join(lines)


def with_ci(m: dict, c: str) -> str:
    ci = m.get(f"{c}_ci")
    return _fmt(m.get(c)) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def interval_table(metrics: dict) -> str:
    """Accuracies and AUC with their bootstrap 95 % intervals, one row per model."""
    rows = [*metrics["members"].items(), (ENSEMBLE, metrics[ENSEMBLE])]
    n_sure = metrics[ENSEMBLE].get("n_identifiable", 0)
    names = {"acc19_identifiable": f"acc19 on identifiable ({n_sure})"}
    return "\n".join(
        [
            "| model | " + " | ".join(names.get(c, c) for c in CI_COLUMNS) + " |",
            "|---|" + "---|" * len(CI_COLUMNS),
            *(f"| {n} | " + " | ".join(with_ci(m, c) for c in CI_COLUMNS) + " |" for n, m in rows),
        ]
    )


def report_text(metrics: dict, pred_path: Path, manifest: str | Path) -> str:
    lines = [
        f"{metrics['n_files']} files evaluated ({pred_path} against {manifest}); "
        f"{metrics['n_errors']} errors, {metrics['n_unmatched']} unmatched predictions, "
        f"{metrics['n_missing']} manifest clips without a prediction",
        "",
        report_table(metrics),
        "",
        "Bootstrap 95 % intervals (files resampled 1000 times):",
        "",
        interval_table(metrics),
        "",
        *(
            f"{name}: {m['speechless_votes']} emergency vote(s) on {m['n_speechless']} clips "
            "without speech"
            for name, m in metrics["members"].items()
            if "speechless_votes" in m
        ),
        "",
        "Plots: " + (", ".join(metrics["plots"]) or "none"),
    ]
    for key, what in (("unmatched", "Unmatched predictions"), ("missing", "Clips without one")):
        n = metrics[f"n_{key}"]
        if n:
            more = f" (first {N_LISTED} of {n})" if n > N_LISTED else ""
            lines += ["", f"{what}{more}:", *(f"- {p}" for p in metrics[key])]
    return "\n".join(lines) + "\n"
