"""Evaluation results as a rich table (ours beside the paper's) and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from laser_plugin.eval.protocol import PAPER_ABLATION_SINTEL_ABS_REL, paper_rows

# Column order, header, and whether lower is better (for the arrow in the header).
COLUMNS: dict[str, tuple[str, bool]] = {
    "abs_rel": ("AbsRel", True),
    "delta_1_25": ("δ<1.25", False),
    "ate": ("ATE", True),
    "rpe_trans": ("RPE t", True),
    "rpe_rot_deg": ("RPE r°", True),
    "acc": ("Acc", True),
    "comp": ("Comp", True),
    "nc": ("NC", False),
    "fps": ("FPS", False),
    "frames": ("frames", False),
}


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and value > 100):
        return f"{int(value)}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _columns(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in r}
    return [k for k in COLUMNS if k in present]


def build_table(result: dict):
    """A ``rich.table.Table`` for ``result`` (the JSON document :func:`make_result` builds)."""
    from rich.table import Table

    variants = result["variants"]
    dataset = result["dataset"]
    sweep = len(variants) > 1
    title = f"laser eval · {dataset} · model {result['model']}"
    if sweep:
        body = {name: v["mean"] for name, v in variants.items()}
        paper = {}
        if dataset == "sintel":
            paper = {
                f"{name} (paper, π³)": {"abs_rel": v}
                for name, v in PAPER_ABLATION_SINTEL_ABS_REL.items()
            }
    else:
        (only,) = variants.values()
        body = {**only["sequences"], "mean": only["mean"]}
        paper = result.get("paper", {})
    cols = _columns(list(body.values()) + list(paper.values()))
    table = Table(title=title, show_lines=False)
    table.add_column("variant" if sweep else "sequence", style="bold")
    for c in cols:
        header, lower = COLUMNS[c]
        arrow = "" if c in ("frames", "fps") else (" ↓" if lower else " ↑")
        table.add_column(header + arrow, justify="right")
    for name, row in body.items():
        style = "bold cyan" if name == "mean" else None
        table.add_row(name, *(_fmt(row.get(c)) for c in cols), style=style)
    if paper:
        table.add_section()
        for name, row in paper.items():
            table.add_row(name, *(_fmt(row.get(c)) for c in cols), style="dim")
    return table


def make_result(
    dataset: str, model: str, settings: dict, variants: dict, layout: str | None
) -> dict:
    """The JSON document: settings, per-variant per-sequence and mean scores, paper figures."""
    return {
        "dataset": dataset,
        "model": model,
        "settings": settings,
        "variants": variants,
        "paper": paper_rows(dataset, layout),
    }


def _finite(obj):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(result: dict) -> str:
    return json.dumps(_finite(result), indent=2, ensure_ascii=False, default=str)


def write_json(result: dict, path: Path) -> None:
    from laser_plugin.io.atomic import write_bytes_atomic

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (to_json(result) + "\n").encode())
