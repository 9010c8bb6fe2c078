"""Peer comparison: Intel auto-round (SignRound) beside tritium's float and RTN rows, scored by tritium.

For each of ``--bits`` (asymmetric, groups of 128) the script quantizes one float model
three ways in one run and scores every row with tritium's perplexity on the same chunks
of each ``--datasets`` test set (WikiText-2 by default; ``wikitext2,ptb`` adds a PTB column):

- float: the model as loaded (fp32, CPU);
- tritium RTN: the shipped ``w2g128-rtn`` recipe with its grid's bits set to ``--bits``;
- tritium recipes (``--recipes``, e.g. ``w3g128-cpu,w2g128-cpu``): each run whole (E2E step
  included) as ``tritium quantize --recipe`` runs it, timed beside auto-round on the same machine;
- auto-round: ``auto_round.AutoRound`` on the CPU with its SignRound algorithm (or
  SignRound after its QuaRot rotation with ``--alg quarot``), fed the exact token ids of
  tritium's calibration samples, and evaluated as auto-round leaves the model: plain
  ``nn.Linear`` layers holding its quantize-dequantized weights.

    python bench/bench_autoround.py --bits 2 --iters 10 --limit 2 --out bench/results/autoround-smoke.md
    python bench/bench_autoround.py --bits 3,2 --iters 25 --out bench/results/autoround.md
    python bench/bench_autoround.py --bits 2,3 --iters 10 --recipes w2g128-cpu,w3g128-cpu --limit 16 \
        --threads 2 --out bench/results/autoround-w2w3.md

``--iters`` is auto-round's number of SignRound steps per block; quantization time is
about blocks × (iters × s/iter + a fixed cost per block), so the report gives the
measured s/iter and the iters that would fit ``--time-budget`` at that rate.

auto-round is not a tritium dependency: ``pip install 'tritium[compare]'``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import re
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

GROUP = 128
SUPPORTED_BITS = (2, 3, 4)
ALGORITHMS = ("signround", "quarot")
RTN_RECIPE = "w2g128-rtn"
CALIB_SOURCE = "wikitext2-valid"


class BenchInputError(ValueError):
    """A flag or the environment cannot work; the message names the fix."""


# --------------------------------------------------------------------------- checks before any work


def parse_bits(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise BenchInputError(f"--bits takes integers separated by commas, such as 2,3; got {text!r}") from None
    wrong = [b for b in bits if b not in SUPPORTED_BITS]
    if not bits or wrong:
        raise BenchInputError(f"--bits must be a list drawn from {SUPPORTED_BITS}, got {text!r}")
    return bits


def load_recipes(text: str | None) -> list[tuple[str, dict]]:
    """The ``--recipes`` list, each read and checked by tritium's schema before the model loads."""
    from tritium.recipes import load_recipe
    from tritium.utils.errors import TritiumError

    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    recipes = []
    for name in names:
        try:
            recipe = load_recipe(name)
        except TritiumError as err:
            raise BenchInputError(f"--recipes: {err}") from None
        if recipe["grid"].get("kind") != "uniform":
            raise BenchInputError(f"--recipes: {name} quantizes to a {recipe['grid'].get('kind')} grid; "
                                  "auto-round's rows are uniform integer grids, so compare uniform recipes")
        recipes.append((name, recipe))
    return recipes


def import_auto_round():
    try:
        import auto_round
    except ImportError as err:
        raise BenchInputError(
            f"auto-round is not importable ({err}): install it with `pip install 'tritium[compare]'` "
            "(or `pip install 'auto-round>=0.16'`)"
        ) from err
    return auto_round


