"""Formatting helpers shared by the report's sections: numbers, Markdown tables, figure files, colours."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot

import matplotlib.pyplot as plt

DPI = 100
OURS, BASE, OTHER, WARN = "#1f77b4", "#7f7f7f", "#2ca02c", "#d62728"


def _x(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}×"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _kib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1024:,.1f} KiB"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _save(fig, figures: Path, name: str) -> str:
    fig.tight_layout()
    path = figures / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return f"![{name}](figures/{path.name})\n"


def _met(check: dict) -> str:
    return "**yes**" if check["met"] else "**NO**"


def _run_line(result: dict) -> str:
    load = result.get("load_average_start")
    load_text = f"; load average {load[0]:.1f} at start, {result['load_average_end'][0]:.1f} at end" if load else ""
    return (
        f"Run {result.get('created_utc', '?')} in {result.get('elapsed_seconds', 0):,.0f} s{load_text}. "
        f"Command: `{result.get('command', '?')}`. Parameters: `{json.dumps(result.get('params', {}))}`.\n"
    )
