"""The info job: a model's architecture, layers, parameters and what can be quantized."""

from __future__ import annotations

from dataclasses import dataclass

from .options import torch_dtype


@dataclass
class InfoJob:
    model: str
    dtype: str = "float32"
    device: str = "cpu"


def model_info(job: InfoJob) -> dict:
    from ..models import decoder_layout, load_model
    from ..models.adapters import UnsupportedArchitectureError
    from .preflight import check_device

    check_device(job.device)
    model, _, source = load_model(job.model, dtype=torch_dtype(job.dtype), device=job.device)
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
    return info
