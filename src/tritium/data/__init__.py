"""Where evaluation and calibration data come from."""

from .calibration import CalibrationError, calibration_samples, calibration_text  # noqa: F401
from .sources import (  # noqa: F401
    DATA_ENV,
    DATASETS,
    DataNotFoundError,
    find_data_file,
    load_eval_text,
    load_text_rows,
    require_data_file,
)
