"""``tritium distill``: its flags, and the handler that makes them a :class:`~tritium.jobs.distill.DistillJob`,
runs it and prints the result."""

from __future__ import annotations

import argparse


_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def token_count(value: str) -> int:
    """``2M``, ``500k``, ``20000`` → an int."""
    text = value.strip().lower().replace("_", "")
    try:
        if text and text[-1] in _SUFFIXES:
            return int(float(text[:-1]) * _SUFFIXES[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens takes a count such as 20000, 500k or 2M, not {value!r}")


def add_distill_parser(sub, add_model_args, add_eval_args, group_type, csv_type) -> None:
    d = sub.add_parser("distill", help="distill a float model into a trained ternary (DLT) or uniform 2/3/4-bit "
                       "QAT student, from scratch or from a PTQ result")
    add_model_args(d)
    d.add_argument("--recipe", default="ternaryllm", help="a YAML file or a shipped recipe (ternaryllm, "
                   "ternaryllm-cpu, qat-w2g128-cpu, qat-w3g128-cpu)")
    d.add_argument("--tokens", type=token_count, help="training budget in tokens (20000, 500k, 2M)")
    d.add_argument("--steps", type=int, help="training budget in optimizer steps (instead of --tokens)")
    d.add_argument("--data", dest="train_data", type=csv_type,
                   help="training text: files, folders or globs (txt/jsonl/parquet), hf:<path>[:<config>]:<split>, "
                        "a teacher-corpus folder, or 'teacher' to sample one from the float model; comma separated")
    d.add_argument("--train-seqlen", type=int, help="training sequence length")
    d.add_argument("--micro-batch-size", type=int)
    d.add_argument("--grad-accum", type=int)
    d.add_argument("--lr", type=float, help="learning rate of the latent weights")
    d.add_argument("--lr-quant", type=float, help="learning rate of the scales, zero points and shifts (DLT α, γ)")
    d.add_argument("--grid", help="the student's grid kind: uniform, ternary, or a llama.cpp block format gguf:TYPE "
                   "(gguf:q2_k, gguf:q4_k, gguf:tq2_0, ...) whose fp16 d and dmin train over fixed sub-block integers; "
                   "--init-from a run quantized with --grid gguf:TYPE takes the same --grid")
    d.add_argument("--group", type=group_type, help="group size, 'channel' or 'tensor'")
    d.add_argument("--bits", type=int, help="bits of a uniform recipe's grid (2, 3 or 4), e.g. qat-w2g128-cpu --bits 4")
    d.add_argument("--variant", help="student quantizer: dlt (default) or absmean/twn (plain STE baseline)")
    d.add_argument("--off-weight", type=float)
    d.add_argument("--kl-weight", type=float)
    d.add_argument("--ce-weight", type=float)
    d.add_argument("--init-from", help="start the student from a saved PTQ result on the recipe's grid "
                   "(runs/<run>/model): step 0 is exactly that model")
    d.add_argument("--train", dest="trainable", choices=["all", "scales"],
                   help="what trains: all (latent weights and quantizer parameters, the default) or scales "
                        "(the --init-from codes stay fixed; only scales, zero points and shifts train: E2E-QP)")
    d.add_argument("--start-latents", choices=["centre", "float"],
                   help="with --init-from: latent weights start at their codes' cell centres (the default) or at "
                        "the float weights' positions clamped into those cells (weights near a threshold flip sooner)")
    d.add_argument("--act-bits", type=int,
                   help="train with every quantized linear's input quantized per token on the fly, 8, 6 or 4 bits "
                        "(BitNet b1.58's W1.58A8: --act-bits 8), and keep it so; save with --format fake")
    d.add_argument("--act-symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="--act-bits: symmetric codes (the default, absmax per token) or a zero point per token")
    d.add_argument("--checkpoint-every", type=int)
    d.add_argument("--eval-every", type=int, help="perplexity every N steps during training")
    d.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    d.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="training precision (default: the recipe's, auto in ternaryllm; the -cpu recipes pin fp32 so "
                        "their figures reproduce on any CPU): auto takes bf16 autocast where the hardware has it (a "
                        "GPU, or a CPU with AMX or AVX512-BF16, about 2x faster there) and fp32 elsewhere, where bf16 "
                        "is emulated and several times slower")
    d.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    d.add_argument("--no-float", action="store_true", help="skip evaluating the float model")
    d.add_argument("--no-save", action="store_true", help="do not save the distilled model")
    d.add_argument("--format", choices=["fake", "packed"], default="packed",
                   help="saved model: packed codes (default; tritium.nn modules) or fake-quant float weights")
    d.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="--format packed: storage of the parts left in float (embeddings, norms)")
    add_eval_args(d, data_flag="--data-dir")


def cmd_distill(args) -> int:
    from ..jobs.distill import DistillJob, distill_model
    from .common import job_from_args, print_table, print_results

    result = distill_model(job_from_args(DistillJob, args))
    print_table(result.rows)
    print_results(result)
    return 0
