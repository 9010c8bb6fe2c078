"""Preflight: every check a job can make before it evaluates, calibrates or trains anything.

Each refusal is a :class:`PreflightError` (a TritiumError: the CLI prints it and exits 2) that names
the problem and its fix. What needs only the model's config (widths, context, architecture) is read
from config.json or the GGUF header, so a bad group size fails in a second, not after the model loads
and the float model's evaluation; what needs the model or its tokenizer runs right after loading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import TritiumError


class PreflightError(TritiumError, ValueError):
    """A job that cannot succeed as asked; the message says what to change."""


@dataclass(frozen=True)
class ModelShape:
    """What preflight knows of a model without its weights."""

    model_type: str | None
    input_widths: dict[str, int]  # linear kind (q_proj, down_proj, ...) -> its input width
    context: int | None
    vocab_size: int | None
    hidden_size: int | None = None  # the embedding's width
    architectures: tuple[str, ...] = ()  # config.json's HF class names (none for a GGUF file)
    activation: str | None = None  # the MLP's (hidden_activation or hidden_act); None from a GGUF file
    head_dim: int | None = None  # the attention head's width (R3 rotates it)

    def config_fields(self) -> dict:
        """What :func:`~tritium.export.gguf.check_gguf_config` reads, as config.json has it."""
        known = {"model_type": self.model_type, "architectures": self.architectures}
        if self.activation is not None:  # a GGUF header names none: the loaded model's is checked then
            known["hidden_act"] = self.activation
        return known


_GGUF_LINEARS = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
                 "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}


def model_shape(model: str) -> ModelShape | None:
    """The widths and context of ``model`` from its config alone; None when that cannot be read cheaply
    (a hub id, an unusual config): the checks then run on the loaded model instead."""
    from ..models.loader import resolve_model_source

    try:
        source = resolve_model_source(model)
    except TritiumError:
        return None  # load_model reports a missing model with everything it tried
    if source.gguf_file:
        return _gguf_shape(Path(source.location) / source.gguf_file)
    if source.kind != "folder":
        return None
    try:
        config = json.loads((Path(source.location) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    top = config if isinstance(config, dict) else {}
    config = config.get("text_config", config) if isinstance(config, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("hidden_size"), int):
        return None
    hidden, heads = config["hidden_size"], config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if heads else None)
    widths = {name: hidden for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")}
    if heads and head_dim:
        widths["o_proj"] = heads * head_dim
    if isinstance(config.get("intermediate_size"), int):
        widths["down_proj"] = config["intermediate_size"]
    return ModelShape(config.get("model_type"), widths, config.get("max_position_embeddings"),
                      config.get("vocab_size"), hidden, tuple(top.get("architectures") or ()),
                      config.get("hidden_activation") or config.get("hidden_act"),
                      head_dim if isinstance(head_dim, int) else None)


def _gguf_shape(path: Path) -> ModelShape | None:
    from ..utils.gguf_file import read_gguf_layout

    try:
        layout = read_gguf_layout(path)
    except (TritiumError, OSError, ValueError):
        return None  # load_model checks the file and says what is wrong with it
    arch = layout.fields.get("general.architecture")
    arch = arch.value if arch is not None else None
    context = layout.fields.get(f"{arch}.context_length")
    widths = {}
    for tensor in layout.tensors:
        parts = tensor.name.split(".")  # blk.<i>.<kind>.weight, shape fastest dimension first
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_LINEARS and parts[3] == "weight":
            widths[_GGUF_LINEARS[parts[2]]] = int(tensor.shape[0])
    vocab = layout.fields.get(f"{arch}.vocab_size")
    hidden = layout.fields.get(f"{arch}.embedding_length")
    heads = _int_value(layout.fields.get(f"{arch}.attention.head_count"))
    head_dim = _int_value(layout.fields.get(f"{arch}.attention.key_length"))
    if head_dim is None and heads and hidden is not None:
        head_dim = _int_value(hidden) // heads
    return ModelShape(arch, widths, _int_value(context), _int_value(vocab), _int_value(hidden), head_dim=head_dim)


def _int_value(field) -> int | None:
    return int(field.value) if field is not None else None


# --------------------------------------------------------------------------- the checks


def check_group_divides(grid, widths: dict[str, int]) -> None:
    """A group size must divide every quantized input width, unless the grid allows a ragged last group;
    a GGUF grid's type falls back per linear instead, so only a width no fallback fits is refused."""
    if getattr(grid, "kind", None) == "gguf":
        from ..quant.grids import gguf_fallback_grid

        for name, width in sorted(widths.items()):
            gguf_fallback_grid(grid, width, name)
        return
    group = getattr(grid, "group", None)
    if not isinstance(group, int) or getattr(grid, "ragged_groups", False):
        return
    bad = {name: width for name, width in sorted(widths.items()) if width % group}
    if bad:
        all_widths = sorted(set(widths.values()))
        fits = [g for g in (256, 128, 64, 32, 16) if all(w % g == 0 for w in all_widths)]
        raise PreflightError(
            f"group size {group} does not divide the input width of "
            + ", ".join(f"{name} ({width})" for name, width in bad.items())
            + f" (the model's widths are {', '.join(map(str, all_widths))}): pass --group "
            + (" or ".join(map(str, fits[:3])) if fits else "channel")
            + ", or allow a shorter last group with --ragged-groups")


