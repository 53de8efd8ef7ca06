"""The benchmark's figure: CPU per step against the floor, and open-loop p99 per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt


def plot(result: dict[str, Any], path: Path) -> None:
    """Write a PNG: × floor by step (log scale) per database, and the open-loop p50/p99."""
    runs = result["runs"]
    figure, (cost, latency) = plt.subplots(1, 2, figsize=(13, 5))
    steps = [*runs[0]["steps"], "whole recovery"]
    width = 0.8 / len(runs)
    for n, run in enumerate(runs):
        values = [run["steps"][s]["x_floor"] for s in steps[:-1]]
        values.append(run["whole_recovery"]["x_floor"])
        cost.bar([i + n * width for i in range(len(steps))], values, width, label=run["database"])
    cost.axhline(2.5, color="tab:green", linestyle="--", linewidth=1, label="menu target 2.5 ×")
    cost.axhline(100, color="red", linestyle="--", linewidth=1, label="recovery target 100 ×")
    cost.set_yscale("log")
    cost.set_ylabel("server CPU per webhook, × floor (log)")
    cost.set_xticks(range(len(steps)), steps, rotation=30, ha="right")
    cost.legend(fontsize=8)
    cost.set_title(f"floor {runs[0]['floor']['cpu_ms']:.3f} ms CPU per webhook")

    loop = runs[0].get("open_loop")
    if loop:
        head = loop["headline"]
        names = list(head["steps"])
        for offset, key in enumerate(("p50_ms", "p99_ms")):
            latency.bar(
                [i + (offset - 0.5) * 0.4 for i in range(len(names))],
                [max(head["steps"][s][key] or 0.01, 0.01) for s in names],
                0.4,
                label=key.removesuffix("_ms"),
            )
        latency.axhline(25, color="red", linestyle="--", linewidth=1, label="§9 p99 25 ms")
        latency.set_yscale("log")
        latency.set_ylabel("latency from the scheduled time, ms (log)")
        latency.set_xticks(range(len(names)), names, rotation=30, ha="right")
        latency.legend(fontsize=8)
        latency.set_title(
            f"open loop, {head['concurrent_calls']} concurrent calls, "
            f"pauses × {head['pause_scale']}"
        )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
