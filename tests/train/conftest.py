import pytest


@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch):
    """precision "auto" takes bf16 autocast on a CPU with AMX or AVX512-BF16: hide those flags, so that the
    training tests run in fp32 on every machine (their exact comparisons are fp32 claims). Tests of the
    precision choice set the flags they need themselves."""
    from tritium.utils import hardware

    real = hardware.cpu_flags()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: real - frozenset(hardware.NATIVE_BF16_CPU_FLAGS))