def recipe_gguf_grids(recipe: dict) -> list[str]:
    """The GGUF grids (``gguf:q2_k``, ...) a quantize recipe puts linears on: its grid, its grid_overrides and
    its bit budget's candidate grids."""
    from ..quant.grids import GGUFBlockGrid, grid_from_dict

    method_args = recipe.get("method_args") or {}
    specs = [recipe["grid"], *(method_args.get("grid_overrides") or {}).values(),
             *(method_args.get("candidate_grids") or ())]
    grids = [spec if not isinstance(spec, dict) else grid_from_dict(spec) for spec in specs]
    return sorted({g.describe() for g in grids if isinstance(g, GGUFBlockGrid)})


def check_gguf_architecture(recipe: dict, config: dict, what: str) -> None:
    """A GGUF grid only pays off in a GGUF file: a model whose family tritium cannot write as GGUF (by its
    config.json's model_type, architectures and activation) is refused before its weights load."""
    gguf_grids = recipe_gguf_grids(recipe)
    if not gguf_grids:
        return
    from ..export.gguf import GGUFExportError, check_gguf_config

    try:
        check_gguf_config(config, what, fix="quantize it on a uniform grid instead (e.g. --grid uniform --bits 4 "
                                            "--group 128) and export that with --format compressed-tensors")
    except GGUFExportError as err:
        raise PreflightError(f"{', '.join(gguf_grids)} quantizes for llama.cpp's GGUF format, which tritium cannot "
                             f"write for this model: {err}") from None


def check_activation_group_divides(act_grid, widths: dict[str, int]) -> None:
    """An activation group size must divide the input width of every quantized linear (see
    :func:`tritium.methods.base.check_activation_groups`, the loaded model's exact form)."""
    from ..methods.base import check_activation_groups
    from ..quant.grids import QuantConfigError

    try:
        check_activation_groups(act_grid, widths)
    except QuantConfigError as err:
        raise PreflightError(str(err)) from None


def packed_activation_reason(weight_grid, act_grid) -> str | None:
    """Why tritium's packed kernels cannot run ``weight_grid`` with inputs on ``act_grid`` (None: they can).

    The kernel layer answers through ``tritium.kernels.activation_kernel_reason``; a tritium without that
    function has float-activation kernels only, so every activation grid is refused."""
    from .. import kernels

    reason_for = getattr(kernels, "activation_kernel_reason", None)
    if reason_for is None:
        return "this tritium's packed kernels take float activations only"
    return reason_for(weight_grid, act_grid)


def check_online_recipe(recipe: dict):
    """A recipe's online rotations and KV-cache bits (None: off), refused where the job cannot follow them: the
    e2e step trains a student without them. The widths are checked against the model's config by the caller."""
    from ..recipes import online_rotation_of

    online = online_rotation_of(recipe)
    if online is not None and recipe.get("e2e") is not None:
        raise PreflightError(f"the recipe's e2e step trains scales without online rotations or a quantized KV "
                             f"cache; it cannot yet follow a recipe that adds them ({online.describe()}): drop its "
                             "e2e section, or online_rotation and kv_bits (--online-rotation, --kv-bits)")
    return online


