"""GGUF export of SmolLM2-135M checked against llama.cpp (through llama-cpp-python).

Quantizes the embedded default with RTN, writes a GGUF (TQ types where the widths allow,
the exact fallbacks elsewhere: SmolLM2's widths 576/1536 do not split into 256-blocks),
then has llama.cpp compute perplexity on the first chunks of WikiText-2 test and compares
it with tritium's perplexity on the same tokens.

    TRITIUM_DATA=../shared/data python bench/bench_gguf.py --grid ternary --limit 4 --seqlen 512
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from tritium.data import load_eval_text
from tritium.eval import perplexity, tokenize_eval_text
from tritium.export.gguf import llama_cpp_chunk_nll, write_gguf
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model
from tritium.quant import TernaryGrid, UniformGrid

GRIDS = {
    "ternary": TernaryGrid("absmean", group="channel"),
    "w4g128": UniformGrid(bits=4, group=128, ragged_groups=True),
}


def llama_cpp_ppl(path: Path, ids: torch.Tensor, seqlen: int, chunks: int) -> float:
    nll = llama_cpp_chunk_nll(path, ids[0, : chunks * seqlen].view(chunks, seqlen))
    return math.exp(sum(nll) / len(nll))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", choices=sorted(GRIDS), default="w4g128")
    parser.add_argument("--type", default="tq1_0", choices=["tq1_0", "tq2_0"])
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", default="/tmp/tritium-smollm2.gguf")
    args = parser.parse_args()
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)

    model, tokenizer, source = load_model("smollm2-135m")
    result = quantize_(model, RTNConfig(grid=GRIDS[args.grid]))
    start = time.perf_counter()
    report = write_gguf(model, args.out, result.weights, args.type, embedding_type="q8_0",
                        tokenizer_gguf=Path(source.location) / source.gguf_file, overwrite=True)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {report.file_bytes / 1e6:.1f} MB, "
          f"tensor types {report.type_counts()}, decoder linears {report.linear_bits_per_weight:.3f} bits/weight, "
          f"read-back max error {report.max_abs_error:.2e}")
    ids = tokenize_eval_text(tokenizer, load_eval_text("wikitext2"))
    ours = perplexity(model, ids, seqlen=args.seqlen, limit=args.limit, progress=False).ppl
    theirs = llama_cpp_ppl(Path(args.out), ids, args.seqlen, args.limit)
    print(f"{args.grid}, first {args.limit} chunks of {args.seqlen}: tritium ppl {ours:.3f}, llama.cpp ppl {theirs:.3f}, "
          f"difference {100 * abs(theirs - ours) / ours:.2f}%")


if __name__ == "__main__":
    main()
