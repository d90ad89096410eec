"""What the commands print: JSON and tables on stdout, progress bars on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain text table; `align` has one 'l' or 'r' per column (numbers right by default)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))
    lines = []
    for n, row in enumerate(cells):
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def progress_bar(total: int, description: str, enabled: bool):
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None if enabled else True, dynamic_ncols=True)


def process_age() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): what start-up cost before our code ran."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
