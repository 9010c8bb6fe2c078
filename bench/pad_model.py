"""Zero-pad a Llama-family model's widths to a multiple of 256, keeping its function, for the GGUF k-quant bench.

llama.cpp's k-quants (Q2_K..Q6_K, TQ1_0/TQ2_0) take rows in super-blocks of 256, so on SmolLM2-135M (hidden
576) every linear but down_proj falls back to another type and the export bench would measure the fallbacks.
Padding the residual stream with channels that stay exactly zero makes every width a multiple of 256 while
the logits stay those of the original model (to fp32 rounding):

* hidden H → H' (next multiple): embedding columns, o_proj/down_proj rows and the q/k/v/gate/up input
  columns of the new channels are zero, so those channels are zero everywhere;
* RMSNorm divides by the root mean square over H' channels, of which H are non-zero: the norm weights are
  scaled by √(H/H') and ε by H/H', which gives exactly the original normalised values;
* query heads: H'/head_dim of them, each key/value head's group filled with zero-query heads whose
  o_proj columns are zero (their attention output is discarded); key/value heads unchanged;
* intermediate width → next multiple, with zero gate/up rows and zero down_proj columns (silu(0)·0 = 0).

``dead_inputs="noise"`` fills the q/k/v/gate/up columns that read the zero channels with small seeded noise
instead of zeros: they multiply exact zeros, so the function is unchanged, and no quantizer meets all-zero
sub-blocks. (It was a guess at why auto-round 0.16's Q3_K_S writes NaN in the last super-block of each padded
row; the NaN stayed with noise, so that cause lies elsewhere: BENCHMARKS.md, eleventh session.)

    python bench/pad_model.py --model smollm2-135m --out /tmp/smollm2-pad256
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


class PaddingError(ValueError):
    """A model this padding cannot keep equal; the message says why."""


def padded_sizes(config, multiple: int) -> dict:
    hidden, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if heads * head_dim != hidden:
        raise PaddingError(f"heads × head_dim = {heads * head_dim} differs from the hidden size {hidden}")
    new_hidden = math.ceil(hidden / multiple) * multiple
    if new_hidden % head_dim:
        raise PaddingError(f"the padded hidden size {new_hidden} is not a whole number of {head_dim}-wide heads")
    new_heads = new_hidden // head_dim
    if new_heads % kv or new_heads // kv < heads // kv:
        raise PaddingError(f"{new_heads} query heads cannot be grouped over {kv} key/value heads as the "
                           f"{heads} original ones are")
    return {"hidden": new_hidden, "heads": new_heads, "head_dim": head_dim,
            "intermediate": math.ceil(config.intermediate_size / multiple) * multiple}


def pad_model(model, multiple: int = 256, dead_inputs: str = "zero"):
    """A new model of the same class whose widths are multiples of ``multiple`` and whose logits equal
    ``model``'s (Llama-style blocks: q/k/v/o, gate/up/down, two RMSNorms without offset)."""
    import torch

    if dead_inputs not in ("zero", "noise"):
        raise PaddingError(f"dead_inputs must be 'zero' or 'noise', got {dead_inputs!r}")
    config = model.config
    if config.model_type not in ("llama", "mistral", "qwen2"):
        raise PaddingError(f"model type {config.model_type!r}: only Llama-style models (llama, mistral, qwen2)")
    sizes = padded_sizes(config, multiple)
    hidden, heads, kv, head_dim = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, \
        sizes["head_dim"]
    new = type(config).from_dict(config.to_dict())
    new.hidden_size, new.num_attention_heads, new.head_dim = sizes["hidden"], sizes["heads"], head_dim
    new.intermediate_size = sizes["intermediate"]
    new.rms_norm_eps = config.rms_norm_eps * hidden / sizes["hidden"]
    padded = type(model)(new).to(next(model.parameters()).dtype)
    group, new_group = heads // kv, sizes["heads"] // kv
    # original query head h (group h // group, place h % group) → new head (h // group)·new_group + h % group
    head_map = [(h // group) * new_group + h % group for h in range(heads)]
    q_rows = torch.cat([torch.arange(n * head_dim, (n + 1) * head_dim) for n in head_map])
    norm_scale = math.sqrt(hidden / sizes["hidden"])
    inter = config.intermediate_size
    source = dict(model.named_parameters())
    with torch.no_grad():
        for name, target in padded.named_parameters():
            target.zero_()
            w = source[name]
            if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
                target[:, :hidden] = w
            elif name.endswith("norm.weight"):
                target[:hidden] = w * norm_scale
            elif name.endswith("q_proj.weight"):
                target[q_rows, :hidden] = w
            elif name.endswith("q_proj.bias"):
                target[q_rows] = w
            elif name.endswith(("k_proj.weight", "v_proj.weight")):
                target[:, :hidden] = w
            elif name.endswith(("k_proj.bias", "v_proj.bias")):
                target.copy_(w)
            elif name.endswith("o_proj.weight"):
                target[:hidden, q_rows] = w
            elif name.endswith(("gate_proj.weight", "up_proj.weight")):
                target[:inter, :hidden] = w
            elif name.endswith("down_proj.weight"):
                target[:hidden, :inter] = w
            else:
                raise PaddingError(f"no padding rule for parameter {name} {tuple(w.shape)}")
        if dead_inputs == "noise":
            generator = torch.Generator().manual_seed(0)
            for name, target in padded.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight",
                                  "up_proj.weight")):
                    real = target[:, :hidden]
                    noise = torch.randn(target.shape[0], target.shape[1] - hidden, generator=generator)
                    target[:, hidden:] = noise.to(target.dtype) * 0.1 * real.std()
    if getattr(config, "tie_word_embeddings", False):
        padded.tie_weights()
    return padded


def padding_report(model, padded, ids) -> dict:
    """The padded widths and the largest logit difference from ``model`` on the token ids ``ids`` (1 × T)."""
    import torch

    with torch.no_grad():
        difference = float((padded(ids).logits - model(ids).logits).abs().max())
    c = padded.config
    return {"hidden": c.hidden_size, "query_heads": c.num_attention_heads, "intermediate": c.intermediate_size,
            "max_logit_difference": difference}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--multiple", type=int, default=256)
    parser.add_argument("--dead-inputs", choices=("zero", "noise"), default="zero",
                        help="the weights that read the zero channels (noise: the same function, no all-zero blocks)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    if args.multiple < 1:
        parser.error(f"--multiple must be at least 1, got {args.multiple}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        parser.error(f"{out} exists: pass --overwrite to replace it, or another --out")
    import torch

    from tritium.models import load_model
    from tritium.models.loader import save_tokenizer
    from tritium.utils.io import atomic_directory

    model, tokenizer, _ = load_model(args.model)
    try:
        padded = pad_model(model, args.multiple, args.dead_inputs)
    except PaddingError as err:
        parser.error(str(err))
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    report = padding_report(model, padded, ids)
    with atomic_directory(out) as tmp:  # a stopped save leaves no half-written folder
        padded.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    print(f"{out}: hidden {report['hidden']}, {report['query_heads']} query heads, intermediate "
          f"{report['intermediate']}; max |logit difference| on a test sentence {report['max_logit_difference']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
