"""Post-training quantization table: RTN / GPTQ / AWQ / TesseraQ × W3g128, W2g128,
W2 per-channel and ternary g128 on one model, beside the float model's perplexity on
the same chunks, with quantization time and peak RSS of every cell.

Every cell runs in its own process so that its peak RSS is its own. The float model is
evaluated in the same run, on the same chunks, as the baseline.

    python bench/bench_ptq.py --limit 8 --recipes cpu --out bench/results/ptq-cpu.md
    python bench/bench_ptq.py --recipes full --out bench/results/ptq-gpu.md      # on a GPU

``--recipes cpu`` uses the reduced ``<grid>-<method>-cpu`` recipes (fewer calibration
samples, shorter sequences, fewer steps); ``full`` the papers' recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GRIDS = {
    "w3g128": {"kind": "uniform", "bits": 3, "group": 128, "symmetric": False, "ragged_groups": True},
    "w2g128": {"kind": "uniform", "bits": 2, "group": 128, "symmetric": False, "ragged_groups": True},
    "w2-perchannel": {"kind": "uniform", "bits": 2, "group": "channel", "symmetric": False},
    "ternary-g128": {"kind": "ternary", "variant": "twn", "group": 128, "ragged_groups": True},
    "ternary-dlt-g128": {"kind": "ternary", "variant": "dlt", "group": 128, "ragged_groups": True},
}
METHODS = ("rtn", "gptq", "awq", "tesseraq")
# "<method>+rot" rows run the same recipe on the rotated model (norms folded, QuaRot R1/R2 Hadamards);
# "<method>+e2e" rows continue it with end-to-end scale tuning (codes fixed), the e2e section of
# --e2e-recipe. A "+e2e" cell replays the PTQ blocks of its "+e2e"-less cell from --checkpoint-root.
ROTATED = "+rot"
E2E = "+e2e"
ROWS = tuple(m for base in METHODS for m in (base, base + ROTATED, base + E2E, base + ROTATED + E2E))


def recipe_name(method: str, recipes: str) -> str:
    """The shipped recipe whose method settings a cell uses; the cell's grid replaces the recipe's.

    ``recipes`` is "full" (the papers'), "cpu", or another suffix such as "cpu-long"."""
    if method == "rtn":
        return "w2g128-rtn"
    return f"w2g128-{method}" + ("" if recipes == "full" else f"-{recipes}")


def machine() -> str:
    import torch

    from tritium.utils.hardware import cpu_flags, cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    simd = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))) or "no AVX flags listed"
    return f"{cpu_name()} ({simd}), {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


# --------------------------------------------------------------------------- one cell (child process)


