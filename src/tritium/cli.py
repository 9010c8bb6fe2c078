"""Command line: ``tritium quantize``, ``tritium eval``, ``tritium info``, ``tritium distill``,
``tritium pack``, ``tritium run``, ``tritium export``, ``tritium data``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .recipes import load_recipe, recipe_names


def _group(value: str):
    if value in ("channel", "tensor"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--group takes a positive integer, 'channel' or 'tensor', not {value!r}")


def _csv(value: str) -> list[str]:
    return [] if value.lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]


def _add_model_args(p):
    p.add_argument("--model", required=True, help="named default (smollm2-135m), HF folder, .gguf file or hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")


def _add_eval_args(p, data_flag: str = "--data"):
    """The evaluation flags every command shares. ``tritium distill`` names the evaluation data
    folder ``--data-dir``, because its ``--data`` is the training text."""
    p.add_argument("--eval", type=_csv, help="perplexity data sets, comma separated (wikitext2, ptb, a file); 'none' to skip")
    p.add_argument("--zeroshot", type=_csv, help="zero-shot tasks, comma separated (piqa, arc_easy, ...)")
    p.add_argument("--limit", type=int, help="evaluate only the first N perplexity chunks")
    p.add_argument("--zeroshot-limit", type=int, help="evaluate only the first N documents of each task")
    p.add_argument("--harness", type=_csv, help="zero-shot scorer: tritium (default), lm-eval (lm-evaluation-harness "
                                                "on tritium's local task configs), or both, comma separated")
    p.add_argument("--seqlen", type=int, help="perplexity chunk length (default 2048)")
    p.add_argument("--batch-size", type=int, help="chunks per forward pass")
    p.add_argument(data_flag, help="folder holding the evaluation data sets (overrides $TRITIUM_DATA)")
    p.add_argument("--out", help="run folder (default: a new runs/<model>-<recipe>-<time>); one holding a run "
                                 "already is refused unless it is this same job unfinished (it resumes) or --overwrite")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds another or a finished run")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritium", description="Quantize LLMs to ternary and 2/3/4 bits, and prove they still work.")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model, evaluate it beside the float model, save it")
    _add_model_args(q)
    q.add_argument("--recipe", help=f"a YAML file or a shipped recipe: {', '.join(recipe_names())}")
    q.add_argument("--method", help="quantization method (rtn, ...)")
    q.add_argument("--grid", choices=["uniform", "ternary"], help="grid kind")
    q.add_argument("--bits", type=int, help="bits of the uniform grid (2, 3, 4, 8)")
    q.add_argument("--group", type=_group, help="group size, 'channel' or 'tensor'")
    q.add_argument("--variant", help="ternary variant: absmean, twn, dlt")
    q.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--ragged-groups", action=argparse.BooleanOptionalAction, default=None,
                   help="allow a shorter last group when the group size does not divide a width")
    q.add_argument("--skip", type=_csv, help="module-name patterns kept in float, comma separated")
    q.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                   help="fold the norms and rotate the weights (QuaRot R1/R2, Hadamard) before quantizing: the same "
                        "model, weights with fewer outliers; a tied head is untied")
    q.add_argument("--bits-budget", type=float,
                   help="mixed precision: average bits per weight to spend, scales and zero points included (e.g. "
                        "2.5); each linear gets ternary, 2, 3 or 4 bits at the recipe's group, where it hurts least")
    q.add_argument("--calib", help="calibration source, e.g. wikitext2-valid or a text file")
    q.add_argument("--calib-samples", type=int)
    q.add_argument("--checkpoint-dir", help="calibrated methods: checkpoint each block here; rerun to resume")
    q.add_argument("--offload-dir", help="calibrated methods: keep the blocks not being calibrated on disk here "
                                         "(when memory is short)")
    q.add_argument("--calib-seqlen", type=int)
    q.add_argument("--no-float", action="store_true", help="skip evaluating the float model")
    q.add_argument("--no-save", action="store_true", help="do not save the quantized model")
    q.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="--format packed: storage of the parts left in float (embeddings, norms)")
    q.add_argument("--format", choices=["fake", "packed"], default="packed",
                   help="save packed codes + fp16 scales that run on tritium's kernels (packed, the default) or "
                        "float weights on the grid (fake)")
    q.add_argument("--generate", metavar="PROMPT",
                   help="end with the greedy continuation of PROMPT from the float and the quantized model")
    q.add_argument("--generate-tokens", type=int, default=24, help="tokens --generate produces (default 24)")
    from .export.cli import HEAD_TYPE_CHOICES, HEAD_TYPE_HELP

    q.add_argument("--head-type", choices=HEAD_TYPE_CHOICES, default="f16",
                   help="--format packed: " + HEAD_TYPE_HELP + "; the quantized model is evaluated with that head")
    _add_eval_args(q)

    e = sub.add_parser("eval", help="evaluate a model (float or saved by tritium)")
    _add_model_args(e)
    _add_eval_args(e)

    from .train.cli import add_distill_parser  # `tritium distill` (TernaryLLM), defined beside the trainer

    add_distill_parser(sub, _add_model_args, _add_eval_args, _group, _csv)

    from .export.cli import add_pack_parsers  # `tritium pack|run|export`, beside the exporters

    add_pack_parsers(sub)

    from .data.cli import add_data_parser  # `tritium data ingest`, beside the token folders

    add_data_parser(sub)

    from .train.cli import token_count
    from .train.pretrain_cli import add_pretrain_parsers  # `tritium pretrain|suite` (Spectra)

    add_pretrain_parsers(sub, token_count)

    i = sub.add_parser("info", help="architecture, layers, parameters and what can be quantized")
    _add_model_args(i)
    i.add_argument("--json", action="store_true")
    return parser


def _eval_settings(args, recipe_eval: dict) -> dict:
    settings = dict(recipe_eval)
    for key, value in [("datasets", args.eval), ("zeroshot", args.zeroshot), ("limit", args.limit),
                       ("zeroshot_limit", args.zeroshot_limit), ("seqlen", args.seqlen),
                       ("batch_size", args.batch_size), ("scorers", args.harness)]:
        if value is not None:
            settings[key] = value
    from .eval.harness import check_scorers

    check_scorers(settings.get("scorers"), settings.get("zeroshot"))  # before any model loads
    return settings


def _method_recipe(method: str | None) -> str | None:
    """The shipped recipe a bare ``--method`` starts from: the paper's settings where a GPU is present,
    the reduced ``-cpu`` ones otherwise (the paper's would take hours on a CPU)."""
    if not method:
        return None
    import torch

    from .recipes import recipe_names

    name = f"w2g128-{method}" + ("" if torch.cuda.is_available() else "-cpu")
    return name if name in recipe_names() else None


def _recipe_from_args(args) -> dict:
    recipe_name = args.recipe or _method_recipe(args.method)
    if recipe_name and not args.recipe:
        print(f"tritium: --method {args.method} without --recipe: starting from recipe {recipe_name}", file=sys.stderr)
    recipe = load_recipe(recipe_name)
    grid = dict(recipe["grid"])
    if args.grid and args.grid != grid.get("kind"):
        grid = {"kind": args.grid, **({"group": grid["group"]} if "group" in grid else {})}
    for key, value in [("bits", args.bits), ("group", args.group), ("variant", args.variant),
                       ("symmetric", args.symmetric), ("ragged_groups", args.ragged_groups)]:
        if value is not None:
            grid[key] = value
    recipe["grid"] = grid
    if args.method:
        recipe["method"] = args.method
    if args.rotate is not None:
        recipe["rotate"] = (recipe.get("rotate") or True) if args.rotate else False
    if args.skip is not None:
        recipe["method_args"] = {**recipe.get("method_args", {}), "skip": args.skip}
    if args.checkpoint_dir:
        recipe["method_args"] = {**recipe.get("method_args", {}), "checkpoint_dir": args.checkpoint_dir}
    if args.offload_dir:
        recipe["method_args"] = {**recipe.get("method_args", {}), "offload_dir": args.offload_dir}
    if args.bits_budget is not None:
        recipe["method_args"] = {**recipe.get("method_args", {}), "bits_budget": args.bits_budget}
    for key, value in [("source", args.calib), ("samples", args.calib_samples), ("seqlen", args.calib_seqlen)]:
        if value is not None:
            recipe["calib"][key] = value
    recipe["eval"] = _eval_settings(args, recipe["eval"])
    return recipe


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _print_table(rows):
    from .eval.report import markdown_table

    print(markdown_table(rows), end="")


def cmd_quantize(args) -> int:
    from .export.hf import save_fake_quantized
    from .eval.report import write_report
    from .models import load_model
    from .quant.grids import grid_from_dict, grid_to_dict
    from .runner import (check_calibration_source, check_save_format, evaluate, float_row, greedy_text,
                         peak_rss_megabytes, prepare_config, quantize_model, quantized_row, resume_note)
    from .utils.runs import claim_run_folder, job_settings
    from .models.rotation import rotation_settings
    from .utils.io import folder_bytes

    if args.head_type != "f16" and args.format != "packed":
        from .pack.blocks import HeadTypeError

        raise HeadTypeError(f"--head-type {args.head_type} stores the head of a packed folder: add --format packed "
                            "(a fake-quant folder keeps float weights throughout)")
    recipe = _recipe_from_args(args)
    grid = grid_from_dict(recipe["grid"])  # fail on a bad grid before the model loads
    rotation_settings(recipe.get("rotate"))  # a bad rotate value fails before the model loads
    if not args.no_save:
        check_save_format(args.format, grid)
    if args.generate is not None and (not args.generate.strip() or args.generate_tokens < 1):
        raise ValueError("--generate needs a non-empty prompt and --generate-tokens of at least 1")
    check_calibration_source(recipe, args.data)  # a test split in the calibration text, by any name, fails here
    tag = recipe.get("name") or f"{recipe['method']}-{grid.describe()}"
    out = claim_run_folder(args.out, "quantize", job_settings(args), args.overwrite, (args.model, tag)).path
    progress = not args.no_progress
    print(f"tritium: loading {args.model}", file=sys.stderr)
    model, tokenizer, source = load_model(args.model, dtype=_dtype(args.dtype), device=args.device)
    # e.g. a bit budget the model cannot reach, or a layout that cannot be rotated, fails before any evaluation
    prepare_config(model, recipe)
    from .nn import check_head_quantizable, quantize_head_

    check_head_quantizable(model, args.head_type)  # likewise a head that --head-type cannot hold
    rows, token_cache = [], {}
    if not args.no_float:
        print("tritium: evaluating the float model", file=sys.stderr)
        rows.append(float_row(model, tokenizer, recipe["eval"], args.data, progress, token_cache))
    # before quantizing: the model is quantized in place
    float_text = greedy_text(model, tokenizer, args.generate, args.generate_tokens) if args.generate else None
    budget = (recipe.get("method_args") or {}).get("bits_budget")
    print(f"tritium: quantizing with {recipe['method']} on {grid.describe()}"
          + (f", mixed precision under a {budget:g}-bit budget" if budget is not None else ""), file=sys.stderr)
    start = time.perf_counter()
    result, config = quantize_model(model, tokenizer, recipe, args.data, work_dir=out / "e2e", progress=progress)
    if args.head_type != "f16":  # before the evaluation, so the row measures the folder that is saved
        print(f"tritium: storing the embedding and LM head as {args.head_type}", file=sys.stderr)
        quantize_head_(model, args.head_type)
    print("tritium: evaluating the quantized model", file=sys.stderr)
    evaluation = evaluate(model, tokenizer, recipe["eval"], args.data, progress, token_cache)
    rows.append(quantized_row(model, result, evaluation, None, time.perf_counter() - start))
    if not args.no_save:
        if args.format == "packed":
            from .export.hf import save_packed
            from .nn import pack_model

            pack_model(model, result.weights)
            save_packed(model, tokenizer, out / "model", result.method, grid_to_dict(result.grid), config.skip,
                        result.method_args, float_dtype=args.float_dtype, grid_overrides=result.grid_overrides_dict())
        else:
            save_fake_quantized(model, tokenizer, out / "model", result.method, grid_to_dict(result.grid),
                                config.skip, result.method_args, weights=result.weights,
                                grid_overrides=result.grid_overrides_dict())
        rows[-1]["file_bytes"] = folder_bytes(out / "model")
    # after packing, so the packed kernels produce the quantized text
    quantized_text = greedy_text(model, tokenizer, args.generate, args.generate_tokens) if args.generate else None
    notes = ["size counts packed codes (ternary 1.6 bits, k-bit uniform k bits) plus fp16 scales; " + (
        "the saved model holds those packed codes (tritium.nn modules)" if args.format == "packed" else
        "the saved model holds fake-quant float weights, so its file size is that of a float checkpoint")]
    if "smollm2" in str(args.model).lower() and getattr(grid, "bits", None) == 4 and grid.group in (32, 16, 8):
        notes.append("SmolLM2's shipped weights are already 4-bit with groups of 32: this result is trivially lossless")
    notes += [note for note in [resume_note(rows[-1])] if note]
    summary = {"title": f"{args.model} {tag}", "model": str(args.model), "source": source.describe(),
               "recipe": recipe, "peak_rss_mb": peak_rss_megabytes(), "notes": notes}
    if args.generate:
        summary["generation"] = {"prompt": args.generate, "max_new_tokens": args.generate_tokens,
                                 "float": float_text, "quantized": quantized_text}
    json_path, md_path = write_report(out, summary, rows)
    _print_table(rows)
    if args.generate:
        print(f"\ngreedy continuation of {args.generate!r}:")
        if float_text is not None:
            print(f"  float:     {args.generate}{float_text}")
        print(f"  quantized: {args.generate}{quantized_text}")
    print(f"\nresults: {md_path}  {json_path}" + ("" if args.no_save else f"\nmodel:   {out / 'model'}"))
    return 0


def cmd_eval(args) -> int:
    from .eval.report import write_report
    from .eval.size import size_report
    from .methods.base import selected_linears
    from .models import decoder_layout, load_model
    from .models.loader import read_quantization_config
    from .quant.grids import grid_from_dict
    from .recipes import DEFAULT_RECIPE
    from .runner import evaluate, peak_rss_megabytes
    from .utils.io import folder_bytes
    from .utils.runs import claim_run_folder, job_settings

    settings = _eval_settings(args, DEFAULT_RECIPE["eval"])
    out = claim_run_folder(args.out, "eval", job_settings(args), args.overwrite, (args.model, "eval")).path
    start = time.perf_counter()
    model, tokenizer, source = load_model(args.model, dtype=_dtype(args.dtype), device=args.device)
    qconfig = read_quantization_config(source.location) if source.kind == "folder" else None
    if qconfig:
        from .export.hf import grids_from_dicts

        grid, overrides = grid_from_dict(qconfig["grid"]), grids_from_dicts(qconfig.get("grid_overrides"))
        names = selected_linears(decoder_layout(model), tuple(qconfig.get("modules_not_quantized") or ()))
        size = size_report(model, grid, names, overrides)
        weights = {n: m.out_features * m.in_features for n, m in names.items()}
        bits = sum(float(overrides.get(n, grid).bits) * count for n, count in weights.items()) / sum(weights.values())
        from .nn import head_type_of

        row = {"model": "quantized", "method": qconfig["method"], "bits": round(bits, 2),
               "grid": grid.describe() + (f" ({len(overrides)} linears on their own grids)" if overrides else ""),
               "group": grid.group, "storage": "fake-quant (float weights on the grid)",
               "head": head_type_of(model)}
        if qconfig.get("format") == "packed":  # what the packed modules really hold, beside the Spectra count
            from .eval.size import packed_storage

            row["stored_bits_per_weight"], row["storage"] = packed_storage(model)
    elif source.gguf_file:  # dequantized to float for the evaluation, but stored in GGUF types
        from .eval.size import gguf_size_report

        size, types, storage = gguf_size_report(Path(source.location) / source.gguf_file)
        row = {"model": "gguf", "method": "/".join(types), "bits": round(size.linear_bits_per_weight, 2),
               "group": None, "storage": storage, "gguf_types": types}
    else:
        size = size_report(model)
        row = {"model": "float", "method": "none", "bits": 16, "group": None}
    if row.get("storage"):
        print(f"tritium: {args.model} stores {row['storage']}", file=sys.stderr)
    row |= evaluate(model, tokenizer, settings, args.data, not args.no_progress)
    file_bytes = None
    if source.kind != "hub":
        file_bytes = folder_bytes(Path(source.location) / (source.gguf_file or ""))
    row |= {"size": size.to_dict(), "file_bytes": file_bytes, "seconds": time.perf_counter() - start}
    summary = {"title": f"eval {args.model}", "model": str(args.model), "source": source.describe(),
               "eval": settings, "peak_rss_mb": peak_rss_megabytes()}
    json_path, md_path = write_report(out, summary, [row])
    _print_table([row])
    print(f"\nresults: {md_path}  {json_path}")
    return 0


def cmd_info(args) -> int:
    from .models import decoder_layout, load_model
    from .models.adapters import UnsupportedArchitectureError

    model, _, source = load_model(args.model, dtype=_dtype(args.dtype), device=args.device)
    config = model.config
    info = {"source": source.describe(), "architecture": type(model).__name__, "model_type": config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
            "context": getattr(config, "max_position_embeddings", None),
            "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False))}
    try:
        layout = decoder_layout(model)
        linears = layout.quantizable_linears()
        widths = sorted({m.in_features for m in linears.values()})
        info |= {"quantizable_linears": len(linears),
                 "quantizable_parameters": sum(m.weight.numel() for m in linears.values()),
                 "linear_shapes": sorted({f"{n.rsplit('.', 1)[-1]}: {tuple(m.weight.shape)}" for n, m in linears.items()}),
                 "input_widths": widths,
                 "group_sizes_that_divide_all_widths": [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)],
                 "kept_float": ["embed_tokens", "lm_head" + (" (tied)" if info["tied_embeddings"] else ""), "norms"]}
    except UnsupportedArchitectureError as err:
        info["quantizable"] = str(err)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:36s} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .export.cli import cmd_export, cmd_pack, cmd_run
    from .train.cli import cmd_distill
    from .data.cli import cmd_data
    from .train.pretrain_cli import cmd_pretrain, cmd_suite

    handlers = {"quantize": cmd_quantize, "eval": cmd_eval, "info": cmd_info, "distill": cmd_distill,
                "pack": cmd_pack, "run": cmd_run, "export": cmd_export, "data": cmd_data,
                "pretrain": cmd_pretrain, "suite": cmd_suite}
    from .utils.errors import TritiumError
    from .utils.progress import set_progress_bars
    from .utils.runs import run_session

    set_progress_bars(not getattr(args, "no_progress", False))  # every bar, tritium's and the libraries'
    try:
        from .kernels.cpu import check_path_request

        check_path_request()  # a bad TRITIUM_CPU_PATH fails here, not after loading and calibrating
        with run_session() as session:  # the run folders the command claims are closed however it ends
            code = handlers[args.command](args)
            session.failed = code != 0
        return code
    # ValueError: older input checks not yet converted to a TritiumError subclass.
    except (TritiumError, ValueError) as err:
        print(f"tritium: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
