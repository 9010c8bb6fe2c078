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
    assert "--precision auto or bf16" in hardware.cpu_precision_hint("fp32")
    assert hardware.cpu_precision_hint("auto") is None  # auto takes bf16 there itself
    assert hardware.cpu_precision_hint("bf16") is None


@pytest.mark.parametrize("names, precision, bf16", [
    (("avx2", "avx512f", "avx512_bf16"), "auto", True), (("amx_bf16",), "auto", True),
    (("avx2", "avx512f"), "auto", False), ((), "auto", False),
    (("avx2",), "bf16", True), (("amx_bf16",), "fp32", False)])
def test_auto_takes_bf16_only_where_the_cpu_has_it(flags, names, precision, bf16):
    flags(*names)
    assert hardware.uses_bf16(precision, "cpu") is bf16


def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert hardware.uses_bf16("auto", "cuda") is supported


def test_bf16_on_an_emulating_cpu_warns_once_naming_the_missing_flags(flags, monkeypatch):
    monkeypatch.setattr(hardware, "_warned", set())
    flags("avx2", "fma")
    with pytest.warns(RuntimeWarning, match="neither amx_bf16 nor avx512_bf16.*--precision auto.*fp32"):
        assert hardware.warn_if_emulated_bf16("bf16", "cpu")
    assert not hardware.warn_if_emulated_bf16("bf16", "cpu")  # once a process
    flags("avx512_bf16")
    assert hardware.emulated_bf16_warning("bf16", "cpu") is None
    flags("avx2")
    assert hardware.emulated_bf16_warning("auto", "cpu") is None and hardware.emulated_bf16_warning("fp32", "cpu") is None


def test_hint_points_bf16_runs_to_fp32_where_bf16_is_emulated(flags):
    flags("avx2")
    assert "--precision fp32 or auto" in hardware.cpu_precision_hint("bf16")
    assert hardware.cpu_precision_hint("fp32") is None
    assert hardware.cpu_precision_hint("auto") is None


def test_cpu_flags_reads_this_machine():
    hardware.cpu_flags.cache_clear()
    found = hardware.cpu_flags()
    assert isinstance(found, frozenset)
    assert all(isinstance(f, str) and f and " " not in f for f in found)
