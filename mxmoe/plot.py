"""Plots of plans and results (matplotlib, Agg backend unless one is already selected).

    fig = mxmoe.plot_plan(qmodel.mxmoe_plan)                    # layers x (experts x gate/up/down), colour = bits
    fig = mxmoe.plot_pareto(plan, layer=0)                      # one layer's (loss, time) frontier + the choice
    fig = mxmoe.plot_pareto(rows)                               # measured PPL vs predicted time of several plans
    fig = mxmoe.plot_kernels("bench/results/kernels-h100.json")  # speed-up over torch bf16 vs tokens, per model
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import numpy as np

_BLOCKS = ("gate", "up", "down")


def _pyplot() -> Any:
    """pyplot, on the Agg backend unless pyplot is already in use or MPLBACKEND names one (Jupyter sets
    MPLBACKEND to its inline backend, so notebooks still show the figures)."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plan_grid(plan: Any) -> tuple[np.ndarray, list[int], int]:
    """Bits per weight of every block as a grid [layers, experts * 3] (NaN where a layer lacks the expert), the
    layer indices (rows), and the number of experts per row (routed + shared)."""
    from ._scheme import Scheme
    layers = sorted({layer for layer, *_ in plan.blocks})
    experts = max(e for _, e, *_ in plan.blocks) + 1
    grid = np.full((len(layers), experts * len(_BLOCKS)), np.nan)
    row_of = {layer: i for i, layer in enumerate(layers)}
    for (layer, expert, block, _, in_features), name in zip(plan.blocks, plan.schemes):
        grid[row_of[layer], expert * 3 + _BLOCKS.index(block)] = Scheme.parse(name).bits_for(in_features)
    return grid, layers, experts


