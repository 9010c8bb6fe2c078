"""Block-by-block calibration: capture the first block's inputs, then walk the blocks
with a float and a quantized activation stream, checkpointing after each block."""

from .capture import (  # noqa: F401
    BlockInputs,
    CalibrationInputError,
    NonFiniteError,
    capture_block_inputs,
    check_calibration_ids,
)
from .pipeline import (  # noqa: F401
    BlockContext,
    BlockMethod,
    BlockResult,
    PipelineSettings,
    block_forward,
    resolve_device,
    run_blockwise,
)
