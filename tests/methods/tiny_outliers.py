"""Tiny models with a few outlier input channels, as real LLMs have, so that
activation-aware methods have something to find; and the error they are judged by."""

import torch

from tritium.models import decoder_layout, tiny_model


def outlier_model(family: str = "llama", layers: int = 2, seed: int = 0):
    model = tiny_model(family, seed=seed, num_hidden_layers=layers)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for block in decoder_layout(model).blocks:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                channels = torch.randperm(norm.weight.numel(), generator=generator)[:4]
                norm.weight[channels] = (norm.weight[channels] + decoder_layout(model).norm_weight_offset) * 20 \
                    - decoder_layout(model).norm_weight_offset
    return model


def hidden_error(model, reference, ids) -> float:
    """Summed MSE of every block's output against the float model's, on ``ids``."""
    with torch.no_grad():
        got = model(ids, output_hidden_states=True).hidden_states
        want = reference(ids, output_hidden_states=True).hidden_states
    return sum(float((a - b).pow(2).mean()) for a, b in zip(got[1:], want[1:]))


def calibration_ids(n: int = 8, seqlen: int = 32, seed: int = 1):
    return torch.randint(0, 512, (n, seqlen), generator=torch.Generator().manual_seed(seed))
