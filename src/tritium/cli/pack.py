"""``tritium pack``, ``tritium run`` and ``tritium export``: their flags, and the handlers that make them a job
of :mod:`tritium.jobs.pack` (PackJob, RunJob, ExportJob), run it and print the result."""

from __future__ import annotations


def add_pack_parsers(sub) -> None:
    p = sub.add_parser("pack", help="pack a fake-quant run (tritium quantize) into packed codes + fp16 scales")
    p.add_argument("run", help="a `tritium quantize` run folder (holding model/) or the model folder itself")
    p.add_argument("--format", default="tritium", type=_pack_format,
                   help="tritium (packed modules that from_pretrained loads); for GGUF use `tritium export`")
    p.add_argument("--out", help="packed model folder (default RUN/packed, or MODEL-packed beside a model folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `tritium pack` output at --out")
    p.add_argument("--ternary-layout", choices=["base3", "2bit"], default="base3",
                   help="ternary codes as 5 trits per byte (1.6 bits) or 2 bits each")
    p.add_argument("--scale-dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="storage of the parts left in float (embeddings, norms); they load back in the model's dtype")
    p.add_argument("--head-type", choices=HEAD_TYPE_CHOICES, default="f16", help=HEAD_TYPE_HELP)

    r = sub.add_parser("run", help="generate text from a model folder (packed, fake-quant or float) or a named model")
    r.add_argument("model", help="model folder, .gguf file or named default (smollm2-135m)")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="float dtype of the unpacked parts (default: the folder's)")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    r.add_argument("--head-type", choices=HEAD_TYPE_CHOICES,
                   help="store the embedding and LM head as q8_0 or q4_0 blocks (32 values, one fp16 scale) before "
                        "generating; default: as the model has them")
    r.add_argument("--loop", default="auto", choices=["auto", "fast", "hf"],
                   help="decode loop: tritium's lean loop (Llama, Mistral, Qwen2) or HF generate; auto picks the "
                        "lean loop where it applies")

    add_export_parser(sub)


def add_export_parser(sub) -> None:
    from ..export.registry import export_formats

    formats = export_formats()
    e = sub.add_parser("export", help="write a quantized run for a runtime: " + ", ".join(formats),
                       description="Formats: " + "; ".join(f"{name}: {text}" for name, text in formats.items()))
    e.add_argument("model", help="a `tritium quantize` run folder or a model folder it wrote (packed or fake)")
    e.add_argument("--format", choices=list(formats), help="the format to write")
    e.add_argument("--out", help="the folder (or .gguf file) to write (default RUN/compressed-tensors, RUN/model.gguf "
                                 "or RUN/packed)")
    e.add_argument("--gguf", metavar="OUT", help="the same as --format gguf --out OUT")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e.add_argument("--float-dtype", choices=["float16", "bfloat16", "float32"],
                   help="compressed-tensors, tritium: dtype of the float parts (default float16); compressed-tensors "
                        "folders also declare it as the dtype runtimes compute in")
    e.add_argument("--scale-dtype", choices=["float16", "bfloat16", "float32"],
                   help="compressed-tensors, tritium: storage of the scales (default float16, the values tritium's "
                        "methods make); compressed-tensors with float32 keeps a float32 dequantize=True load exact")
    e.add_argument("--type", choices=["tq1_0", "tq2_0"], help="gguf: GGUF type of the decoder linears (default tq1_0)")
    e.add_argument("--embedding-type", choices=["f16", "q8_0", "f32"],
                   help="gguf: GGUF type of the embedding and output head (default f16)")
    e.add_argument("--no-fallback", action="store_true",
                   help="gguf: fail on a linear the TQ type cannot hold, instead of writing it in an exact fallback "
                        "type")


HEAD_TYPE_CHOICES = ["f16", "q8_0", "q4_0"]  # tritium.pack.blocks.HEAD_TYPES (kept literal: the parser loads fast)
HEAD_TYPE_HELP = ("storage of the embedding and LM head: f16 (float, as before), q8_0 (8.5 bits a weight) or q4_0 "
                  "(4.5 bits), in blocks of 32 with one fp16 scale; the head then runs on the block kernel")


def _pack_format(value: str) -> str:
    import argparse

    if value != "tritium":
        hint = " GGUF files are written by `tritium export PACKED --gguf OUT.gguf`." if "gguf" in value.lower() else ""
        raise argparse.ArgumentTypeError(f"--format takes only 'tritium' (packed modules), not {value!r}.{hint}")
    return value


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def cmd_pack(args) -> int:
    from ..jobs.pack import PackJob, pack_folder
    from .common import job_from_args

    result = pack_folder(job_from_args(PackJob, args))
    print(f"packed {result.linears} linears on {result.grid} ({args.ternary_layout}, {args.scale_dtype} "
          f"scales): {result.bits_per_weight:.3f} bits/weight ({result.code_bits_per_weight:.3f} for the codes), "
          f"{_megabytes(result.packed_weight_bytes)} of packed weights")
    kept = ("norms stay float; embedding and head in " + args.head_type if args.head_type != "f16" else
            "embeddings, head and norms stay float")
    print(f"folder size: fake {_megabytes(result.fake_bytes)} -> packed {_megabytes(result.packed_bytes)} "
          f"({result.fake_bytes / max(result.packed_bytes, 1):.2f}x smaller; {kept})")
    print(f"model: {result.out}")
    return 0


def cmd_run(args) -> int:
    import sys

    from ..jobs.pack import RunJob, run_model
    from .common import job_from_args

    result = run_model(job_from_args(RunJob, args))
    print(result.text)
    rate = (f"{result.decode_tokens_per_second:.1f} tokens/s" if result.decode_tokens_per_second is not None
            else "n/a (one token)")
    kernel = f"; CPU kernel path {result.kernel_path}" if result.kernel_path else ""
    print(f"tritium: {result.new_tokens} new tokens on {result.device} with the {result.loop} ({result.source}, "
          f"{result.head_type} head); prefill of {result.prompt_tokens} tokens {result.prefill_seconds:.3f} s; "
          f"decode {rate}{kernel}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..jobs.pack import ExportJob, export_folder
    from .common import job_from_args

    report = export_folder(job_from_args(ExportJob, args))
    for line in report.lines:
        print(line)
    print(f"model: {report.path}")
    return 0
