"""Screen PTQ settings on the first few blocks of a model: each block's output error after quantization.

A whole SmolLM2 recipe run takes 10-30 minutes on 2 cores, too slow to compare several starts or schedules.
The first K decoder blocks see the same calibration inputs under every setting (the first exactly, the
later ones through the earlier quantized blocks), so their output errors against the float blocks rank
settings in a fraction of the time. Each recipe runs on a copy of the model cut to its first ``--layers``
blocks; the table gives every block's ``final_loss`` (TesseraQ's mean squared error of the block's output
with its stored weights, on the quantized stream, against the float block's output) and, for a GPTQ start,
the error of GPTQ's own codes; with ``holdout_samples: N`` in a recipe's method_args, the same errors on the
last N calibration samples, which no step trained on. A screen, not a result: perplexity needs the whole model.

    TRITIUM_DATA=../shared/data python bench/bench_block_screen.py --layers 4 \\
        --recipes w3a4-tesseraq-cpu,bench/results/s11-2026-12-03/w3a4-tesseraq-gptq.yaml \\
        --out bench/results/block-screen.md
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))  # bench_wa's machine line


class BenchInputError(ValueError):
    """A flag that cannot work; the message names the fix."""


def check_layers(model, layers: int):
    """The model's decoder layout, once ``layers`` is known to lie within its blocks."""
    from tritium.models import decoder_layout

    layout = decoder_layout(model)
    if not 1 <= layers <= layout.num_blocks:
        raise BenchInputError(f"--layers must lie in 1..{layout.num_blocks} (the model's blocks), got {layers}")
    return layout


def truncated(model, layers: int):
    """A copy of ``model`` with only its first ``layers`` decoder blocks."""
    from torch import nn

    layout = check_layers(model, layers)
    cut = copy.deepcopy(model)
    parent_path, attribute = layout.blocks_path.rsplit(".", 1)
    parent = cut.get_submodule(parent_path)
    setattr(parent, attribute, nn.ModuleList(list(getattr(parent, attribute))[:layers]))
    cut.config.num_hidden_layers = layers
    if getattr(cut.config, "layer_types", None):
        cut.config.layer_types = cut.config.layer_types[:layers]
    return cut


def screen(model, tokenizer, recipe: dict, data) -> dict:
    from tritium.jobs.steps import quantize_model

    start = time.perf_counter()
    result, _ = quantize_model(model, tokenizer, recipe, data, progress=False)
    blocks = result.details.get("blocks") or []
    return {"seconds": round(time.perf_counter() - start, 1),
            "final_loss": [b.get("final_loss") for b in blocks],
            "gptq_start_loss": [b.get("gptq_start_loss") for b in blocks],
            "holdout_loss": [b.get("holdout_loss") for b in blocks],
            "gptq_start_holdout_loss": [b.get("gptq_start_holdout_loss") for b in blocks]}


def markdown(report: dict) -> str:
    names = list(report["runs"])
    layers = report["layers"]
    lines = [f"# Block screen on {report['model']}: the first {layers} blocks", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}", f"- date: {report['date']}",
             "- each block's output MSE with its stored weights against the float block's (TesseraQ's "
             "final_loss); in brackets, a GPTQ start's own error; after a slash, the same on the held-out "
             "calibration samples (a recipe's holdout_samples), which trained nothing", "",
             "| block | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in range(layers):
        cells = []
        for n in names:
            run = report["runs"][n]

            def value(key):
                values = run.get(key) or []
                return values[i] if i < len(values) else None

            def shown(final, start):
                text = "–" if final is None else f"{final:.4g}"
                return text + ("" if start is None else f" ({start:.4g})")

            text = shown(value("final_loss"), value("gptq_start_loss"))
            if value("holdout_loss") is not None:
                text += " / " + shown(value("holdout_loss"), value("gptq_start_holdout_loss"))
            cells.append(text)
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines.append("| seconds | " + " | ".join(f"{report['runs'][n]['seconds']:.0f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=4, help="the first N decoder blocks")
    parser.add_argument("--recipes", required=True, help="comma-separated recipe names or YAML paths")
    parser.add_argument("--data", default=os.environ.get("TRITIUM_DATA"))
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="bench/results/block-screen.md")
    args = parser.parse_args(argv)
    from tritium.recipes import load_recipe

    try:
        recipes = {}
        for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
            try:
                recipes[name] = load_recipe(name)
            except ValueError as err:
                raise BenchInputError(str(err)) from err
            if recipes[name].get("e2e"):
                raise BenchInputError(f"{name} has an e2e step, which trains through the whole model: "
                                      "screen its PTQ part (a copy without the e2e section)")
        if not recipes:
            raise BenchInputError("--recipes names no recipe")
    except BenchInputError as err:
        parser.error(str(err))

    import torch

    from tritium.models import load_model
    from tritium.utils.io import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model(args.model)
    try:
        check_layers(model, args.layers)  # a bad --layers fails before any quantization
    except BenchInputError as err:
        parser.error(str(err))
    from bench_wa import machine  # the same machine line as the W-A table

    out = Path(args.out)
    command = " ".join(["python bench/bench_block_screen.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"model": args.model, "layers": args.layers, "command": command, "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "runs": {}}
    for name, recipe in recipes.items():
        print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        report["runs"][name] = screen(truncated(model, args.layers), tokenizer, recipe, args.data)
        atomic_write_json(out.with_suffix(".json"), report)
        atomic_write_text(out, markdown(report))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