def plot_plan(plan: Any, ax: Any = None, title: str | None = None) -> Any:
    """Heatmap of a Plan: one row per MoE layer, for each expert three cells (gate, up, down), colour = bits per
    weight including scale/zero overhead; blocks whose scheme also quantizes activations are marked x.  Shared
    experts are the rightmost columns (expert index >= num_experts).  Returns the Figure."""
    from ._scheme import Scheme
    plt = _pyplot()
    grid, layers, experts = plan_grid(plan)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.09 * grid.shape[1] + 2), 0.45 * len(layers) + 1.6))
    else:
        fig = ax.figure
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="bits per weight (incl. scales)")
    row_of = {layer: i for i, layer in enumerate(layers)}
    act_cells = [(expert * 3 + _BLOCKS.index(block), row_of[layer])
                 for (layer, expert, block, _, _), name in zip(plan.blocks, plan.schemes)
                 if Scheme.parse(name).quantizes_activations]
    if act_cells:
        xs, ys = zip(*act_cells)
        ax.scatter(xs, ys, s=10, c="white", marker="x", linewidths=0.8, label="activations quantized")
        ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    step = max(1, experts // 16)
    ax.set_xticks([e * 3 + 1 for e in range(0, experts, step)], [str(e) for e in range(0, experts, step)])
    if plan.num_experts < experts:
        ax.axvline(plan.num_experts * 3 - 0.5, color="red", linewidth=1)
    ax.set_xlabel("expert (gate | up | down per expert; right of the red line: shared experts)")
    ax.set_ylabel("layer")
    ax.set_title(title or f"MxMoE plan: {plan.average_bits:.2f} bits/weight (budget {plan.wbits:g}), r={plan.r}")
    fig.tight_layout()
    return fig


def plot_pareto(results: Any, layer: int | None = None, ax: Any = None, title: str | None = None) -> Any:
    """Accuracy against predicted time.

    ``results`` is either a Plan (its (loss, time) Pareto frontier — for ``scope="layer"`` plans pass ``layer`` —
    with the chosen point marked) or a sequence of rows ``{"name", "ppl", "predicted_time"}`` (e.g. the rows of
    bench/results/accuracy-mini.json), plotted as measured perplexity vs predicted time.  Returns the Figure."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 4.2))
    else:
        fig = ax.figure
    if hasattr(results, "pareto"):
        plan = results
        points = plan.pareto(layer)
        if not points:
            raise ValueError("the plan has no Pareto frontier (uniform plans have none)")
        loss, time = np.array(points).T
        ax.plot(time * 1e6, loss, "o-", label="Pareto frontier (GLPK ε-constraint)")
        if plan.block_loss is not None and plan.block_time is not None:
            idx = [i for i, b in enumerate(plan.blocks) if layer is None or b[0] == layer]
            chosen_loss = sum(plan.block_loss[i] for i in idx)
            chosen_time = sum(plan.block_time[i] for i in idx)
            ax.plot([chosen_time * 1e6], [chosen_loss], "r*", markersize=14, label=f"chosen (r={plan.r})")
        ax.set_ylabel("predicted loss")
        ax.set_yscale("log")
        ax.set_title(title or f"Pareto frontier{'' if layer is None else f', layer {layer}'}")
    else:
        rows = [r for r in results if r.get("ppl") is not None and r.get("predicted_time") is not None]
        if not rows:
            raise ValueError("no rows with both 'ppl' and 'predicted_time'")
        for row in rows:
            ax.plot(row["predicted_time"] * 1e6, row["ppl"], "o")
            ax.annotate(row["name"], (row["predicted_time"] * 1e6, row["ppl"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
        ax.set_ylabel("perplexity (WikiText-2 test)")
        ax.set_title(title or "accuracy vs predicted MoE time")
    ax.set_xlabel("predicted time of the MoE GEMMs (µs)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _speedups(records: Sequence[dict], scope: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{panel: {impl: [(tokens, speed-up over torch bf16 grouped_mm)]}} for the records of one scope; a panel is a
    model shape (layer scope) or a model shape and projection (gemm scope)."""
    base: dict[tuple[str, int], float] = {}
    rows = [r for r in records if r.get("scope") == scope and r.get("us") and "tokens" in r]

    def panel(r: dict) -> str:
        return r["model_shape"] + (f" {r['proj']}" if r.get("proj") else "")
    for r in rows:
        if r["impl"] == "torch_bf16_grouped_mm":
            base[(panel(r), r["tokens"])] = r["us"]
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        ref = base.get((panel(r), r["tokens"]))
        if ref is None or r["impl"] == "torch_bf16_grouped_mm":
            continue
        out.setdefault(panel(r), {}).setdefault(r["impl"], []).append((r["tokens"], ref / r["us"]))
    return out


def plot_kernels(results: Any, scope: str = "layer", impls: Sequence[str] | None = None,
                 title: str | None = None) -> Any:
    """Kernel benchmark as a picture: speed-up over torch's bf16 grouped_mm against the token count, one panel per
    model shape (per model shape and projection for ``scope="gemm"``), one line per implementation.

    ``results``: the JSON of ``python -m mxmoe bench kernels`` (bench/results/kernels-<gpu>.json: a dict with
    "records") or of bench/bench_gemm.py (a list of records), or a path to either.  ``impls`` restricts the lines
    (default: every implementation in the file).  Returns the Figure."""
    if isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            results = json.load(f)
    records = results.get("records", []) if isinstance(results, dict) else list(results)
    data = _speedups(records, scope)
    if impls is not None:
        data = {k: {i: v for i, v in lines.items() if i in impls} for k, lines in data.items()}
        data = {k: lines for k, lines in data.items() if lines}
    if not data:
        raise ValueError(f"no {scope!r}-scope records with a torch_bf16_grouped_mm baseline at the same tokens")
    plt = _pyplot()
    panels = sorted(data)
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, panels):
        for impl, points in sorted(data[name].items()):
            tokens, speedup = np.array(sorted(points)).T
            ax.plot(tokens, speedup, "o-" if impl.startswith("mxmoe") else "s--", markersize=3, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
    fig.supylabel("speed-up over torch bf16 grouped_mm", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    legend: dict[str, Any] = {}  # one entry per implementation, whichever panel has it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels, handles = sorted(legend), [legend[label] for label in sorted(legend)]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    gpu = results.get("gpu") if isinstance(results, dict) else next((r["gpu"] for r in records if r.get("gpu")), None)
    fig.suptitle(title or f"{scope} scope" + (f", {gpu}" if gpu else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(labels) + 3) // 4), 1, 0.97))
    return fig
