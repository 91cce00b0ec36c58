"""Writes a run's results: `bench/results/<date>.json`, a Markdown report and PNG plots beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.benchmarks.harness import Result


def load_records(result: Result) -> dict[str, dict[str, Any]]:
    """A result's load record(s) by phase name ("" for a single load)."""
    if result.load is None:
        return {}
    if "per_second" in result.load:
        return {"": result.load}
    return dict(result.load)


def _plot(result: Result, folder: Path, stamp: str) -> str | None:
    loads = {name: r for name, r in load_records(result).items() if r.get("per_second")}
    histograms = {k: v for k, v in result.series.items() if k.endswith("(ms)")}
    lines = {k: v for k, v in result.series.items() if not k.endswith("(ms)")}
    if not (loads or result.series):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(loads or lines)) + int(bool(histograms))
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3.5 * panels), squeeze=False)
    index = 0
    if loads or lines:
        # Offered and completed (and what lies between) per second on one chart: a starved or stalled run
        # shows as offered load with nothing coming out.
        ax = axes[index][0]
        index += 1
        for phase, record in loads.items():
            for series, values in record["per_second"].items():
                style = "--" if series == "offered" else "-"
                label = f"{phase} {series}".strip() + " per second"
                ax.plot(range(len(values)), values, style, label=label, marker=".")
        for label, values in lines.items():
            ax.plot(range(len(values)), values, label=label)
        ax.set_xlabel("second of the load")
        ax.set_ylabel("per second")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    if histograms:
        ax = axes[index][0]
        for label, values in histograms.items():
            ax.hist(values, bins=50, alpha=0.6, label=label)
        ax.set_xlabel("milliseconds")
        ax.set_ylabel("count")
        ax.legend(fontsize="small")
    title = result.name if result.valid is not False else f"{result.name} — INVALID"
    axes[0][0].set_title(title)
    fig.tight_layout()
    name = f"{stamp}-{result.name}.png"
    fig.savefig(folder / name, dpi=90)
    plt.close(fig)
    return name


def validity(result: Result) -> str:
    """The report's validity cell: yes, **no** with the reasons, or — for a baseline."""
    if result.valid is None:
        return "—"
    if result.valid:
        return "yes"
    return "**no**: " + "; ".join(result.invalid_reasons)


def _load_lines(result: Result) -> list[str]:
    lines = []
    for phase, record in load_records(result).items():
        refused = record.get("refused") or {}
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"
        label = f"Load ({phase})" if phase else "Load"
        lines.append(
            f"{label}: offered {record.get('offered', 0)}, accepted {record.get('accepted', 0)}, "
            f"assigned {record.get('assigned', 0)}, completed {record.get('completed', 0)} in "
            f"{record.get('window_s')} s; refused or unanswered: {refusals}."
        )
    if lines:
        lines.append("")
    return lines


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
        "A scenario is valid when its load was real: every request answered and accepted, and progress in"
        " every second of the load. An invalid run yields no number (its metric is reported as"
        " `<metric>_unvalidated`) and neither meets nor misses its target.",
        "",
        "| scenario | target | valid | met | key metrics | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.valid is False and "error" not in r.metrics:
            met = "invalid"
        else:
            met = "—" if r.met is None else ("yes" if r.met else "**no**")
        metrics = "; ".join(f"{k} {v}" for k, v in r.metrics.items())
        lines.append(
            f"| {r.name} | {r.target or 'baseline'} | {validity(r)} | {met} | {metrics} | {r.seconds} |"
        )
    lines.append("")
    for r in results:
        lines += [f"## {r.name}", "", f"Parameters: `{json.dumps(r.params, default=str)}`", ""]
        lines += [f"Valid: {validity(r)}", ""] if r.valid is not None else []
        lines += _load_lines(r)
        if r.notes:
            lines += [r.notes, ""]
        if (plot := _plot(r, folder, stamp)) is not None:
            lines += [f"![{r.name}]({plot})", ""]
        for process, summary in r.profile.items():
            lines += _profile_lines(process, summary)
    md_path.write_text("\n".join(lines))
    return json_path, md_path
