"""``tritium distill``: distillation into a ternary (DLT) or uniform QAT student from the command line
(its flags: tritium.cli.distill)."""

from __future__ import annotations

import sys
import time


def _recipe_from_args(args) -> dict:
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe)
    if recipe.get("method") != "dlt":
        from ..recipes import RecipeError

        raise RecipeError(f"recipe {args.recipe!r} is for method {recipe.get('method')!r}; distill needs a dlt recipe "
                          "such as ternaryllm")
    grid = dict(recipe["grid"])
    if args.group is not None:
        grid["group"] = args.group
    if args.variant:
        grid["variant"] = args.variant
    if args.bits is not None:
        if grid.get("kind", "uniform") != "uniform":
            from ..recipes import RecipeError

            raise RecipeError(f"--bits applies to a uniform grid; recipe {args.recipe!r} trains "
                              f"{grid.get('kind')}: use a qat-* recipe such as qat-w2g128-cpu")
        grid["bits"] = args.bits
    recipe["grid"] = grid
    margs = recipe["method_args"] = dict(recipe.get("method_args") or {})
    train = margs["train"] = dict(margs.get("train") or {})
    optim = train["optim"] = dict(train.get("optim") or {})
    loss = margs["loss"] = dict(margs.get("loss") or {})
    data = margs["data"] = dict(margs.get("data") or {})
    if args.tokens is not None:
        train["tokens"], train["steps"] = args.tokens, None
    if args.steps is not None:
        train["steps"], train["tokens"] = args.steps, None
    for key, value in [("micro_batch_size", args.micro_batch_size), ("grad_accum", args.grad_accum),
                       ("checkpoint_every", args.checkpoint_every), ("eval_every", args.eval_every),
                       ("gradient_checkpointing", args.gradient_checkpointing), ("device", args.device),
                       ("precision", args.precision)]:
        if value is not None:
            train[key] = value
    if args.no_progress:
        train["progress"] = False
    for key, value in [("lr", args.lr), ("lr_quant", args.lr_quant)]:
        if value is not None:
            optim[key] = value
    for key, value in [("off_weight", args.off_weight), ("kl_weight", args.kl_weight), ("ce_weight", args.ce_weight)]:
        if value is not None:
            loss[key] = value
    if args.train_data is not None:
        data["sources"] = args.train_data
    if args.train_seqlen is not None:
        data["seqlen"] = args.train_seqlen
    if args.init_from:
        margs["init_from"] = args.init_from
    if args.trainable:
        margs["trainable"] = args.trainable
    if getattr(args, "start_latents", None):
        margs["start_latents"] = args.start_latents
    for key, value in [("datasets", args.eval), ("zeroshot", args.zeroshot), ("limit", args.limit),
                       ("zeroshot_limit", args.zeroshot_limit), ("seqlen", args.seqlen),
                       ("batch_size", args.batch_size), ("scorers", args.harness)]:
        if value is not None:
            recipe["eval"][key] = value
    from ..eval.harness import check_scorers

    check_scorers(recipe["eval"].get("scorers"), recipe["eval"].get("zeroshot"))
    return recipe


def cmd_distill(args) -> int:
    import torch

    from ..eval.perplexity import tokenize_eval_text
    from ..eval.report import markdown_table, write_report
    from ..export.hf import save_fake_quantized
    from ..methods import config_from_dict
    from ..models import load_model
    from ..quant.grids import grid_to_dict
    from ..data import load_eval_text
    from .steps import evaluate, float_row, peak_rss_megabytes, quantized_row
    from ..utils.io import folder_bytes
    from ..utils.runs import claim_run_folder, job_settings
    from ..train.data import check_training_sources
    from ..train.distill import distill, train_result_summary

    recipe = _recipe_from_args(args)
    from .preflight import preflight_distill, preflight_loaded_model

    preflight_distill(args, recipe)
    # fails before the model loads, as does an --init-from on another grid (only its config.json is read)
    config = config_from_dict("dlt", recipe["grid"], **recipe["method_args"])
    data = config.data_config()  # an evaluation split in the training data fails here, by content, whatever its name
    check_training_sources(data.sources, data.text_field, args.data_dir)

    from ..utils.hardware import warn_if_emulated_bf16
    from ..train.trainer import Trainer

    # said before the model loads and the float model is evaluated, not only when training starts
    planned = config.train_config()
    warn_if_emulated_bf16(planned.precision, Trainer._pick_device(planned.device))
    tag = recipe.get("name") or "distill"
    # The same job unfinished continues (the training checkpoint in it resumes, unless --no-resume).
    out = claim_run_folder(args.out, "distill", job_settings(args), args.overwrite, (args.model, tag)).path
    progress = not args.no_progress
    print(f"tritium: loading {args.model}", file=sys.stderr)
    model, tokenizer, source = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    preflight_loaded_model(model, tokenizer)
    rows, token_cache = [], {}
    settings = recipe["eval"]
    if not args.no_float:
        print("tritium: evaluating the float model", file=sys.stderr)
        rows.append(float_row(model, tokenizer, settings, args.data_dir, progress, token_cache))
    eval_ids = None
    train_cfg = config.train_config()
    if train_cfg.eval_every and settings.get("datasets"):
        name = settings["datasets"][0]
        if name not in token_cache:
            token_cache[name] = tokenize_eval_text(tokenizer, load_eval_text(name, args.data_dir))
        eval_ids = token_cache[name]
    start = time.perf_counter()
    print(f"tritium: distilling into {config.grid.describe()} (run folder {out})", file=sys.stderr)
    result, train = distill(model, tokenizer, config, out / "train", eval_ids=eval_ids, data_path=args.data_dir,
                            resume=not args.no_resume)
    print("tritium: evaluating the distilled model", file=sys.stderr)
    evaluation = evaluate(model, tokenizer, settings, args.data_dir, progress, token_cache)
    file_bytes = None
    if not args.no_save:
        save_fake_quantized(model, tokenizer, out / "model", result.method, grid_to_dict(result.grid), config.skip,
                            result.method_args, weights=result.weights)
        file_bytes = folder_bytes(out / "model")
    rows.append(quantized_row(model, result, evaluation, file_bytes, time.perf_counter() - start))
    summary = {"title": f"{args.model} {tag}", "model": str(args.model), "source": source.describe(),
               "recipe": recipe, "training": train_result_summary(train), "log": str(out / "train" / "log.jsonl"),
               "peak_rss_mb": peak_rss_megabytes(),
               "notes": ["training data never includes a test split; the training log holds loss parts per step"]}
    json_path, md_path = write_report(out, summary, rows)
    print(markdown_table(rows), end="")
    print(f"\nresults: {md_path}  {json_path}" + ("" if args.no_save else f"\nmodel:   {out / 'model'}"))
    return 0
