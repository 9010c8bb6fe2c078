"""The suite's report: fit, compare and plot, then write ``suite.json``, ``report.md`` and the figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..utils.io import atomic_write_json, atomic_write_text
from .compare import Comparison, PatternVerdict, spectra_pattern
from .fit import PowerLawFit, fit_families
from .plots import axis_label, plot_suite
from .records import AXES, ZERO_SHOT_AVERAGE, SuiteEntry, families, zero_shot_keys


def _human(count: float | None) -> str:
    if count is None:
        return "–"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= div:
            return f"{count / div:.3g}{unit}"
    return f"{count:.3g}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def suite_table(entries: Sequence[SuiteEntry], param_field: str = "linear_params") -> str:
    """Markdown table, one row per model, sorted by family then size."""
    zero_shot = zero_shot_keys(entries)
    ppl_keys = list(dict.fromkeys(k for e in entries for k in e.metrics
                                  if k.endswith("_ppl") and k != "val_ppl"))
    others = list(dict.fromkeys(k for e in entries for k in e.metrics
                                if k not in zero_shot and k not in ppl_keys and k != "val_ppl"))
    header = ["family", "size", "params", "linear params", "size (MB)", "bits", "val loss", "val ppl",
              *[f"{k[:-4]} ppl" for k in ppl_keys], *others, *zero_shot]
    if len(zero_shot) > 1:
        header.append("zero-shot avg")
    header += ["tokens", "tok/s", "MFU", "train (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {f: i for i, f in enumerate(families(entries))}
    for e in sorted(entries, key=lambda e: (order[e.family], e.x("params", param_field))):
        cells = [e.family, e.size, _human(e.params), _human(e.linear_params), f"{e.megabytes:.3g}",
                 _human(e.bits), _num(e.val_loss, 4), _num(e.value("val_ppl"), 2),
                 *[_num(e.metrics.get(k), 2) for k in ppl_keys], *[_num(e.metrics.get(k), 4) for k in others],
                 *[_num(e.metrics.get(k), 4) for k in zero_shot]]
        if len(zero_shot) > 1:
            cells.append(_num(e.value(ZERO_SHOT_AVERAGE, zero_shot), 4))
        cells += [_human(e.tokens), _human(e.tokens_per_second),
                  "–" if e.mfu is None else f"{100 * e.mfu:.1f}%", _num(e.train_seconds, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparison_table(c: Comparison) -> str:
    lines = [f"| {c.family} size | {c.axis} | {c.family} {c.metric} | {c.baseline} at equal {c.axis} | "
             "difference | ratio | from |", "|---|---|---|---|---|---|---|"]
    for p in c.points:
        how = p.method + (" (extrapolated, not counted)" if p.extrapolated and p.method != "none" else "")
        if p.method == "none":
            how = "outside the baseline's range, no law to extrapolate"
        lines.append(f"| {p.size} | {_human(p.x)} | {_num(p.value, 4)} | {_num(p.baseline_value, 4)} | "
                     f"{'–' if p.difference is None else f'{p.difference:+.4f}'} | {_num(p.ratio, 3)} | {how} |")
    return "\n".join(lines) + "\n"


def suite_report_markdown(entries: Sequence[SuiteEntry], fits: dict[str, dict[str, PowerLawFit]],
                          comparisons: Sequence[Comparison] = (), figures: Sequence[str | Path] = (),
                          title: str = "tritium suite", extra_notes: Sequence[str] = (), *,
                          pattern: PatternVerdict | None = None, metric: str = "val_loss",
                          param_field: str = "linear_params", link_base: str | Path | None = None) -> str:
    """The report: table, fitted laws (``fits[axis][family]``), comparisons, Spectra verdict, figures.

    Figure links are made relative to ``link_base`` (the report's folder) when given."""
    out = [f"# {title}\n", f"{len(entries)} models in {len(families(entries))} families. "
           f"Parameters on the x axis: {axis_label('params', param_field)}; size in bits counts quantized "
           "linears at their packed size plus 16-bit scales, and embeddings and LM head at 16 bits.\n",
           "## Results\n", suite_table(entries, param_field)]
    out.append(f"## Fitted scaling laws: {metric} = A / N^α + ε\n")
    for axis, per_family in fits.items():
        variable = "N" if axis == "params" else "bits"
        out.append(f"Against {'parameters' if axis == 'params' else 'size in bits'}:\n")
        for fam, law in per_family.items():
            extra = f", RMSE {law.rmse:.4f} over {law.n_points} points" if law.ok else ""
            note = f" ({law.reason})" if law.ok and law.reason else ""
            out.append(f"- **{fam}**: {law.describe(variable)}{extra}{note}")
        out.append("")
    if "bits" in fits:
        out.append("Against bits the law describes the curve rather than the model: the 16-bit embedding and "
                   "LM head put a floor under the size of small low-bit models, so α and ε there are not "
                   "comparable with the laws against parameters.\n")
    if pattern is not None:
        out.append(f"## Spectra pattern: {pattern.by_params.family} lags {pattern.by_params.baseline} at equal "
                   f"parameters but wins at equal bits\n")
        out.append(f"**Verdict: {pattern.verdict}.** {pattern.reason}.\n")
    for c in comparisons:
        words = "parameters" if c.axis == "params" else "size in bits"
        out.append(f"### {c.family} vs {c.baseline} at equal {words}: {c.verdict}\n")
        out.append(f"{c.reason}.\n")
        out.append(_comparison_table(c))
    if figures:
        out.append("## Figures\n")
        pngs = [Path(f) for f in figures if Path(f).suffix == ".png"]
        for png in pngs:
            rel = png.relative_to(link_base) if link_base is not None else png
            svg = rel.with_suffix(".svg")
            out.append(f"![{png.stem}]({rel.as_posix()})  \n[{png.stem} (SVG)]({svg.as_posix()})\n")
    if extra_notes:
        out.append("## Notes\n")
        out += [f"- {n}" for n in extra_notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


@dataclass
class SuiteReportPaths:
    suite_json: Path
    report: Path
    figures: list[Path]


def write_suite_report(entries: Sequence[SuiteEntry], out_dir: str | Path, *, title: str = "tritium suite",
                       metric: str = "val_loss", param_field: str = "linear_params", family: str = "TriLM",
                       baseline: str = "FloatLM", extra_notes: Sequence[str] = (), plots: bool = True
                       ) -> SuiteReportPaths:
    """Fit, compare, plot and write ``suite.json``, ``report.md`` and ``figures/*.png|svg`` (each atomically)."""
    entries = list(entries)
    if not entries:
        raise ValueError("write_suite_report needs at least one suite entry")
    out_dir = Path(out_dir)
    fits = {axis: fit_families(entries, metric, axis, param_field) for axis in AXES}
    names = families(entries)
    pattern = None
    comparisons: list[Comparison] = []
    if family in names and baseline in names:
        pattern = spectra_pattern(entries, family, baseline, metric=metric, param_field=param_field)
        comparisons = [pattern.by_params, pattern.by_bits]
    figures = plot_suite(entries, out_dir / "figures", metric, param_field=param_field) if plots else []
    markdown = suite_report_markdown(entries, fits, comparisons, figures, title, extra_notes, pattern=pattern,
                                     metric=metric, param_field=param_field, link_base=out_dir)
    report = atomic_write_text(out_dir / "report.md", markdown)
    suite_json = atomic_write_json(out_dir / "suite.json", {
        "title": title, "metric": metric, "param_field": param_field,
        "entries": [e.to_dict() for e in entries],
        "fits": {axis: {f: law.to_dict() for f, law in per.items()} for axis, per in fits.items()},
        "pattern": pattern.to_dict() if pattern is not None else None,
        "figures": [p.relative_to(out_dir).as_posix() for p in figures],
    })
    return SuiteReportPaths(suite_json, report, figures)
