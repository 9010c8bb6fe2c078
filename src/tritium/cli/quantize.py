"""``tritium quantize``: the flags of a :class:`~tritium.jobs.quantize.QuantizeJob`."""

from __future__ import annotations

import argparse

from ..recipes import recipe_names
from .common import (activation_group, add_eval_args, add_model_args, csv_list, group_size, job_from_args,
                     print_results, print_table)
from .pack import HEAD_TYPE_CHOICES, HEAD_TYPE_HELP


def add_quantize_parser(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a model, evaluate it beside the float model, save it")
    add_model_args(q)
    q.add_argument("--recipe", help=f"a YAML file or a shipped recipe: {', '.join(recipe_names())}")
    q.add_argument("--method", help="quantization method (rtn, ...)")
    q.add_argument("--grid", help="grid kind: uniform, ternary, or a llama.cpp block format gguf:TYPE (gguf:q4_0, "
                                  "q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, tq1_0, tq2_0), exact to the "
                                  "GGUF export")
    q.add_argument("--bits", type=int, help="bits of the uniform grid (2, 3, 4, 8)")
    q.add_argument("--group", type=group_size, help="group size, 'channel' or 'tensor'")
    q.add_argument("--variant", help="ternary variant: absmean, twn, dlt")
    q.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--ragged-groups", action=argparse.BooleanOptionalAction, default=None,
                   help="allow a shorter last group when the group size does not divide a width")
    q.add_argument("--skip", type=csv_list, help="module-name patterns kept in float, comma separated")
    q.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                   help="fold the norms and rotate the weights (QuaRot R1/R2, Hadamard) before quantizing: the same "
                        "model, weights with fewer outliers; a tied head is untied")
    q.add_argument("--act-bits", type=int,
                   help="also quantize the input of every quantized linear, per token on the fly: 8, 6 or 4 bits "
                        "(W4A8, W4A4); save with --format fake")
    q.add_argument("--act-group", type=activation_group,
                   help="--act-bits: 'token' (one scale per token, the default) or a group size along the width")
    q.add_argument("--act-symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="--act-bits: symmetric codes (the default) or, --no-act-symmetric, a zero point per token")
    q.add_argument("--act-clip-ratio", type=float,
                   help="--act-bits: clip each token's range to this fraction of its min and max, in (0, 1]")
    q.add_argument("--act-clip-search", action=argparse.BooleanOptionalAction, default=None,
                   help="--act-bits: choose each linear's clipping ratio among 1.0, 0.95, 0.9, 0.85, 0.8 on "
                        "calibration data (least output error)")
    q.add_argument("--online-rotation", choices=("down_proj", "qk", "all"),
                   help="Hadamards applied at run time where they cannot fold into the weights (QuaRot): down_proj "
                        "(R4, on its input), qk (R3, queries and keys after RoPE; helps a quantized KV cache) or "
                        "all; the folder then loads with tritium only (GGUF and compressed-tensors refuse it)")
    q.add_argument("--kv-bits", type=int, choices=(4, 8),
                   help="fake-quantize the KV cache per head and token to 4 or 8 bits (asymmetric)")
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
    q.add_argument("--head-type", choices=HEAD_TYPE_CHOICES, default="f16",
                   help="--format packed: " + HEAD_TYPE_HELP + "; the quantized model is evaluated with that head")
    add_eval_args(q)


def cmd_quantize(args) -> int:
    from ..jobs.quantize import QuantizeJob, quantize

    result = quantize(job_from_args(QuantizeJob, args))
    print_table(result.rows)
    if args.generate:
        print(f"\ngreedy continuation of {args.generate!r}:")
        if result.float_text is not None:
            print(f"  float:     {args.generate}{result.float_text}")
        print(f"  quantized: {args.generate}{result.quantized_text}")
    print_results(result)
    return 0
