"""Spectra-style figures of a suite: each metric against parameters and against size in bits,
a line per family and its fitted law, as PNG and SVG. matplotlib loads only when a figure is drawn."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write_bytes
from .fit import fit_power_law
from .records import (
    AXES,
    ZERO_SHOT_AVERAGE,
    SuiteEntry,
    check_axis,
    families,
    family_points,
    is_zero_shot_metric,
    lower_is_better,
)


# Known families keep their colour across every figure of a report.
_FAMILY_COLOURS = {
    "FloatLM": "#1f77b4",
    "TriLM": "#d62728",
    "BitNet": "#2ca02c",
    "QuantLM-8bit": "#17becf",
    "QuantLM-6bit": "#bcbd22",
    "QuantLM-4bit": "#9467bd",
    "QuantLM-3bit": "#8c564b",
    "QuantLM-2bit": "#e377c2",
}
_OTHER_COLOURS = ["#ff7f0e", "#7f7f7f", "#000000", "#aec7e8", "#98df8a", "#ff9896"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _colour(fam: str, index: int) -> str:
    return _FAMILY_COLOURS.get(fam, _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def metric_label(metric: str) -> str:
    labels = {"val_loss": "validation loss (nats/token)", "val_ppl": "validation perplexity",
              ZERO_SHOT_AVERAGE: "zero-shot accuracy (average)"}
    if metric in labels:
        return labels[metric]
    if metric.endswith("_ppl"):
        return f"{metric[:-4]} perplexity"
    if is_zero_shot_metric(metric):
        return f"{metric} accuracy (zero-shot)"
    return metric


def axis_label(axis: str, param_field: str) -> str:
    if axis == "bits":
        return "model size (bits)"
    return "non-embedding linear parameters" if param_field == "linear_params" else "parameters (total)"


def suite_metrics(entries: Sequence[SuiteEntry], metric: str = "val_loss") -> list[str]:
    """Metrics worth a figure: the main one, perplexity, everything measured, and the zero-shot average."""
    found = [metric]
    if metric == "val_loss":
        found.append("val_ppl")
    keys = list(dict.fromkeys(k for e in entries for k in e.metrics))
    found += [k for k in keys if k not in found]
    if sum(is_zero_shot_metric(k) for k in keys) > 1:
        found.append(ZERO_SHOT_AVERAGE)
    return found


def _figure_name(metric: str, axis: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{metric}_vs_{axis}")


def _save_figure(figure, stem: Path) -> list[Path]:
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        # no dates in the metadata, so the same suite draws byte-identical files
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buffer.getvalue()))
    return paths


def plot_metric(entries: Sequence[SuiteEntry], out_dir: str | Path, metric: str = "val_loss",
                axis: str = "params", *, param_field: str = "linear_params", fit: bool = True,
                title: str | None = None) -> list[Path]:
    """One Spectra-style figure: ``metric`` against parameters or bits (log x), a line per family,
    dashed fitted laws for losses and perplexities. Written as PNG and SVG; returns both paths
    (an empty list when no entry has the metric)."""
    check_axis(axis, param_field)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: files only, no display needed
    from matplotlib.figure import Figure

    names = families(entries)
    figure = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    plotted = False
    for i, fam in enumerate(names):
        points = family_points(entries, fam, metric, axis, param_field)
        if not points:
            continue
        plotted = True
        xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
        colour = _colour(fam, i)
        ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], color=colour, linewidth=1.2, label=fam)
        if fit and lower_is_better(metric):
            law = fit_power_law(xs, ys)
            if law.ok:
                grid = np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 200)
                ax.plot(grid, law.predict(grid), linestyle="--", color=colour, linewidth=1, alpha=0.8,
                        label=f"{fam} fit: α={law.alpha:.3f}, ε={law.eps:.3f}")
    if not plotted:
        return []
    ax.set_xscale("log")
    ax.set_xlabel(axis_label(axis, param_field))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"{metric_label(metric)} vs {'size in bits' if axis == 'bits' else 'parameters'}")
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax.legend(fontsize="small")
    return _save_figure(figure, Path(out_dir) / _figure_name(metric, axis))


def plot_suite(entries: Sequence[SuiteEntry], out_dir: str | Path, metric: str = "val_loss", *,
               param_field: str = "linear_params", extra_metrics: Sequence[str] | None = None,
               fit: bool = True) -> list[Path]:
    """``metric`` (and each extra metric; by default everything measured, see :func:`suite_metrics`)
    against parameters and against size in bits. Returns the PNG and SVG paths written."""
    if not entries:
        raise ValueError("plot_suite needs at least one suite entry")
    metrics = suite_metrics(entries, metric) if extra_metrics is None else [metric, *extra_metrics]
    paths = []
    for m in dict.fromkeys(metrics):
        for axis in AXES:
            paths += plot_metric(entries, out_dir, m, axis, param_field=param_field, fit=fit)
    return paths
