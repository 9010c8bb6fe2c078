"""What every calibrated method shares: the pipeline settings in its config, and the
call that runs its per-block function over the model."""

from __future__ import annotations

from dataclasses import dataclass

from ..calib.pipeline import BlockContext, BlockMethod, PipelineSettings, run_blockwise
from ..quant.grids import Grid, grid_to_dict
from .base import MethodConfig


@dataclass
class CalibratedConfig(MethodConfig):
    device: str | None = None  # None/"auto": cuda when available, else cpu
    forward_batch_size: int = 8  # samples per block forward
    checkpoint_dir: str | None = None  # checkpoint every block here and resume from it
    offload_activations: bool = False  # keep activations on the CPU, one batch on the device at a time
    offload_dir: str | None = None  # keep the blocks not being calibrated on disk here (memory short)
    seed: int = 0

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(device=self.device, forward_batch_size=self.forward_batch_size,
                                checkpoint_dir=self.checkpoint_dir, offload_activations=self.offload_activations,
                                offload_dir=self.offload_dir, seed=self.seed)


def block_grids(ctx: BlockContext, config: MethodConfig) -> dict[str, Grid]:
    """The grid of each selected linear of the block, by short name (mixed precision gives each its own)."""
    return {short: config.grid_for(f"{ctx.name}.{short}") for short in ctx.linears}


def run_calibrated(name: str, block_method: BlockMethod, model, layout, config: CalibratedConfig, linears,
                   calibration, progress: bool = True):
    method_args = config.method_args()
    if config.grid_overrides:  # part of the run's identity, so a resumed run keeps every linear's grid
        method_args["grid_overrides"] = {n: grid_to_dict(g) for n, g in sorted(config.grid_overrides.items())}
    settings = config.pipeline_settings()
    if config.act_grid is not None:  # the blocks calibrate with their linears' inputs quantized
        from ..nn.activation_quant import activation_record

        settings.activation_grids = {n: config.act_grid_for(n) for n in linears}
        method_args["activations"] = activation_record(settings.activation_grids)  # part of the identity too
    return run_blockwise(model, layout, linears, calibration, block_method, settings, config.grid,
                         name, method_args=method_args, progress=progress)
