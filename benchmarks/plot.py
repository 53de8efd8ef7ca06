"""The benchmark's figure: per-step latency percentiles and throughput against the floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def plot(result: dict[str, Any], path: Path) -> None:
    """Write a PNG: latency by step (log scale) and webhooks/s of floor, menu and recovery."""
    rows: list[tuple[str, dict[str, float]]] = []
    if result["floor"]["latency"]:
        rows.append(("static (floor)", result["floor"]["latency"]))
    rows += [(f"menu: {step}", row) for step, row in result["menu"]["steps"].items()]
    rows += [(f"recovery: {step}", row) for step, row in result["real"]["steps"].items()]

    figure, (latency, throughput) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    width = 0.27
    for offset, key in enumerate(PERCENTILES):
        latency.bar(
            [i + (offset - 1) * width for i in range(len(rows))],
            [max(row[key], 0.01) for _, row in rows],
            width,
            label=key.removesuffix("_ms"),
        )
    latency.axhline(25, color="red", linestyle="--", linewidth=1, label="§9 p99 target 25 ms")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.set_xticks(range(len(rows)), [name for name, _ in rows], rotation=45, ha="right")
    latency.legend(fontsize=8)
    options = result["options"]
    latency.set_title(
        f"{options['concurrency']} concurrent calls, {options['workers']} worker(s), "
        f"{options['database']}, {options['cpus']} CPUs"
    )

    rates = {
        "static": result["floor"]["webhooks_per_s"],
        "menu": result["menu"]["webhooks_per_s"],
        "recovery": result["real"]["webhooks_per_s"],
    }
    throughput.bar(list(rates), list(rates.values()), color=["grey", "tab:blue", "tab:orange"])
    throughput.axhline(
        rates["static"] * 0.5, color="red", linestyle="--", linewidth=1, label="§9: 0.5 × floor"
    )
    throughput.set_ylabel("webhooks/s")
    throughput.legend(fontsize=8)
    summary = result["summary"]
    throughput.set_title(f"ratio {summary['ratio_vs_floor']} (menu)")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
