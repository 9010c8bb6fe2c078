import pytest

from tiny_outliers import calibration_ids


@pytest.fixture
def calib_ids():
    return calibration_ids()
