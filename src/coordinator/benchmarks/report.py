"""Writes a run's results: `bench/results/<date>.json`, a Markdown report and PNG plots beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.benchmarks.harness import Result


def _plot(result: Result, folder: Path, stamp: str) -> str | None:
    if not result.series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, values in result.series.items():
        if label.endswith("(ms)"):
            ax.hist(values, bins=50, alpha=0.6, label=label)
            ax.set_xlabel("milliseconds")
            ax.set_ylabel("count")
        else:
            ax.plot(range(len(values)), values, label=label)
            ax.set_xlabel("second")
    ax.set_title(result.name)
    ax.legend(fontsize="small")
    fig.tight_layout()
    name = f"{stamp}-{result.name}.png"
    fig.savefig(folder / name, dpi=90)
    plt.close(fig)
    return name


def _profile_lines(process: str, summary: dict[str, Any]) -> list[str]:
    """Where one coordinator process spent its CPU (py-spy samples), as Markdown."""
    lines = [f"CPU profile of the coordinator (`{process}`, {summary.get('samples', 0)} samples):", ""]
    for title, key in (
        ("by library (leaf frame)", "by_category_pct"),
        ("coordinator functions on the stack", "coordinator_functions_pct"),
    ):
        rows = summary.get(key) or {}
        if rows:
            lines += [f"| {title} | % of samples |", "|---|---|"]
            lines += [f"| `{name}` | {pct} |" for name, pct in rows.items()]
            lines.append("")
    return lines


def write_report(
    results: list[Result], machine: dict[str, Any], folder: Path, *, quick: bool
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d") + ("-quick" if quick else "")
    json_path = folder / f"{stamp}.json"
    md_path = folder / f"{stamp}.md"
    payload = {
        "date": datetime.now(UTC).isoformat(),
        "quick": quick,
        "machine": machine,
        "results": [{k: v for k, v in asdict(r).items() if k != "series"} for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        f"# Benchmark report {stamp}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "| scenario | target | met | key metrics | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        metrics = "; ".join(f"{k} {v}" for k, v in r.metrics.items())
        lines.append(f"| {r.name} | {r.target or 'baseline'} | {met} | {metrics} | {r.seconds} |")
    lines.append("")
    for r in results:
        lines += [f"## {r.name}", "", f"Parameters: `{json.dumps(r.params, default=str)}`", ""]
        if r.notes:
            lines += [r.notes, ""]
        if (plot := _plot(r, folder, stamp)) is not None:
            lines += [f"![{r.name}]({plot})", ""]
        for process, summary in r.profile.items():
            lines += _profile_lines(process, summary)
    md_path.write_text("\n".join(lines))
    return json_path, md_path
