"""Weight + activation quantization table: RTN / GPTQ / TesseraQ, each with and without rotation, × W4A8,
W4A4, W3A4 on one model, beside the float model and weights-only RTN on the same WikiText-2 test chunks.

    python bench/bench_wa.py --model smollm2-135m --limit 16 --out bench/results/wa-cpu.md
    python bench/bench_wa.py --methods rtn,rtn+rot --columns W4A8,W4A4 --limit 16 --threads 1 \\
        --out bench/results/wa-rtn-cpu.md

Each cell takes its method's shipped recipe (``w4a4-rtn``, ``w4a4-gptq-cpu``, ``w4a4-tesseraq-cpu``: the
method's settings and calibration) with the column's weight grid (asymmetric, groups of 128, ragged last
group) and activation grid (per token; A8 symmetric, A4 asymmetric with each linear's clipping ratio
searched) in place of the recipe's; ``+rot`` rows fold the norms and rotate the weights first (``--rotate``,
QuaRot's R1/R2) and, as QuaRot does for quantized activations, add the online Hadamard on down_proj's input
(R4, ``--rot-online down_proj``; ``none`` leaves it off, ``all`` adds R3 too).
The float row and weights-only RTN at each column's weight bits run in the same process, on the same chunks.

Every finished cell is written to ``--out`` (markdown) and its JSON at once; a rerun keeps the cells whose
settings (model, chunks, recipe) are unchanged and runs the rest, so a killed run resumes per cell. Kept cells
outside a rerun's ``--methods``/``--columns`` stay in the JSON (the markdown shows the rerun's own table).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

A8 = {"act_bits": 8, "act_group": "token", "act_symmetric": True}
A4 = {"act_bits": 4, "act_group": "token", "act_symmetric": False, "act_clip_search": True}
COLUMNS = {"W4A8": (4, A8), "W4A4": (4, A4), "W3A4": (3, A4)}
METHOD_RECIPES = {"rtn": "w4a4-rtn", "gptq": "w4a4-gptq-cpu", "tesseraq": "w4a4-tesseraq-cpu"}
ROTATED = "+rot"
ROWS = tuple(m for base in METHOD_RECIPES for m in (base, base + ROTATED))
ACTIVATION_KEYS = ("act_bits", "act_group", "act_symmetric", "act_clip_ratio", "act_clip_search")


class BenchInputError(ValueError):
    """A flag that cannot work; the message names the fix."""


def weight_grid(bits: int) -> dict:
    return {"kind": "uniform", "bits": bits, "group": 128, "symmetric": False, "ragged_groups": True}


def names(text: str, known, flag: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if not chosen or unknown:
        raise BenchInputError(f"{flag} takes names from {', '.join(known)} separated by commas; got {text!r}")
    return chosen


def method_recipes(args) -> dict[str, str]:
    """Each method's recipe: the shipped ones, with ``--recipe METHOD=RECIPE`` in place of a method's own."""
    chosen = dict(METHOD_RECIPES)
    for item in getattr(args, "recipe", None) or ():
        method, sep, recipe = item.partition("=")
        if not sep or method not in METHOD_RECIPES or not recipe:
            raise BenchInputError(f"--recipe takes METHOD=RECIPE with METHOD from {', '.join(METHOD_RECIPES)} "
                                  f"and a recipe name or YAML path; got {item!r}")
        chosen[method] = recipe
    return chosen


def cell_recipe(row: str, column: str | None, args) -> dict:
    """The recipe mapping of one cell: the row's method recipe with the column's grids (``column`` None: the
    weights-only RTN baseline at ``row``'s bits, given as ``rtn-weights-W<bits>``)."""
    from tritium.recipes import load_recipe

    if column is None:  # weights-only RTN
        bits = int(row.rsplit("W", 1)[1])
        recipe = load_recipe(method_recipes(args)["rtn"])
        act, rotate = {}, False
        online = None
    else:
        method = row.removesuffix(ROTATED)
        bits, act = COLUMNS[column]
        recipe = load_recipe(method_recipes(args)[method])
        rotate = row.endswith(ROTATED)
        online = args.rot_online if rotate and args.rot_online != "none" else None
    for key in ACTIVATION_KEYS:
        recipe.pop(key, None)
    recipe.update(copy.deepcopy(act))
    recipe["grid"] = weight_grid(bits)
    recipe["rotate"] = rotate
    if online is not None:
        recipe["online_rotation"] = online
    else:
        recipe.pop("online_rotation", None)
    calib = dict(recipe["calib"])
    if args.calib_samples is not None:
        calib["samples"] = args.calib_samples
    if args.calib_seqlen is not None:
        calib["seqlen"] = args.calib_seqlen
    recipe["calib"] = calib
    recipe.pop("name", None)
    return recipe


def quantize_model(model, tokenizer, recipe, data, progress=False):
    from tritium.runner import quantize_model as run

    return run(model, tokenizer, recipe, data, progress=progress)


def zeroshot_tasks(args) -> list[str]:
    from tritium.eval.zeroshot import TASKS

    return names(args.zeroshot, list(TASKS), "--zeroshot") if getattr(args, "zeroshot", None) else []


def shown_metric(task: str) -> str:
    """The accuracy a table shows for ``task``: length-normalised where the task has it, as lm-eval reports."""
    from tritium.eval.zeroshot import TASKS

    return "acc_norm" if "acc_norm" in TASKS[task].metrics else "acc"


def load_zeroshot_docs(args) -> dict:
    """Each zero-shot task's documents (the first ``--zeroshot-limit``), read once for every cell."""
    from tritium.eval.zeroshot import TASKS

    return {task: TASKS[task].load(args.data)[:args.zeroshot_limit] for task in zeroshot_tasks(args)}


def score(model, tokenizer, tokens, args, zeroshot_docs: dict | None = None) -> dict:
    from tritium.eval.perplexity import perplexity
    from tritium.eval.zeroshot import TASKS, evaluate_docs

    result = perplexity(model, tokens, seqlen=args.seqlen, limit=args.limit, dataset="wikitext2", progress=False)
    out = {"ppl": result.ppl, "n_chunks": result.n_chunks}
    if zeroshot_docs:
        out["zeroshot"] = {task: {"n_docs": len(docs), **evaluate_docs(model, tokenizer, docs, TASKS[task].metrics,
                                                                        progress=False)}
                           for task, docs in zeroshot_docs.items()}
    return out


def run_cell(float_model, tokenizer, tokens, key: str, recipe: dict | None, args,
             zeroshot_docs: dict | None = None) -> dict:
    out = {"key": key, "recipe": recipe, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    model = float_model if recipe is None else copy.deepcopy(float_model)
    if recipe is not None:
        start, cpu = time.perf_counter(), time.process_time()
        result, _ = quantize_model(model, tokenizer, recipe, args.data, progress=False)
        out |= {"quantize_seconds": round(time.perf_counter() - start, 1),
                "quantize_cpu_seconds": round(time.process_time() - cpu, 1),
                "grid": result.grid.describe(), "activations": result.activations_record(),
                "activations_described": result.describe_activations(), "rotated": "rotation" in result.details,
                "online_rotation": (result.details.get("online_rotation") or {}).get("settings")}
        starts = [b for b in result.details.get("blocks") or () if "gptq_start_loss" in b]
        if starts:  # TesseraQ from a GPTQ start: did PAR + DST improve on GPTQ's own codes, block by block?
            ratios = sorted(b["final_loss"] / b["gptq_start_loss"] for b in starts if b["gptq_start_loss"] > 0)
            out["gptq_start"] = {"blocks": len(starts), "improved": sum(r < 1 for r in ratios),
                                 "median_final_over_start": ratios[len(ratios) // 2] if ratios else None}
        judged = [b for b in result.details.get("blocks") or () if "reverted_to_start" in b]
        if judged:  # revert_if_worse: the blocks that kept their start's codes
            out["reverted_to_start"] = {"blocks": len(judged), "reverted": sum(b["reverted_to_start"] for b in judged)}
        clip = result.details.get("activation_clip_search")
        if clip:
            ratios = [g.clip_ratio for g in result.act_grids.values()]
            out["clip_ratio_counts"] = {f"{r:g}": ratios.count(r) for r in sorted(set(ratios), reverse=True)}
    out |= score(model, tokenizer, tokens, args, zeroshot_docs)
    if model is not float_model:
        del model
    return out


def settings_of(args) -> dict:
    """What a kept cell must share with this run (zero-shot only when this run scores it)."""
    settings = {"model": args.model, "limit": args.limit, "seqlen": args.seqlen}
    tasks = zeroshot_tasks(args)
    if tasks:
        settings["zeroshot"] = {"tasks": tasks, "limit": args.zeroshot_limit}
    return settings


def keeps(cell: dict, args) -> bool:
    """A finished cell this run can reuse: the same model and chunks, and the zero-shot scores it asks for
    (a cell scored on zero-shot tasks also serves a run that asks for perplexity only)."""
    if "error" in cell:
        return False
    wanted, had = settings_of(args), dict(cell.get("settings") or {})
    if "zeroshot" not in wanted:
        had.pop("zeroshot", None)
    return had == wanted


def machine() -> str:
    import torch

    from tritium.utils.hardware import cpu_flags, cpu_name

    simd = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))) or "no AVX flags listed"
    return (f"{cpu_name()} ({simd}), {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
            f"torch threads, load average {os.getloadavg()[0]:.1f} at start")


def method_table(rows: list[str], columns: list[str], shown) -> list[str]:
    """A markdown table, a row per method and a column per W-A column, of ``shown(cell key)``."""
    return (["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            + [f"| {row} | " + " | ".join(shown(f"{row}|{c}") for c in columns) + " |" for row in rows])


def markdown(report: dict, rows: list[str], columns: list[str]) -> str:
    cells = report["cells"]
    base = (cells.get("float") or {}).get("ppl")

    def ppl(key):
        c = cells.get(key)
        if c is None:
            return "not run"
        if "error" in c:
            return f"error: {c['error'][:60]}"
        return f"{c['ppl']:.2f} ({c['ppl'] / base:.2f}×)" if base else f"{c['ppl']:.2f}"

    def seconds(key):
        c = cells.get(key)
        return f"{c['quantize_seconds']:.0f} s" if c and c.get("quantize_seconds") is not None else "–"

    n_chunks = (cells.get("float") or {}).get("n_chunks")
    lines = [f"# Weight + activation quantization on {report['model']}: WikiText-2 perplexity", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}", f"- date: {report['date']}",
             f"- chunks: {n_chunks} × {report['seqlen']} tokens of WikiText-2 test (the same for every cell)",
             "- cells: the method's recipe (" + ", ".join(f"{m}: `{r}`" for m, r in report["method_recipes"].items())
             + ") with the column's grids: weights asymmetric g128 (ragged last group); activations per token, "
               "A8 symmetric, A4 asymmetric with each linear's clipping ratio searched among 1.0-0.8; +rot rows: "
               "R1/R2 folded (randomized Hadamard)" + (f" and online {report['rot_online']}" if report.get("rot_online")
                                                       not in (None, "none") else ""),
             f"- float: {ppl('float')}; weights-only RTN: "
             + ", ".join(f"W{b} {ppl(f'rtn-weights-W{b}')}" for b in sorted({COLUMNS[c][0] for c in columns},
                                                                            reverse=True)), "",
             "Perplexity (ratio to float):", "", *method_table(rows, columns, ppl)]
    tasks = sorted({t for c in cells.values() for t in (c.get("zeroshot") or {})})
    for task in tasks:
        metric = shown_metric(task)

        def accuracy(key):
            scored = ((cells.get(key) or {}).get("zeroshot") or {}).get(task)
            return f"{100 * scored[metric]:.1f}" if scored else "not run"

        n_docs = {c["zeroshot"][task]["n_docs"] for c in cells.values() if task in (c.get("zeroshot") or {})}
        lines += ["", f"{task} zero-shot {metric} (%, {'/'.join(str(n) for n in sorted(n_docs))} documents); float "
                  f"{accuracy('float')}:", "", *method_table(rows, columns, accuracy)]
    lines += ["", "Quantization time (wall, shared cores):", "", *method_table(rows, columns, seconds)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a tritium named model or a local HF folder")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"rows, from {', '.join(ROWS)}")
    parser.add_argument("--columns", default=",".join(COLUMNS), help=f"columns, from {', '.join(COLUMNS)}")
    parser.add_argument("--limit", type=int, default=16, help="the first N WikiText-2 test chunks (every cell)")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--calib-samples", type=int, help="calibration samples of every cell instead of its recipe's")
    parser.add_argument("--calib-seqlen", type=int, help="calibration sample length instead of the recipe's")
    parser.add_argument("--data", default=os.environ.get("TRITIUM_DATA"))
    parser.add_argument("--zeroshot", help="zero-shot tasks scored on every cell too, comma separated (piqa,arc_easy)")
    parser.add_argument("--zeroshot-limit", type=int, help="the first N documents of each zero-shot task")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--rot-online", choices=("down_proj", "all", "none"), default="down_proj",
                        help="+rot rows: the online Hadamards added after R1/R2 (down_proj: R4)")
    parser.add_argument("--recipe", action="append", metavar="METHOD=RECIPE",
                        help="run METHOD's cells with this recipe (a name or YAML path) instead of its shipped one; "
                             "repeatable")
    parser.add_argument("--fresh", action="store_true", help="run every cell again, ignoring --out's JSON")
    parser.add_argument("--out", default="bench/results/wa.md")
    args = parser.parse_args(argv)
    try:
        rows = names(args.methods, ROWS, "--methods")
        columns = names(args.columns, COLUMNS, "--columns")
        for flag, value in (("--limit", args.limit), ("--seqlen", args.seqlen), ("--threads", args.threads),
                            ("--calib-samples", args.calib_samples), ("--calib-seqlen", args.calib_seqlen),
                            ("--zeroshot-limit", args.zeroshot_limit)):
            if value is not None and value < 1:
                raise BenchInputError(f"{flag} must be at least 1, got {value}")
        recipes = method_recipes(args)
        tasks = zeroshot_tasks(args)
        if args.zeroshot_limit is not None and not tasks:
            raise BenchInputError("--zeroshot-limit needs --zeroshot TASKS")
        from tritium.recipes import load_recipe

        for recipe in recipes.values():  # a wrong path fails here, not after the float model is scored
            try:
                load_recipe(recipe)
            except ValueError as err:
                raise BenchInputError(str(err)) from err
    except BenchInputError as err:
        parser.error(str(err))
    out = Path(args.out)
    from tritium.data import require_data_file
    from tritium.utils.runs import claim_output

    claim_output(out, Path(__file__).name, overwrite=True)  # a second bench on the same --out is refused
    require_data_file("wikitext2", "test", args.data)
    require_data_file("wikitext2", "valid", args.data)  # the calibration text of the calibrated cells
    zeroshot_docs = load_zeroshot_docs(args)  # a missing task file fails here, before any cell

    import torch

    from tritium.data import load_eval_text
    from tritium.eval.perplexity import tokenize_eval_text
    from tritium.models import load_model
    from tritium.utils.io import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    json_path = out.with_suffix(".json")
    saved = {} if args.fresh or not json_path.is_file() else json.loads(json_path.read_text())
    command = " ".join(["python bench/bench_wa.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"model": args.model, "seqlen": args.seqlen, "limit": args.limit, "command": command,
              "rot_online": args.rot_online, "method_recipes": recipes,
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cells": {}}
    kept = {k: c for k, c in (saved.get("cells") or {}).items() if keeps(c, args)}

    float_model, tokenizer, _ = load_model(args.model)
    tokens = tokenize_eval_text(tokenizer, load_eval_text("wikitext2", args.data))
    plan = [("float", None)]
    plan += [(f"rtn-weights-W{b}", cell_recipe(f"rtn-weights-W{b}", None, args))
             for b in sorted({COLUMNS[c][0] for c in columns}, reverse=True)]
    # column-major: the first column fills in first on a long run
    plan += [(f"{row}|{column}", cell_recipe(row, column, args)) for column in columns for row in rows]
    # Cells of the same model and chunks outside this run's rows and columns stay in the JSON, so a
    # narrower run (the cells that matter first) does not throw away a wider one's table.
    planned = dict(plan)
    # Kept cells go in up front, so that a run killed before it reaches them still writes them back.
    report["cells"] = {k: c for k, c in kept.items() if k not in planned or c.get("recipe") == planned[k]}
    for key, recipe in plan:
        if key in report["cells"]:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {key}", file=sys.stderr, flush=True)
        try:
            cell = run_cell(float_model, tokenizer, tokens, key, recipe, args, zeroshot_docs=zeroshot_docs)
        except Exception as err:  # noqa: BLE001 - one failed cell is reported, the others still run
            cell = {"key": key, "recipe": recipe, "error": f"{type(err).__name__}: {err}"}
        cell["settings"] = settings_of(args)
        report["cells"][key] = cell
        atomic_write_json(json_path, report)
        atomic_write_text(out, markdown(report, rows, columns))
    atomic_write_json(json_path, report)
    atomic_write_text(out, markdown(report, rows, columns))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
