"""What every calibrated method shares: the pipeline settings in its config, and the
call that runs its per-block function over the model."""

from __future__ import annotations

from dataclasses import dataclass

from ..calib.pipeline import BlockMethod, PipelineSettings, run_blockwise
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


def run_calibrated(name: str, block_method: BlockMethod, model, layout, config: CalibratedConfig, linears,
                   calibration, progress: bool = True):
    return run_blockwise(model, layout, linears, calibration, block_method, config.pipeline_settings(), config.grid,
                         name, method_args=config.method_args(), progress=progress)