def check_args(args) -> None:
    for flag, value, least in (("--iters", args.iters, 1), ("--nsamples", args.nsamples, 1), ("--seqlen", args.seqlen, 2),
                               ("--eval-seqlen", args.eval_seqlen, 2), ("--batch-size", args.batch_size, 1),
                               ("--time-budget", args.time_budget, 1)):
        if value < least:
            raise BenchInputError(f"{flag} must be at least {least}, got {value}")
    if args.limit is not None and args.limit < 1:
        raise BenchInputError(f"--limit must be a positive number of chunks, got {args.limit}")
    if args.threads is not None and args.threads < 1:
        raise BenchInputError(f"--threads must be at least 1, got {args.threads}")
    from tritium.data import require_data_file

    # Both splits must exist before the model loads: calibration reads valid, the score reads test.
    require_data_file("wikitext2", "valid", args.data)
    for dataset in parse_datasets(args.datasets):
        require_data_file(dataset, "test", args.data)


PERPLEXITY_SETS = ("wikitext2", "ptb")


def parse_datasets(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PERPLEXITY_SETS]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchInputError(f"--datasets takes distinct names from {PERPLEXITY_SETS} separated by commas, "
                              f"such as wikitext2,ptb; got {text!r}")
    return names


# --------------------------------------------------------------------------- facts for the report