def run_cell(args) -> dict:
    import resource

    import torch

    from tritium.eval.perplexity import perplexity, tokenize_eval_text
    from tritium.data import load_eval_text
    from tritium.models import load_model
    from tritium.recipes import load_recipe
    from tritium.runner import quantize_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model(args.model)
    tokens = tokenize_eval_text(tokenizer, load_eval_text("wikitext2", args.data))
    out = {"method": args.cell_method, "grid": args.cell_grid}
    quantize_seconds = None
    if args.cell_method != "float":
        ptq_cell = args.cell_method.removesuffix(E2E)
        method = ptq_cell.removesuffix(ROTATED)
        recipe = load_recipe(recipe_name(method, args.recipes))
        recipe["rotate"] = ptq_cell.endswith(ROTATED)
        recipe["grid"] = dict(GRIDS[args.cell_grid])
        if args.checkpoint_root and method != "rtn":  # RTN has no calibration to checkpoint
            recipe["method_args"] = {**recipe.get("method_args", {}),
                                     "checkpoint_dir": str(Path(args.checkpoint_root) / f"{ptq_cell}-{args.cell_grid}")}
        if recipe["method"] == "rtn":
            recipe.pop("calib", None)
        if args.cell_method.endswith(E2E):
            recipe["e2e"] = e2e_settings(args)
            out["e2e"] = recipe["e2e"]
        out["rotate"] = recipe["rotate"]
        start = time.perf_counter()
        result, _ = quantize_model(model, tokenizer, recipe, args.data, progress=False)
        quantize_seconds = time.perf_counter() - start
        if "e2e" in result.details:
            out["e2e_seconds"] = result.details["e2e"]["seconds"]
            out["e2e_training"] = result.details["e2e"]["training"]
        out["recipe"] = recipe.get("name")
        out["calib"] = recipe.get("calib")
    ppl = perplexity(model, tokens, seqlen=args.seqlen, limit=args.limit, dataset="wikitext2", progress=False)
    out.update({"ppl": ppl.ppl, "n_chunks": ppl.n_chunks, "quantize_seconds": quantize_seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return out


def e2e_settings(args) -> dict:
    """The e2e section of ``--e2e-recipe``, with ``--e2e-tokens`` / ``--e2e-lr`` in place of its budget and
    scale learning rate."""
    from tritium.recipes import load_recipe

    settings = load_recipe(args.e2e_recipe).get("e2e")
    if not settings:
        raise SystemExit(f"--e2e-recipe {args.e2e_recipe} has no e2e section")
    settings = json.loads(json.dumps(settings))
    if args.e2e_tokens is not None:
        settings["train"]["tokens"], settings["train"]["steps"] = args.e2e_tokens, None
    if args.e2e_lr is not None:
        settings["train"].setdefault("optim", {})["lr_quant"] = args.e2e_lr
    if args.e2e_precision is not None:
        settings["train"]["precision"] = args.e2e_precision
    return settings


def estimate(args) -> int:
    """Time the first ``--estimate-blocks`` blocks of each method and extrapolate to the whole model."""
    import torch

    from tritium.data import calibration_samples
    from tritium.methods import config_from_dict, get_method, quantize_
    from tritium.models import decoder_layout, load_model
    from tritium.recipes import load_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    grid_name = args.grids.split(",")[0]
    lines = [f"# Time estimate on {args.model}, grid {grid_name}, {args.recipes} recipes", "",
             f"- command: `{' '.join(sys.argv)}`", f"- machine: {machine()}",
             f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"- torch threads: {torch.get_num_threads()}; load average at start: {os.getloadavg()[0]:.1f}", "",
             "| method | calib | blocks timed | wall s/block | CPU s/block | blocks | est. wall (this load) | "
             "est. wall on idle cores (CPU s / threads) |", "|---|---|---|---|---|---|---|---|"]
    for method in [m for m in args.methods.split(",") if m != "rtn"]:
        model, tokenizer, _ = load_model(args.model)
        layout = decoder_layout(model)
        total_blocks = layout.num_blocks
        del layout.blocks[args.estimate_blocks:]
        model.config.num_hidden_layers = args.estimate_blocks
        recipe = load_recipe(recipe_name(method, args.recipes))
        calib = recipe["calib"]
        ids = calibration_samples(tokenizer, calib["source"], calib["samples"], calib["seqlen"], calib.get("seed", 0),
                                  args.data)
        config = config_from_dict(method, GRIDS[grid_name], **dict(recipe.get("method_args") or {}))
        assert get_method(method).needs_calibration
        start, start_cpu = time.perf_counter(), time.process_time()
        quantize_(model, config, ids)
        # Per block, including the capture and both stream forwards: slightly pessimistic.
        wall = (time.perf_counter() - start) / args.estimate_blocks
        cpu = (time.process_time() - start_cpu) / args.estimate_blocks
        threads = torch.get_num_threads()
        lines.append(f"| {method} | {calib['samples']}×{calib['seqlen']} | {args.estimate_blocks} | {wall:.1f} | "
                     f"{cpu:.1f} | {total_blocks} | {wall * total_blocks / 60:.1f} min | "
                     f"{cpu / threads * total_blocks / 60:.1f} min |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    from tritium.utils.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


# --------------------------------------------------------------------------- the table (parent)


def cell(args, method: str, grid: str) -> dict:
    command = [sys.executable, __file__, "--cell-method", method, "--cell-grid", grid, "--model", args.model,
               "--seqlen", str(args.seqlen), "--recipes", args.recipes]
    for flag, value in (("--limit", args.limit), ("--data", args.data), ("--threads", args.threads),
                        ("--checkpoint-root", args.checkpoint_root), ("--e2e-recipe", args.e2e_recipe),
                        ("--e2e-tokens", args.e2e_tokens), ("--e2e-lr", args.e2e_lr),
                        ("--e2e-precision", args.e2e_precision)):
        if value is not None:
            command += [flag, str(value)]
    print(f"[{time.strftime('%H:%M:%S')}] {method} {grid}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    if done.returncode:
        return {"method": method, "grid": grid, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(args, float_cell: dict, cells: dict, grids: list[str], methods: list[str]) -> str:
    base = float_cell.get("ppl")
    lines = [f"# PTQ on {args.model}: WikiText-2 perplexity (GPTQ protocol)", "",
             f"- command: `{' '.join(sys.argv)}`", f"- machine: {machine()}",
             f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"- recipes: {args.recipes} (`w2g128-<method>{'' if args.recipes == 'full' else '-' + args.recipes}`, "
             "grid replaced per column)",
             f"- chunks: {float_cell.get('n_chunks')} × {args.seqlen} tokens; float perplexity on the same chunks: "
             f"{base:.3f}" if base else "- float model failed", "",
             "Perplexity (ratio to float):", "",
             "| method | " + " | ".join(grids) + " |", "|---" * (len(grids) + 1) + "|"]

    def fmt(c, key):
        if c is None:
            return "not run"
        if "error" in c:
            return f"error: {c['error'][:60]}"
        if key == "ppl":
            return f"{c['ppl']:.2f} ({c['ppl'] / base:.2f}×)" if base else f"{c['ppl']:.2f}"
        if key == "quantize_seconds":
            return f"{c[key]:.0f} s" + (f" (e2e {c['e2e_seconds']:.0f} s)" if c.get("e2e_seconds") else "")
        return f"{c[key]:.0f} MB"

    for title, key in (("Perplexity", "ppl"), ("Quantization time", "quantize_seconds"), ("Peak RSS", "peak_rss_mb")):
        if key != "ppl":
            lines += ["", f"{title}:", "", "| method | " + " | ".join(grids) + " |", "|---" * (len(grids) + 1) + "|"]
        for method in methods:
            lines.append(f"| {method} | " + " | ".join(fmt(cells.get((method, g)), key) for g in grids) + " |")
    lines += ["", f"Float model: peak RSS {float_cell.get('peak_rss_mb', float('nan')):.0f} MB (load + evaluation)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"rows, from {', '.join(ROWS)} ('{ROTATED}': the same recipe on the rotated model)")
    parser.add_argument("--grids", default="w3g128,w2g128,w2-perchannel,ternary-g128",
                        help=f"columns, from {', '.join(GRIDS)}")
    parser.add_argument("--recipes", default="cpu", help="cpu, full, or the suffix of other shipped recipes (cpu-long)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N chunks (same for every cell)")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--data", default=os.environ.get("TRITIUM_DATA"))
    parser.add_argument("--threads", type=int, help="torch threads per cell")
    parser.add_argument("--checkpoint-root", help="checkpoint every calibrated cell here (resume a killed bench)")
    parser.add_argument("--out", default="bench/results/ptq.md")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --out's JSON and run the rest")
    parser.add_argument("--estimate-blocks", type=int,
                        help="only time this many blocks per calibrated method and extrapolate to the model")
    parser.add_argument("--e2e-recipe", default="w2g128-cpu",
                        help=f"'{E2E}' rows: the shipped recipe (or YAML) whose e2e section they run")
    parser.add_argument("--e2e-tokens", type=int, help=f"'{E2E}' rows: training tokens instead of the recipe's")
    parser.add_argument("--e2e-lr", type=float, help=f"'{E2E}' rows: the scales' learning rate instead of the recipe's")
    parser.add_argument("--e2e-precision", choices=["auto", "fp32", "bf16"], help=f"'{E2E}' rows: training precision")
    parser.add_argument("--cell-method", help=argparse.SUPPRESS)
    parser.add_argument("--cell-grid", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.cell_method:
        print(json.dumps(run_cell(args)))
        return 0
    if args.estimate_blocks:
        return estimate(args)
    methods = [m for m in args.methods.split(",") if m]
    grids = [g for g in args.grids.split(",") if g]
    unknown = [g for g in grids if g not in GRIDS] + [m for m in methods if m not in ROWS]
    if unknown:
        parser.error(f"unknown grid/method {unknown}: grids are {list(GRIDS)}, methods {list(ROWS)}")
    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text()) if args.resume and out.with_suffix(".json").exists() else {}
    float_cell = saved.get("float") or cell(args, "float", grids[0])
    cells = {(c["method"], c["grid"]): c for c in saved.get("cells", []) if "error" not in c}
    shown = sorted(methods, key=ROWS.index)  # rows in the usual order, whatever order they ran in
    # Grid-major order: the most telling column (the first grid) fills in first on a long run.
    for grid in grids:
        for method in methods:
            if (method, grid) in cells:
                continue
            cells[(method, grid)] = cell(args, method, grid)
            from tritium.utils.io import atomic_write_json, atomic_write_text

            # Rewrite after every cell so that a long run leaves results behind and can resume.
            atomic_write_json(out.with_suffix(".json"), {"float": float_cell, "cells": list(cells.values())})
            atomic_write_text(out, markdown(args, float_cell, cells, grids, shown))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