def check_activation_recipe(recipe: dict, save_format: str | None):
    """A recipe that quantizes activations (its act_* keys, already checked by the Recipe) against what the job
    does with it: the packed format only where the kernels run that activation grid on every linear's weight
    grid, and no e2e step (it trains with float activations). Returns the activation grid (None: weights only)."""
    from ..quant.grids import grid_from_dict
    from ..recipes import activation_grid_of

    act_grid = activation_grid_of(recipe)
    if act_grid is None:
        return None
    if recipe.get("e2e") is not None:
        raise PreflightError("the recipe's e2e step tunes scales with float activations; it cannot yet follow a "
                             f"recipe that quantizes activations ({act_grid.describe()}): drop its e2e section, or "
                             "--act-bits")
    if save_format == "packed":
        overrides = (recipe.get("method_args") or {}).get("grid_overrides") or {}
        for weight_grid in [grid_from_dict(recipe["grid"]),
                            *(grid_from_dict(g) if isinstance(g, dict) else g for g in overrides.values())]:
            reason = packed_activation_reason(weight_grid, act_grid)
            if reason is not None:
                raise PreflightError(f"--format packed cannot hold {weight_grid.describe()} weights with "
                                     f"{act_grid.describe()} activations: {reason}. Pass --format fake (float weights "
                                     "on the grid; tritium quantizes the activations again when it loads the folder), "
                                     "or --no-save")
    return act_grid


def check_context(seqlen: int | None, context: int | None, flag: str) -> None:
    if seqlen is not None and context is not None and seqlen > context:
        raise PreflightError(f"{flag} {seqlen} is longer than the model's context of {context} tokens: "
                             f"pass {flag} {context} or less")


def check_eval_context(settings: dict, context: int | None) -> None:
    """Perplexity chunks no longer than the context: otherwise the evaluation after quantizing or training fails."""
    if settings.get("datasets"):
        check_context(settings.get("seqlen"), context, "--seqlen")


