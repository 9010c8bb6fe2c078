"""Run reports: one row per evaluated model, written as JSON and a markdown table."""

from __future__ import annotations

import re
from pathlib import Path

from ..utils.io import atomic_write_json, atomic_write_text


def _fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """Columns: what was run, the perplexities and accuracies measured, its size, its time."""
    ppl_keys = sorted({k for r in rows for k in r.get("perplexity", {})})
    zs_keys = sorted({f"{t}/{m}" for r in rows for t, ms in r.get("zeroshot", {}).items() for m in ms})
    storage = any(r.get("storage") for r in rows)  # how an evaluated file stores its weights (tritium eval)
    # lm-evaluation-harness's scores of the same tasks, beside tritium's: "piqa/acc (lm-eval)"
    harness_keys = sorted({f"{t}/{m}" for r in rows for t, ms in r.get("zeroshot_lm_eval", {}).items() for m in ms})
    header = ["model", "method", "bits", "group", *[f"{k} ppl" for k in ppl_keys], *zs_keys,
              *[f"{k} (lm-eval)" for k in harness_keys],
              "bits/weight (linears)", *(["storage"] if storage else []), "size (MB, Spectra count)",
              "file size (MB)", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        size = r.get("size", {})
        cells = [r["model"], r["method"], _fmt(r["bits"]), _fmt(r["group"]),
                 *[_fmt(r.get("perplexity", {}).get(k, {}).get("ppl")) for k in ppl_keys],
                 *[_fmt(r.get("zeroshot", {}).get(k.split("/")[0], {}).get(k.split("/")[1]), 4) for k in zs_keys],
                 *[_fmt(r.get("zeroshot_lm_eval", {}).get(k.split("/")[0], {}).get(k.split("/")[1]), 4)
                   for k in harness_keys],
                 _fmt(size.get("linear_bits_per_weight"), 3), *([_fmt(r.get("storage"))] if storage else []),
                 _fmt(size.get("total_megabytes")),
                 _fmt(r["file_bytes"] / 1e6 if r.get("file_bytes") is not None else None),
                 _fmt(r.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def allocation_table(mixed_precision: dict) -> str:
    """A bit allocation (``QuantizationResult.details["mixed_precision"]``) as one row per decoder block:
    each linear's grid (T ternary, W2..W4) and the block's bits per weight, scales included."""
    blocks: dict[str, dict[str, dict]] = {}
    for name, layer in mixed_precision["layers"].items():
        match = re.match(r"^(.*?\.\d+)\.(.+)$", name)
        block, short = (match.group(1), match.group(2)) if match else ("", name)
        blocks.setdefault(block, {})[short] = layer
    shorts = list(dict.fromkeys(short for layers in blocks.values() for short in layers))
    header = ["block", *[s.rsplit(".", 1)[-1] for s in shorts], "bits/weight"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for block, layers in blocks.items():
        # Weighted by each linear's size, so the column adds up the way the budget does.
        weight = {s: layers[s].get("weights", 1) for s in layers}
        bits = sum(layers[s]["bits_per_weight"] * weight[s] for s in layers) / sum(weight.values())
        cells = [layers[s]["label"] if s in layers else "–" for s in shorts]
        lines.append("| " + " | ".join([block or "–", *cells, f"{bits:.3f}"]) + " |")
    counts = ", ".join(f"{label} ×{n}" for label, n in mixed_precision["counts"].items())
    return (f"Bit allocation: budget {mixed_precision['bits_budget']:g}, reached "
            f"{mixed_precision['achieved_bits_per_weight']:.4f} bits per weight ({counts})\n\n"
            + "\n".join(lines) + "\n")


def write_report(folder: str | Path, summary: dict, rows: list[dict]) -> tuple[Path, Path]:
    folder = Path(folder)
    table = markdown_table(rows)
    for row in rows:
        if row.get("mixed_precision"):
            table += "\n" + allocation_table(row["mixed_precision"])
    json_path = atomic_write_json(folder / "results.json", {**summary, "rows": rows})
    notes = "".join(f"- {n}\n" for n in summary.get("notes", []))
    generation = summary.get("generation")
    if generation:
        prompt = generation["prompt"]
        notes += f"\nGreedy continuation of `{prompt}`:\n\n" + "".join(
            f"- {who}: {prompt}{generation[who]}\n" for who in ("float", "quantized") if generation.get(who) is not None)
    md_path = atomic_write_text(folder / "results.md", f"# tritium run: {summary.get('title', '')}\n\n{table}\n{notes}")
    return json_path, md_path
