import pytest

from tritium.utils import hardware


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU lists exactly the given flags."""

    def set_flags(*names):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(names))

    return set_flags


@pytest.mark.parametrize("names, native", [(("avx2", "avx512f", "avx512_bf16"), True), (("amx_bf16",), True),
                                           (("avx2", "avx512f"), False), ((), False)])
def test_native_bf16_on_the_cpu_follows_amx_or_avx512_bf16(flags, names, native):
    flags(*names)
    assert hardware.native_bf16("cpu") is native


def test_hint_points_fp32_runs_to_bf16_where_the_cpu_has_it(flags):
    flags("avx512f", "avx512_bf16")
    for precision in ("auto", "fp32"):
        assert "--precision bf16" in hardware.cpu_precision_hint(precision)
    assert hardware.cpu_precision_hint("bf16") is None


def test_hint_points_bf16_runs_to_fp32_where_bf16_is_emulated(flags):
    flags("avx2")
    assert "--precision fp32" in hardware.cpu_precision_hint("bf16")
    assert hardware.cpu_precision_hint("fp32") is None
    assert hardware.cpu_precision_hint("auto") is None


def test_cpu_flags_reads_this_machine():
    hardware.cpu_flags.cache_clear()
    found = hardware.cpu_flags()
    assert isinstance(found, frozenset)
    assert all(isinstance(f, str) and f and " " not in f for f in found)
