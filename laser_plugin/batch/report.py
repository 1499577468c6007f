"""The table printed at the end of a batch (rich), and the one-line totals under it."""

from __future__ import annotations

from typing import Any

_STYLE = {"complete": "green", "skipped": "cyan", "failed": "bold red", "cancelled": "yellow"}


def summary_table(records: list[dict[str, Any]], seconds: float, max_rows: int = 40):
    """A rich Table: one row per video (failed ones first, then at most ``max_rows`` in all),
    and a totals row. The full list is in ``batch_summary.json``."""
    from rich.table import Table

    table = Table(title="laser batch", show_footer=False)
    for col, justify in (
        ("video", "left"),
        ("status", "left"),
        ("attempts", "right"),
        ("frames", "right"),
        ("windows", "right"),
        ("seconds", "right"),
        ("frames/s", "right"),
        ("error / output", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")
    order = {"failed": 0, "cancelled": 1, "complete": 2, "skipped": 3}
    shown = sorted(records, key=lambda r: order.get(r["status"], 4))[:max_rows]
    for r in shown:
        secs = r.get("seconds")
        fps = r.get("fps")
        table.add_row(
            r["name"],
            f"[{_STYLE.get(r['status'], '')}]{r['status']}",
            str(r.get("attempts", 0)),
            str(r.get("frames") or 0),
            str(r.get("windows") or "-"),
            f"{secs:.1f}" if isinstance(secs, (int, float)) else "-",
            f"{fps:.1f}" if isinstance(fps, (int, float)) else "-",
            r.get("error") if r["status"] in ("failed", "cancelled") else r.get("output", ""),
        )
    if len(records) > len(shown):
        table.add_row(
            f"... {len(records) - len(shown)} more",
            "",
            "",
            "",
            "",
            "",
            "",
            "see batch_summary.json",
        )
    counts = {
        s: sum(r["status"] == s for r in records)
        for s in ("complete", "skipped", "failed", "cancelled")
    }
    frames = sum(int(r.get("frames") or 0) for r in records if r["status"] == "complete")
    table.add_section()
    table.add_row(
        f"{len(records)} videos",
        ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        str(sum(int(r.get("attempts") or 0) for r in records)),
        str(frames),
        "",
        f"{seconds:.1f}",
        f"{frames / max(seconds, 1e-9):.1f}",
        "",
    )
    return table