def check_positive(value, flag: str, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise PreflightError(f"{flag} {value} is not a positive whole number: {what}")


def check_eval_settings(settings: dict) -> None:
    """What the recipe's own checks (positive sizes and limits, :class:`~tritium.recipes.EvalSpec`) leave to a job:
    a perplexity chunk of two tokens at least, and zero-shot tasks tritium's scorer knows."""
    from ..eval.zeroshot import check_task

    if "tritium" in (settings.get("scorers") or ["tritium"]):  # lm-eval's tasks are check_scorers'
        for task in settings.get("zeroshot") or ():
            check_task(task)
    seqlen = settings.get("seqlen")
    if seqlen is not None and (not isinstance(seqlen, int) or seqlen < 2):
        raise PreflightError(f"--seqlen {seqlen} is too short: a perplexity chunk needs at least 2 tokens")


def check_device(device: str | None) -> None:
    """A device this torch can use: ``cuda`` on a CPU-only build is refused here, not by torch's assertion."""
    if not device or device in ("cpu", "auto"):
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise PreflightError(f"--device {device!r} is not a device torch knows ({err}): pass cpu or cuda") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise PreflightError(f"--device {device} asks for a GPU, but this torch "
                                 + ("was built without CUDA" if torch.version.cuda is None else "sees no CUDA device")
                                 + ": pass --device cpu, or install a CUDA build of torch on a machine with a GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise PreflightError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s); "
                                 f"pass cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise PreflightError(f"--device {device} is not available on this machine: pass --device cpu")


def check_writable(out: str | os.PathLike | None, flag: str = "--out") -> None:
    """The output's nearest existing folder must be writable, or the job would fail at its first write."""
    if out is None:
        return
    path = Path(out).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir() and existing != path:
        raise PreflightError(f"{flag} {out}: {existing} is a file, not a folder: choose another {flag}")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PreflightError(f"{flag} {out} cannot be written: {folder} is not writable by this user; choose a "
                             f"{flag} in a folder you can write (or fix its permissions)")


def check_vocabulary(model, tokenizer) -> None:
    """A tokenizer with more tokens than the model's embedding rows would index past them (an IndexError)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(getattr(embeddings, "weight", None), "shape", (None,))[0]
    limit = min(v for v in (vocab, rows) if v is not None) if (vocab or rows) else None
    if limit is not None and len(tokenizer) > limit:
        raise PreflightError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only {limit}: "
                             "the model and tokenizer do not belong together; pass the model's own tokenizer "
                             "(save both from the same checkpoint)")


# --------------------------------------------------------------------------- per job


def preflight_quantize(job, recipe: dict):
    """The checks of a quantize job that need no weights; returns the grid."""
    from ..models.rotation import rotation_settings
    from ..quant.grids import grid_from_dict
    from . import steps

    if job.head_type != "f16" and job.format != "packed":
        from ..pack.blocks import HeadTypeError

        raise HeadTypeError(f"--head-type {job.head_type} stores the head of a packed folder: add --format packed "
                            "(a fake-quant folder keeps float weights throughout)")
    grid = grid_from_dict(recipe["grid"])  # fail on a bad grid before the model loads
    rotation_settings(recipe.get("rotate"))  # a bad rotate value fails before the model loads
    online = check_online_recipe(recipe)
    if not job.no_save:
        steps.check_save_format(job.format, grid)
    act_grid = check_activation_recipe(recipe, None if job.no_save else job.format)
    if job.generate is not None and (not job.generate.strip() or job.generate_tokens < 1):
        raise PreflightError("--generate needs a non-empty prompt and --generate-tokens of at least 1")
    check_eval_settings(recipe["eval"])
    calib = recipe.get("calib") or {}
    calibrates = steps.needs_calibration_text(recipe)
    if calibrates:  # the sample count is the recipe's to check (CalibSpec)
        seqlen = calib.get("seqlen")
        if seqlen is not None and (not isinstance(seqlen, int) or seqlen < 2):
            raise PreflightError(f"--calib-seqlen {seqlen} is too short: a calibration sequence needs at least 2 "
                                 "tokens")
        holdout, samples = (recipe.get("method_args") or {}).get("holdout_samples"), calib.get("samples")
        if isinstance(holdout, int) and isinstance(samples, int) and 0 < samples <= holdout:
            raise PreflightError(f"holdout_samples {holdout} leaves none of the {samples} calibration samples to "
                                 "train on: lower holdout_samples or raise --calib-samples")
    check_device(job.device)
    if not job.no_save or job.out is not None:
        check_writable(job.out)
    shape = model_shape(job.model)
    if shape is not None:
        check_gguf_architecture(recipe, shape.config_fields(), str(job.model))
        method_args = recipe.get("method_args") or {}
        if not method_args.get("skip") and not method_args.get("grid_overrides"):
            check_group_divides(grid, shape.input_widths)  # with skips, the loaded model's linears decide
        if not method_args.get("skip"):
            check_activation_group_divides(act_grid, shape.input_widths)
        if online is not None:
            from ..models.online_rotation import check_online_widths

            check_online_widths(online, shape.input_widths.get("down_proj"), shape.head_dim)
        if calibrates:
            check_context(calib.get("seqlen"), shape.context, "--calib-seqlen")
    steps.check_calibration_source(recipe, job.data)  # a test split in the calibration text, by any name, fails here
    return grid


def preflight_loaded_model(model, tokenizer, recipe: dict | None = None, config=None) -> None:
    """The checks that need the model or tokenizer, right after loading and before any evaluation;
    ``config``: the recipe's method config (``steps.prepare_config``), whose linears' groups are checked."""
    check_vocabulary(model, tokenizer)
    if recipe is None:
        return
    from ..export.gguf import config_fields

    check_gguf_architecture(recipe, config_fields(model.config), "this model")  # for a source with no config.json
    context = model_context(model)
    from . import steps

    if steps.needs_calibration_text(recipe):
        check_context((recipe.get("calib") or {}).get("seqlen"), context, "--calib-seqlen")
    if config is not None:
        check_linear_groups(model, config)
    check_eval_context(recipe["eval"], context)


def model_context(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def check_linear_groups(model, config) -> None:
    """Every linear that will be quantized, on its own grid: the exact form of the width check."""
    from ..methods.base import selected_linears
    from ..models.adapters import decoder_layout

    for name, module in selected_linears(decoder_layout(model), config.skip).items():
        grid = config.grid_for(name)
        group = getattr(grid, "group", None)
        if getattr(grid, "kind", None) == "gguf" or (
                isinstance(group, int) and not getattr(grid, "ragged_groups", False) and module.in_features % group):
            check_group_divides(grid, {name: module.in_features})


def preflight_distill(job, recipe: dict) -> None:
    """The checks of a distill job that need no weights: the token budget and batch sizes, the evaluation
    settings, the device, the output folder, the group against the model's widths, the training seqlen."""
    from ..quant.grids import grid_from_dict

    check_budget(job.tokens, job.steps)
    act_grid = check_activation_recipe(recipe, None if job.no_save else job.format)
    if act_grid is not None and recipe.get("act_clip_search"):
        raise PreflightError("act_clip_search chooses clipping ratios on calibration data before a method runs, "
                             "which distill does not have: set one act_clip_ratio instead (or none), or search with "
                             "`tritium quantize`")
    method_args = recipe.get("method_args") or {}
    train = method_args.get("train") or {}
    for key, flag, what in [("tokens", "--tokens", "pass the training budget in tokens, e.g. 500k"),
                            ("steps", "--steps", "pass how many optimizer steps to train"),
                            ("micro_batch_size", "--micro-batch-size", "pass the sequences per forward pass"),
                            ("grad_accum", "--grad-accum", "pass the micro-batches per optimizer step")]:
        check_positive(train.get(key), flag, what)
    check_eval_settings(recipe["eval"])
    check_device(job.device)
    check_writable(job.out)
    grid = grid_from_dict(recipe["grid"])
    if not job.no_save:
        from .steps import check_save_format

        check_save_format(job.format, grid)
    shape = model_shape(job.model)
    if shape is not None:
        check_gguf_architecture(recipe, shape.config_fields(), str(job.model))
        if not method_args.get("skip"):
            check_group_divides(grid, shape.input_widths)
        check_context((method_args.get("data") or {}).get("seqlen"), shape.context, "--train-seqlen")


# --------------------------------------------------------------------------- pretrain, suite, ingest


def check_budget(tokens, steps) -> None:
    """One training budget, given in tokens or in steps, positive."""
    if tokens is not None and steps is not None:
        raise PreflightError(f"--tokens {tokens} and --steps {steps} are two budgets for one run: give one of them")
    check_positive(tokens, "--tokens", "pass the training budget in tokens, e.g. 500k")
    check_positive(steps, "--steps", "pass how many optimizer steps to train")


def check_not_negative(value, flag: str, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise PreflightError(f"{flag} {value} is not a whole number of 0 or more: {what}")


def check_raw_text(sources, tokenizer, train_tokenizer, val_fraction, text_field: str = "text",
                   data_path=None) -> None:
    """Raw text to tokenize: the tokenizer options agree, the sources exist, decode as text and hold no test split,
    before any tokenizer is learnt or any token written."""
    from ..data.contamination import load_fingerprints
    from ..data.documents import check_readable, check_sources, expand_sources
    from ..data.tokens import check_bpe_vocab_size, check_val_fraction, tokenizer_loader

    if tokenizer and train_tokenizer is not None:
        raise PreflightError(f"give either --tokenizer or --train-tokenizer, not both: --tokenizer {tokenizer} uses "
                             f"that tokenizer, --train-tokenizer {train_tokenizer} learns a new one from the text")
    if train_tokenizer is not None:
        check_bpe_vocab_size(train_tokenizer, "--train-tokenizer")
    if val_fraction is not None:
        check_val_fraction(val_fraction, "--val-fraction")
    if not isinstance(text_field, str) or not text_field:
        raise PreflightError(f"--text-field must name the jsonl key or column that holds the text, not {text_field!r}")
    if tokenizer:
        tokenizer_loader(tokenizer)  # a tokenizer that is nowhere fails here; loading it waits for the job
    items = expand_sources(sources, data_path)  # each one exists; none is a test split by its name
    if load_fingerprints(data_path) is None:
        check_readable(items, text_field)  # no evaluation split to compare with: read them all the same
    else:
        check_sources(items, text_field, data_path)  # reads every document, for the test splits' text


def check_same_tokenization(job, tokens) -> None:
    """A token folder fixes the tokenizer and the held-out split. Asking for others must fail: training on the
    folder anyway would silently give a model, and a report, of something other than what was asked for."""
    from ..data.documents import TrainDataError
    from ..data.tokens import load_tokenizer_spec

    redo = "pass the raw text (and a new --out) to tokenize it that way"
    if job.tokenizer and load_tokenizer_spec(job.tokenizer).get_vocab() != tokens.tokenizer().get_vocab():
        raise TrainDataError(f"{tokens.path} was tokenized with {tokens.meta.get('tokenizer')!r}, not with "
                             f"{job.tokenizer!r}: the token folder fixes the tokenizer. Drop --tokenizer, or {redo}")
    if job.val_fraction is not None and job.val_fraction != tokens.meta.get("val_fraction"):
        raise TrainDataError(f"{tokens.path} holds out {tokens.meta.get('val_fraction')} of its documents, not "
                             f"{job.val_fraction}: the token folder fixes the split. Drop --val-fraction, or {redo}")


def preflight_pretraining(job, config, eval_datasets, eval_limit=None, zeroshot_limit=None):
    """The checks of a pretrain or suite job before any tokenizing or training: the budget and batch sizes, the
    device, the output folder, the evaluation data sets, and the data: a token folder (its tokenizer and split as
    asked, no test split in it, a whole training sequence and a held-out chunk of ``config.seqlen``, a budget of
    one step at least), or raw text (see :func:`check_raw_text`). ``config``: the PretrainConfig of the (first)
    model to train. Returns the token folder, or None for raw text."""
    from ..data.documents import TrainDataError
    from ..data.sources import check_eval_source
    from ..data.tokens import TokenFolder, check_token_folder
    from ..train.pretrain import total_steps_for

    check_budget(job.tokens, job.steps)
    for value, flag, what in [(job.micro_batch_size, "--micro-batch-size", "pass the sequences per forward pass"),
                              (job.grad_accum, "--grad-accum", "pass the micro-batches per optimizer step"),
                              (job.shards, "--shards", "pass the absmean scales per ternary matrix, e.g. 1"),
                              (job.seqlen, "--seqlen", "pass the training context in tokens, e.g. 256"),
                              (eval_limit, "--limit", "pass how many chunks of each data set to evaluate"),
                              (zeroshot_limit, "--zeroshot-limit", "pass how many documents of each task to "
                                                                   "evaluate")]:
        check_positive(value, flag, what)
    check_not_negative(job.checkpoint_every, "--checkpoint-every", "pass the steps between checkpoints (0: only "
                                                                   "at the end)")
    if job.lr is not None and (isinstance(job.lr, bool) or not isinstance(job.lr, (int, float)) or not job.lr > 0):
        raise PreflightError(f"--lr {job.lr} is not a positive learning rate: pass e.g. 1e-3, or leave it out for the "
                             "recipe's rate for the size")
    check_device(job.device)
    check_writable(job.out)
    for name in eval_datasets or ():
        check_eval_source(name)
    if not (len(job.data) == 1 and TokenFolder.is_folder(job.data[0])):
        check_raw_text(job.data, job.tokenizer, job.train_tokenizer, job.val_fraction, data_path=job.data_dir)
        return None
    tokens = TokenFolder.open(job.data[0])
    if job.train_tokenizer is not None:
        raise TrainDataError(f"{tokens.path} is a token folder: it was tokenized already, with "
                             f"{tokens.meta.get('tokenizer')!r}, so --train-tokenizer cannot apply to it. Drop "
                             f"--train-tokenizer to train on it, or pass the raw text to tokenize it again")
    check_same_tokenization(job, tokens)
    check_token_folder(tokens, job.data_dir)  # no evaluation split in the training tokens
    for split in ("train", "val"):  # a training sequence, and a held-out chunk to evaluate on
        tokens.check_sequences(config.seqlen, split)
    total_steps_for(config)  # a token budget of less than one step
    return tokens


def preflight_ingest(job) -> None:
    """The checks of an ingest job before any tokenizer loads or is learnt: the options, the output (writable, new
    or a token folder to replace) and the sources (see :func:`check_raw_text`)."""
    from ..data.tokens import check_token_output

    if isinstance(job.seed, bool) or not isinstance(job.seed, int):
        raise PreflightError(f"--seed must be a whole number, not {job.seed!r}")
    check_writable(job.out)
    check_token_output(job.out)
    check_raw_text(job.sources, job.tokenizer, job.train_tokenizer, job.val_fraction, job.text_field)


# --------------------------------------------------------------------------- pack, run, export


@dataclass(frozen=True)
class PackPlan:
    """What a pack job found in its folder before loading the model."""

    out: Path  # the packed folder to write
    tritium_config: dict  # the folder's tritium quantization_config
    grid: object
    grid_overrides: dict


def preflight_pack(job, folder: Path, default_out: Path) -> PackPlan:
    """The checks of a pack job before the model loads, inside ``verified_folder(folder)`` (so config.json is
    the one its manifest records): the options, the folder (tritium's, not packed yet), the output (not the
    input, writable, at most an earlier pack to replace), the grid and the head type against the packed format."""
    from ..export.hf import grids_from_dicts
    from ..export.registry import get_exporter
    from ..export.source import tritium_quantization_config
    from ..models.loader import read_quantization_config
    from ..pack.blocks import check_head_type
    from ..quant.grids import grid_from_dict

    if job.format != "tritium":
        raise PreflightError(f"pack writes only format 'tritium' (packed modules), not {job.format!r}; GGUF and "
                             "compressed-tensors are written by `tritium export`")
    check_head_type(job.head_type)
    out = Path(job.out) if job.out else default_out
    qconfig = tritium_quantization_config(folder, "pack")
    if qconfig.get("format") == "packed":
        raise PreflightError(f"{folder} is already packed (format 'packed'): run it with `tritium run {folder}` or "
                             f"export it with `tritium export {folder} --gguf OUT.gguf`")
    if out.resolve() == folder.resolve():
        raise PreflightError(f"--out {out} is the folder being packed; choose another folder")
    if out.is_file():
        raise PreflightError(f"--out {out} is a file, and a packed model is a folder: choose another --out")
    if out.exists() and any(out.iterdir()):
        existing = read_quantization_config(out) or {}
        if existing.get("format") != "packed":  # only an earlier `tritium pack` may be replaced (--overwrite)
            raise PreflightError(f"{out} exists and is not a packed tritium folder; choose another --out or remove it")
    check_writable(out)
    grid, overrides = grid_from_dict(qconfig["grid"]), grids_from_dicts(qconfig.get("grid_overrides"))
    # the packed format's own checks, as `tritium export --format tritium` makes them: layout, dtypes, bits
    get_exporter("tritium").check(grid, overrides, {"ternary_layout": job.ternary_layout,
                                                    "scale_dtype": job.scale_dtype, "float_dtype": job.float_dtype})
    check_head_width(str(folder), job.head_type)
    return PackPlan(out, qconfig, grid, overrides)


def check_head_width(model: str, head_type: str | None) -> None:
    """A block head (q8_0, q4_0) needs rows that cut into blocks of 32: checked on the config's hidden size
    (the embedding's width), before the model loads; the loaded model's own check follows."""
    from ..pack.blocks import check_block_width

    shape = model_shape(model) if head_type not in (None, "f16") else None
    if shape is not None and shape.hidden_size:
        check_block_width(shape.hidden_size, head_type, "the embedding")


RUN_DTYPES = ("auto", "float32", "bfloat16", "float16")
RUN_LOOPS = ("auto", "fast", "hf")


def preflight_run(job) -> str:
    """The checks of a run job before the model loads: the sizes, the choices, the device, the model (a model,
    not a run folder) and a block head against its width. Returns the device to run on (``auto`` resolved)."""
    import torch

    from ..models.loader import resolve_model_source
    from ..pack.blocks import check_head_type

    _check_at_least_one(job.max_new_tokens, "--max-new-tokens")
    if job.threads is not None:
        _check_at_least_one(job.threads, "--threads")
    for value, flag, choices in [(job.dtype, "--dtype", RUN_DTYPES), (job.loop, "--loop", RUN_LOOPS)]:
        if value not in choices:
            raise PreflightError(f"{flag} {value!r} is unknown: choose one of {', '.join(choices)}")
    if not isinstance(job.prompt, str):
        raise PreflightError(f"--prompt must be text, not {type(job.prompt).__name__}")
    if job.head_type is not None:
        check_head_type(job.head_type)
    device = job.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise PreflightError("--device cuda: no CUDA device is available here; use --device cpu")
    check_device(device)
    check_not_a_run_folder(job.model)
    resolve_model_source(job.model)  # a missing model is named with every place tried
    check_head_width(job.model, job.head_type)
    return device


def _check_at_least_one(value, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreflightError(f"{flag} must be a whole number of at least 1, not {value!r}")
    if value < 1:
        raise PreflightError(f"{flag} must be at least 1")


def check_not_a_run_folder(model: str) -> None:
    """A `tritium quantize` run folder is not a model: name the model folders in it instead."""
    from ..models import ModelSourceError

    path = Path(model)
    if not path.is_dir() or (path / "config.json").is_file():
        return
    inside = [path / name for name in ("model", "packed") if (path / name / "config.json").is_file()]
    if inside:
        kinds = {"model": "the quantized model", "packed": "its packed form, on tritium's kernels"}
        options = " or ".join(f"`tritium run {p}` ({kinds[p.name]})" for p in inside)
        raise ModelSourceError(f"{path} is a run folder, not a model folder: run {options}")


@dataclass(frozen=True)
class ExportRequest:
    format: str
    out: str | None  # None: the format's default place beside the run
    options: dict  # the format's options that were set


def export_request(job) -> ExportRequest:
    """The format, output and format options an export job asks for; ``gguf=OUT`` is format gguf, out OUT.
    Checked on the flags alone, before the folder is read."""
    from ..export.api import export_options
    from ..export.registry import ExportError

    fmt, out = job.format, job.out
    if job.gguf is not None:
        if fmt not in (None, "gguf") or (out is not None and out != job.gguf):
            raise ExportError(f"--gguf {job.gguf} means --format gguf --out {job.gguf}; drop --gguf or the other "
                              "--format/--out")
        fmt, out = "gguf", job.gguf
    if fmt is None:
        raise ExportError("choose a format: --format compressed-tensors (vLLM), --format gguf (llama.cpp) or "
                          "--format tritium (tritium's packed folder)")
    flags = {"float_dtype": ("--float-dtype", job.float_dtype), "scale_dtype": ("--scale-dtype", job.scale_dtype),
             "type": ("--type", job.type),
             "embedding_type": ("--embedding-type", job.embedding_type),
             "allow_fallback": ("--no-fallback", False if job.no_fallback else None)}
    options = {name: value for name, (_, value) in flags.items() if value is not None}
    taken = export_options(fmt)  # an unknown format is refused here
    wrong = [flag for name, (flag, value) in flags.items() if value is not None and name not in taken]
    if wrong:
        raise ExportError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --format {fmt}")
    return ExportRequest(fmt, out, options)


def preflight_export(job, request: ExportRequest) -> Path:
    """The checks of an export job before the model loads, inside ``verified_folder``: the folder (a tritium
    run or model, with its codes), the format against its grids and option values, the output (not the input,
    nothing replaced unasked, writable). Returns the output path."""
    from ..export.api import check_folder_export

    out = check_folder_export(job.model, request.format, request.out, job.overwrite, request.options)
    check_writable(out)
    return out