def machine() -> dict:
    from tritium.utils.hardware import cpu_flags, cpu_name

    return {"cpu": cpu_name(),
            "simd_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def versions(auto_round) -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "auto_round": getattr(auto_round, "__version__", "unknown")}


def token_digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- rows


def score(model, eval_ids: dict[str, torch.Tensor], args) -> dict:
    """Perplexity on every ``--datasets`` entry; ``ppl`` is the first one's (WikiText-2 by default), and
    ``ppl_<name>`` each of the others'."""
    from tritium.eval.perplexity import perplexity

    start = time.perf_counter()
    row = {}
    for index, (dataset, ids) in enumerate(eval_ids.items()):
        result = perplexity(model.float(), ids, seqlen=args.eval_seqlen, limit=args.limit, dataset=dataset,
                            progress=False)
        key = "ppl" if index == 0 else f"ppl_{dataset}"
        row[key] = result.ppl
        row["n_chunks" if index == 0 else f"n_chunks_{dataset}"] = result.n_chunks
    row["eval_seconds"] = time.perf_counter() - start
    return row


def tritium_grid(bits: int):
    from tritium.quant.grids import grid_from_dict

    return grid_from_dict({"kind": "uniform", "bits": bits, "group": GROUP, "symmetric": False, "ragged_groups": True})


def tritium_row(float_model, tokenizer, recipe: dict, eval_ids, args) -> tuple[dict, dict]:
    """``recipe`` run whole (rotation, PTQ method, E2E step) on a copy of the float model, timed and
    scored; returns the row's common fields and the result's details."""
    import tempfile

    from tritium.eval.size import size_report
    from tritium.jobs.steps import prepare_config, quantize_model

    model = copy.deepcopy(float_model)
    prepare_config(model, recipe)  # the checks ``tritium quantize`` makes once the model is loaded
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-autoround-") as work:
        result, _ = quantize_model(model, tokenizer, recipe, args.data, work_dir=Path(work) / "e2e", progress=False)
    seconds = time.perf_counter() - start
    size = size_report(model, result.grid, result.weights)
    row = {"grid": result.grid.describe(), "quantize_seconds": seconds, "quantized_linears": len(result.weights),
           "linear_bits_per_weight": size.linear_bits_per_weight, **score(model, eval_ids, args)}
    return row, result.details or {}


def rtn_row(float_model, tokenizer, bits: int, eval_ids, args) -> dict:
    from tritium.recipes import load_recipe

    recipe = load_recipe(RTN_RECIPE)
    recipe["grid"] = {**recipe["grid"], "bits": bits}
    recipe.pop("calib", None)  # RTN reads no calibration data
    row, _ = tritium_row(float_model, tokenizer, recipe, eval_ids, args)
    return {"name": "tritium RTN", "bits": bits, "recipe": f"{RTN_RECIPE} (grid bits {bits})", **row}


def recipe_row(float_model, tokenizer, name: str, recipe: dict, eval_ids, args) -> dict:
    """One shipped tritium recipe, whole, as ``tritium quantize --recipe`` runs it."""
    row, details = tritium_row(float_model, tokenizer, recipe, eval_ids, args)
    return {"name": f"tritium {Path(name).stem}", "bits": recipe["grid"]["bits"], "recipe": name,
            "method": recipe["method"], "e2e_tokens": (recipe.get("e2e") or {}).get("train", {}).get("tokens"),
            "calibration": recipe.get("calib"), **row,
            "ptq_details": {k: v for k, v in details.items() if isinstance(v, (int, float, str))}}


class StepClock:
    """Time stamps of every optimizer step in the process: SignRound takes one per iteration per block."""

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.stamps: list[float] = []
        self._handle = register_optimizer_step_post_hook(lambda *_args, **_kw: self.stamps.append(time.perf_counter()))

    def close(self):
        self._handle.remove()

    def seconds_per_iter(self) -> float | None:
        """Median gap between consecutive steps: the gaps that span a block boundary are few and slow."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(gaps) if gaps else None


class TokenRecorder:
    """Records the token ids that reach the embedding, to prove which calibration tokens auto-round used."""

    def __init__(self, embedding: torch.nn.Module):
        self.seen: list[torch.Tensor] = []
        self._handle = embedding.register_forward_pre_hook(lambda _m, inputs: self.seen.append(inputs[0].detach().cpu()))

    def close(self):
        self._handle.remove()


class AutoRoundLog(logging.Handler):
    """Reads auto-round's log: each block's summary line (the loss at its RTN start and at its best
    iteration) and every warning, since auto-round reports settings it overrode only there
    (e.g. QuaRot's R1 turned off for a hidden size that is not a power of 2)."""

    PATTERN = re.compile(r"loss iter 0: (\S+) -> iter (\d+): (\S+)")

    def __init__(self):
        super().__init__()
        self.blocks: list[dict] = []
        self.warnings: list[str] = []
        self._logger = logging.getLogger("autoround")
        self._logger.addHandler(self)

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()).strip()
            if text not in self.warnings:
                self.warnings.append(text)
        found = self.PATTERN.search(record.getMessage())
        if found:
            self.blocks.append({"start_loss": float(found[1]), "best_iter": int(found[2]),
                                "best_loss": float(found[3])})

    def close(self):
        self._logger.removeHandler(self)
        super().close()

    def summary(self) -> dict:
        improved = [b for b in self.blocks if b["best_iter"] > 0]
        ratios = [b["best_loss"] / b["start_loss"] for b in self.blocks if b["start_loss"] > 0]
        return {"blocks_logged": len(self.blocks), "blocks_improved_on_start": len(improved),
                "median_best_over_start_loss": statistics.median(ratios) if ratios else None,
                "per_block": self.blocks}


def group_distinct_counts(weight: torch.Tensor) -> int:
    """The largest number of distinct values in any (row, group of 128) of ``weight``, last group shorter."""
    from tritium.quant.grids import GroupLayout

    layout = GroupLayout.for_weight(tuple(weight.shape), GROUP, ragged=True)

    def distinct(groups: torch.Tensor) -> torch.Tensor:
        ordered = groups.sort(dim=-1).values
        return (ordered.diff(dim=-1) != 0).sum(dim=-1) + 1

    return int(layout.reduce(weight.detach().float(), distinct).max())


def grid_check(model, layer_config: dict, bits: int) -> dict:
    """Which decoder linears auto-round quantized, and whether each holds at most 2**bits values per group."""
    from tritium.models import decoder_layout

    linears = decoder_layout(model).quantizable_linears()
    quantized, left_float, off_grid, widths = [], [], [], {}
    for name, module in linears.items():
        setting = layer_config.get(name) or {}
        layer_bits = setting.get("bits", 16)
        most = group_distinct_counts(module.weight)
        widths.setdefault(module.in_features, []).append(name)
        if layer_bits >= 16:
            left_float.append(name)
            continue
        if layer_bits != bits or setting.get("group_size") != GROUP or setting.get("sym") is not False:
            off_grid.append(f"{name}: auto-round config {setting}")
        elif most > 2**bits:
            off_grid.append(f"{name}: {most} distinct values in one group, more than 2**{bits}")
        quantized.append(name)
    ragged = {w: len(names) for w, names in widths.items() if w % GROUP}
    return {"decoder_linears": len(linears), "quantized": quantized, "left_float": left_float,
            "off_grid": off_grid, "ragged_widths": {str(w): n for w, n in ragged.items()},
            "ok": not off_grid and not left_float}


def autoround_row(float_model, tokenizer, bits: int, calibration: torch.Tensor, eval_ids, args) -> dict:
    from auto_round import AutoRound
    from auto_round.algorithms.quantization.sign_round.config import SignRoundConfig

    from tritium.eval.size import size_report
    from tritium.models import decoder_layout

    model = copy.deepcopy(float_model)
    n_blocks = decoder_layout(model).num_blocks
    # Exact token ids, one sample per entry; an explicit all-ones mask so that auto-round's
    # padding heuristics (pad token, trailing repeats) cannot mask any of our tokens.
    samples = [{"input_ids": calibration[i : i + 1].clone(),
                "attention_mask": torch.ones(1, calibration.shape[1], dtype=torch.long)}
               for i in range(calibration.shape[0])]
    signround = SignRoundConfig(iters=args.iters)
    alg_configs = signround if args.alg == "signround" else [signround, "quarot"]
    compile_flag = {"on": True, "off": False, "auto": None}[args.torch_compile]
    clock, recorder, losses = StepClock(), TokenRecorder(model.get_input_embeddings()), AutoRoundLog()
    start = time.perf_counter()
    try:
        compressor = AutoRound(
            model, tokenizer=tokenizer, platform="hf",
            scheme={"bits": bits, "group_size": GROUP, "sym": False, "data_type": "int"},
            alg_configs=alg_configs, dataset=samples, nsamples=len(samples), seqlen=calibration.shape[1],
            batch_size=args.batch_size, device_map="cpu", amp=args.amp, enable_torch_compile=compile_flag,
            seed=args.ar_seed,
        )
        quantized_model, layer_config = compressor.quantize()
    finally:
        clock.close()
        recorder.close()
        losses.close()
    wall = time.perf_counter() - start
    seen = torch.cat(recorder.seen) if recorder.seen else torch.empty(0, dtype=torch.long)
    same_tokens = seen.shape == calibration.shape and torch.equal(seen, calibration)
    left_dtype = str(next(quantized_model.parameters()).dtype)
    check = grid_check(quantized_model, layer_config, bits)
    size = size_report(quantized_model, tritium_grid(bits), check["quantized"])
    s_iter = clock.seconds_per_iter()
    steps = len(clock.stamps)
    fixed = wall - steps * s_iter if s_iter else None
    fit = int((args.time_budget - fixed) / (n_blocks * s_iter)) if s_iter and fixed is not None else None
    row = {
        "name": "auto-round " + ("SignRound" if args.alg == "signround" else "QuaRot + SignRound"),
        "bits": bits, "alg": args.alg, "iters": args.iters, "blocks": n_blocks, "optimizer_steps": steps,
        "quantize_seconds": wall, "seconds_per_iter": s_iter, "fixed_seconds": fixed,
        "iters_for_budget": max(fit, 0) if fit is not None else None, "time_budget": args.time_budget,
        "fits_budget": wall <= args.time_budget,
        "settings": {"scheme": f"int{bits} asym group {GROUP}", "batch_size": args.batch_size, "amp": args.amp,
                     "model_dtype_after": left_dtype, "torch_compile": args.torch_compile, "seed": args.ar_seed,
                     "lr": "auto-round default (1/iters)", "nsamples": len(samples), "seqlen": calibration.shape[1]},
        "calibration_tokens_seen": int(seen.shape[0]), "calibration_tokens_identical": bool(same_tokens),
        "block_losses": losses.summary(), "autoround_warnings": losses.warnings, "grid_check": check, "linear_bits_per_weight": size.linear_bits_per_weight,
        **score(quantized_model, eval_ids, args),
    }
    del model, quantized_model, compressor
    return row


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    rows = report["rows"]
    float_row = next(r for r in rows if r["name"] == "float")
    base = float_row["ppl"]
    datasets = report["eval"].get("datasets", ["wikitext2"])
    others = datasets[1:]
    calib = report["calibration"]
    m = report["machine"]
    lines = [f"# auto-round vs tritium on {report['model']}: perplexity", "",
             f"- command: `{report['command']}`",
             f"- machine: {m['cpu']} ({' '.join(m['simd_flags']) or 'no AVX/AMX flags listed'}), {m['cores']} CPUs, "
             f"{m['torch_threads']} torch threads, load average {m['load_average_at_start']} at start",
             f"- date: {report['date']}",
             f"- versions: torch {report['versions']['torch']}, transformers {report['versions']['transformers']}, "
             f"auto-round {report['versions']['auto_round']}",
             f"- calibration: {calib['samples']} × {calib['seqlen']} tokens of {calib['source']} (seed {calib['seed']}, "
             f"token digest {calib['digest']}), {calib['passed_as']}",
             f"- evaluation: tritium perplexity, {report['eval']['n_chunks']} chunks × {report['eval']['seqlen']} tokens "
             f"of each test set ({', '.join(datasets)}), the same chunks for every row", "",
             f"| row | bits | {datasets[0]} ppl | × float | "
             + "".join(f"{name} ppl | × float | " for name in others)
             + "quantize s | s/iter | iters | linear bits/weight |",
             "|---|---|---|---|" + "---|---|" * len(others) + "---|---|---|---|"]
    for r in rows:
        def num(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "–"
        lines.append(f"| {r['name']} | {r.get('bits', 'fp32')} | {r['ppl']:.2f} | {r['ppl'] / base:.2f} | "
                     + "".join(f"{r[f'ppl_{name}']:.2f} | {r[f'ppl_{name}'] / float_row[f'ppl_{name}']:.2f} | "
                               for name in others)
                     + f"{num('quantize_seconds', '.0f')} | {num('seconds_per_iter', '.2f')} | {r.get('iters', '–')} | "
                     f"{num('linear_bits_per_weight', '.3f')} |")
    for r in (r for r in rows if r["name"].startswith("auto-round")):
        c = r["grid_check"]
        median = r["block_losses"]["median_best_over_start_loss"]
        ratio = f"{median:.3f}" if median is not None else "–"
        if r["seconds_per_iter"] is not None:
            rate = (f"{r['seconds_per_iter']:.2f} s/iter, about {r['fixed_seconds']:.0f} s outside the steps); at this "
                    f"rate {r['iters_for_budget']} iters fit the {r['time_budget']:.0f} s budget. ")
        else:
            rate = "too few steps to time an iteration). "
        lines += ["", f"auto-round {r['bits']}-bit: {r['optimizer_steps']} SignRound steps over {r['blocks']} blocks in "
                  f"{r['quantize_seconds']:.0f} s ({rate}"
                  f"Blocks whose best SignRound iteration beat the RTN start (iteration 0): "
                  f"{r['block_losses']['blocks_improved_on_start']}/{r['block_losses']['blocks_logged']} (median best/start "
                  f"block loss {ratio}). "
                  f"Calibration tokens identical to tritium's: {r['calibration_tokens_identical']}. "
                  f"Grid check: {len(c['quantized'])}/{c['decoder_linears']} decoder linears on the int{r['bits']} "
                  f"g{GROUP} grid (≤ {2 ** r['bits']} distinct values in every group, the last group of a "
                  f"{', '.join(c['ragged_widths']) or 'no'}-wide row included), left in float: "
                  f"{', '.join(c['left_float']) or 'none'}, off grid: {'; '.join(c['off_grid']) or 'none'}. "
                  f"Settings: {r['settings']}."]
        rotation = [w for w in r["autoround_warnings"] if "SpinQuant" in w or "rotation" in w.lower()]
        if rotation:
            # auto-round turns R1/R2 off (a warning, not an error) where a width is not a power of 2.
            lines += ["", "auto-round's rotation warnings: " + " ".join(f"“{w}”" for w in rotation)]
    for r in (r for r in rows if r.get("recipe") and r["name"] != "tritium RTN"):
        calib = r.get("calibration") or {}
        lines += ["", f"{r['name']}: the recipe `{r['recipe']}` run whole ({r['method']}"
                  + (f", calibration {calib['samples']} × {calib['seqlen']} tokens of {calib['source']}"
                     if calib else "")
                  + (f", then E2E scale tuning on {r['e2e_tokens']:,} tokens" if r.get("e2e_tokens") else "")
                  + f") in {r['quantize_seconds']:.0f} s, on the machine and threads of the auto-round rows."]
    lines += ["", *report["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "Notes:",
    "- Widths that 128 does not divide (SmolLM2's 576): auto-round zero-pads each row to the next multiple of 128 "
    "before grouping (`reshape_pad_tensor_by_group_size`), so the last group holds 64 real weights and 64 zeros. "
    "Its asymmetric range is always clamped to include 0 (min ≤ 0 ≤ max), so the zeros change nothing: the result "
    "is a shorter last group of 64 with its own fp16 scale and zero point, the layout tritium's ragged groups use. "
    "Layers are left in float only when a side is not a multiple of 32 (none in SmolLM2) and for the LM head "
    "(auto-round quantizes no LM head by default; SmolLM2's is tied to the embedding).",
    "- tritium's RTN takes the true min and max of a group; auto-round's range always includes 0 and SignRound "
    "also tunes the min/max scales.",
    "- Bits per weight are counted by tritium's size_report for both: codes + an fp16 scale and a k-bit zero point "
    "per group.",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a tritium named model or a local HF folder")
    parser.add_argument("--bits", default="2,3", help=f"comma-separated, from {SUPPORTED_BITS} (asymmetric, g{GROUP})")
    parser.add_argument("--iters", type=int, required=True,
                        help="SignRound iterations per block (auto-round's default is 200: far over 30 min on 2 cores)")
    parser.add_argument("--alg", default="signround", choices=ALGORITHMS,
                        help="signround: auto-round's default; quarot: its QuaRot rotation, then SignRound. "
                             "auto-round 0.16 turns R1 off (a warning) where the hidden size is not a power of 2, "
                             "SmolLM2's 576 included, leaving only R2; the report lists its warnings")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration samples (tritium's cpu-long recipe: 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration tokens per sample")
    parser.add_argument("--calib-seed", type=int, default=0, help="seed of tritium's calibration sampler")
    parser.add_argument("--ar-seed", type=int, default=42, help="auto-round's own seed (its default, 42)")
    parser.add_argument("--batch-size", type=int, default=8, help="auto-round's tuning batch (its default, 8)")
    parser.add_argument("--amp", action="store_true",
                        help="auto-round's CPU default: cast the model to bf16 and tune under autocast. Off by default "
                             "so that every row is fp32 (no faster in a one-block SmolLM2 probe on 2 shared cores: 2-3 s/iter either way)")
    parser.add_argument("--torch-compile", default="off", choices=("off", "on", "auto"),
                        help="auto-round's torch.compile (auto: its own choice, on from 10 iters). Off by default: in a one-block probe on "
                             "2 cores it cost ~80 s of compiling and no faster iterations")
    parser.add_argument("--time-budget", type=float, default=1800, help="seconds the quantization should fit in")
    parser.add_argument("--limit", type=int, help="score only the first N chunks of each test set (same for every row)")
    parser.add_argument("--datasets", default="wikitext2",
                        help="comma-separated test sets every row is scored on, e.g. wikitext2,ptb; the first is the "
                             "ppl column, each other gets a column of its own")
    parser.add_argument("--eval-seqlen", type=int, default=2048, help="tokens per perplexity chunk")
    parser.add_argument("--data", default=os.environ.get("TRITIUM_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--skip-rtn", action="store_true", help="leave out the tritium RTN rows")
    parser.add_argument("--recipes", help="comma-separated tritium recipes (names or YAML paths) to run whole "
                                          "beside auto-round, e.g. w2g128-cpu,w3g128-cpu")
    parser.add_argument("--out", default="bench/results/autoround.md", help="writes <out>.md and <out>.json")
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    try:
        bits_list = parse_bits(args.bits)
        check_args(args)
        recipes = load_recipes(args.recipes)
        auto_round = import_auto_round()
    except BenchInputError as err:
        parser.error(str(err))

    from tritium.data import calibration_samples, load_eval_text
    from tritium.eval.perplexity import tokenize_eval_text
    from tritium.models import load_model
    from tritium.utils.io import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = ["python", "bench/bench_autoround.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"command": " ".join(command), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "model": args.model, "machine": machine(), "versions": versions(auto_round), "rows": [],
              "notes": NOTES}
    float_model, tokenizer, _ = load_model(args.model, dtype=torch.float32, device="cpu")
    datasets = parse_datasets(args.datasets)
    eval_ids = {name: tokenize_eval_text(tokenizer, load_eval_text(name, args.data)) for name in datasets}
    calibration = calibration_samples(tokenizer, CALIB_SOURCE, args.nsamples, args.seqlen, args.calib_seed, args.data)
    report["calibration"] = {"source": CALIB_SOURCE, "samples": args.nsamples, "seqlen": args.seqlen,
                             "seed": args.calib_seed, "digest": token_digest(calibration),
                             "passed_as": "to auto-round as a list of {input_ids [1, seqlen], attention_mask of ones} "
                                          "holding tritium's token ids"}
    report["eval"] = {"dataset": f"{datasets[0]} test", "datasets": datasets, "seqlen": args.eval_seqlen,
                      "limit": args.limit}

    def save():
        # Rewritten after every row, so that a long run leaves its finished rows behind.
        atomic_write_json(out.with_suffix(".json"), report)
        atomic_write_text(out.with_suffix(".md"), markdown(report))

    def log(text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    log("float")
    report["rows"].append({"name": "float", **score(float_model, eval_ids, args)})
    report["eval"]["n_chunks"] = report["rows"][0]["n_chunks"]
    save()
    # All tritium rows before any auto-round row: auto-round patches modules as it goes, and
    # none of that may reach a tritium row.
    for bits in bits_list if not args.skip_rtn else []:
        log(f"tritium RTN {bits}-bit")
        report["rows"].append(rtn_row(float_model, tokenizer, bits, eval_ids, args))
        save()
    for name, recipe in recipes:
        log(f"tritium recipe {name}")
        report["rows"].append(recipe_row(float_model, tokenizer, name, recipe, eval_ids, args))
        save()
    for bits in bits_list:
        log(f"auto-round {args.alg} {bits}-bit, {args.iters} iters")
        row = autoround_row(float_model, tokenizer, bits, calibration, eval_ids, args)
        report["rows"].append(row)
        save()
        if not row["calibration_tokens_identical"]:
            log(f"warning: auto-round saw {row['calibration_tokens_seen']} samples that differ from tritium's")
        for warning in row["autoround_warnings"]:
            if "SpinQuant" in warning:
                log(f"warning from auto-round's rotation: {warning}")
        if not row["grid_check"]["ok"]:
            log(f"warning: grid check failed: {row['grid_check']}")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
