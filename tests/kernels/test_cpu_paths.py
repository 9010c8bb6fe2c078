"""Every CPU kernel path this machine can run equals the reference op; the dispatcher picks paths by the flags.

The avx2 path rounds the activations to int8 (absmax per block of ≤ 128 inside a group), so it is held to the
reference on exactly those activations (`round_activations_int8`), and to the float reference within the
rounding's own error bound. On a CPU with AVX-512 all three paths run here, so CI covers each.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tritium.kernels.cpu as cpu
from tritium.kernels import (
    CpuPathError,
    active_path,
    available_paths,
    bit_planes,
    linear_half_weight,
    load_cpu_kernel,
    packed_linear,
    packed_linear_reference,
    round_activations_int8,
    set_cpu_path,
)
from tritium.pack import pack_quantized
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight
from tritium.utils.errors import TritiumError

ALL_PATHS = ["avx512", "avx2", "portable"]
load_cpu_kernel()
RUNNABLE = available_paths() if cpu.cpu_kernel_status()["loaded"] else []


pytestmark = pytest.mark.usefixtures("restore_cpu_path")


def _runnable(path):
    if path not in RUNNABLE:
        pytest.skip(f"this CPU (or build) cannot run the {path} path")


def _weights(out, in_features, kind, group, seed):
    grid = (TernaryGrid("dlt" if kind == "dlt" else "absmean", group=group, ragged_groups=True) if kind[0] != "u"
            else UniformGrid(int(kind[1]), group=group, ragged_groups=True))
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(seed))
    qw = quantize_weight(w, grid)
    if qw.shift is not None:  # RTN leaves DLT's shift at zero, which would leave the γ·Σx term untested
        qw.shift = torch.randn(qw.shift.shape, generator=torch.Generator().manual_seed(seed + 7)).half().float()
    pw = pack_quantized(qw, ternary_layout="2bit" if kind == "2bit" else "base3")
    args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
    planes = bit_planes(pw.packed, pw.radix, pw.in_features, pw.group_size) if pw.radix <= 16 else None
    return qw, args, planes


def _check_path(path, x, args, planes, dtype=torch.float32):
    """The op on ``path`` against the reference: on the int8-rounded activations for avx2, else on x."""
    set_cpu_path(path)
    got = packed_linear(x, *args, planes)
    assert got.dtype == x.dtype and got.shape == (*x.shape[:-1], args[0].shape[0])
    tol = {torch.float32: 1e-4, torch.float16: 2e-3}[dtype]
    rows_in_planes = x.reshape(-1, x.shape[-1]).shape[0] <= 32
    if path == "avx2" and planes is not None and rows_in_planes:
        seen = round_activations_int8(x, args[5], args[6])
        want = packed_linear_reference(seen, *args).to(dtype)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        # ... and the float reference within the rounding's bound: |Δy| ≤ |Δx|·|W|ᵀ
        weight = packed_linear_reference(torch.eye(args[5]), *args).T  # the dequantized weight [out, in]
        bound = (seen - x.float()).abs() @ weight.abs().T
        exact = packed_linear_reference(x.float(), *args)
        assert bool(((got.float() - exact).abs() <= bound * 1.01 + tol * (1 + exact.abs())).all())
    else:
        torch.testing.assert_close(got, packed_linear_reference(x, *args), rtol=tol, atol=tol)


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 40), in_features=st.integers(1, 300), group=st.sampled_from([1, 5, 7, 32, 100, 129, "channel"]),
       kind=st.sampled_from(["base3", "2bit", "dlt", "u2", "u3", "u4"]), rows=st.integers(1, 6),
       half=st.booleans(), seed=st.integers(0, 1000))
def test_every_path_matches_reference_on_random_shapes(out, in_features, group, kind, rows, half, seed):
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    _, args, planes = _weights(out, in_features, kind, group, seed)
    dtype = torch.float16 if half else torch.float32
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    for path in RUNNABLE:
        _check_path(path, x, args, planes, dtype)


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("kind", ["base3", "2bit", "dlt", "u2", "u3", "u4"])
def test_path_matches_reference_on_model_widths_and_row_counts(path, kind):
    # 576 and 1536 wide (SmolLM2), 1000 with ragged 128-groups; 1-4 rows, 20 (bit planes only) and 33 (decode + GEMM)
    _runnable(path)
    for in_features, group, out in ((576, "channel", 40), (1000, 128, 19), (1536, 64, 24)):
        _, args, planes = _weights(out, in_features, kind, group, seed=in_features)
        for rows in (1, 4, 20, 33):
            x = torch.randn(2, rows, in_features, generator=torch.Generator().manual_seed(rows))
            _check_path(path, x if rows <= 16 else x[0], args, planes)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_path_without_a_layout_and_with_8bit_codes_matches_reference(path):
    # No bit planes passed (a direct op call) and radix 256 (no planes exist): the float lookup on every path.
    _runnable(path)
    for kind, group in (("base3", 32), ("u4", "channel")):
        _, args, _ = _weights(21, 77, kind, group, seed=5)
        _check_path(path, torch.randn(3, 77), args, None)
    qw = quantize_weight(torch.randn(9, 50), UniformGrid(8, group="channel"))
    pw = pack_quantized(qw)
    args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
    _check_path(path, torch.randn(2, 50), args, None)


def test_avx2_path_propagates_a_nan_activation_like_the_reference():
    # The int8 rounding would turn NaN into a number; such a row takes the exact float lookup instead.
    _runnable("avx2")
    _, args, planes = _weights(20, 96, "dlt", 32, seed=1)
    x = torch.randn(3, 96)
    x[1, 40] = float("nan")
    set_cpu_path("avx2")
    got = packed_linear(x, *args, planes)
    assert torch.isnan(got[1]).all() and torch.isnan(packed_linear_reference(x, *args)[1]).all()
    keep = [0, 2]
    want = packed_linear_reference(round_activations_int8(x[keep], 96, args[6]), *args)
    torch.testing.assert_close(got[keep], want, rtol=1e-4, atol=1e-4)


def test_avx2_path_handles_all_zero_rows_and_blocks():
    _runnable("avx2")
    _, args, planes = _weights(17, 300, "u3", 128, seed=2)
    x = torch.randn(3, 300)
    x[0] = 0.0
    x[1, 128:256] = 0.0  # one whole int8 block of zeros
    _check_path("avx2", x, args, planes)


def test_round_activations_int8_is_half_a_step_of_each_blocks_scale():
    x = torch.randn(4, 300) * torch.linspace(0.1, 10, 300)
    r = round_activations_int8(x, 300, 100)
    for g0 in (0, 100, 200):  # groups of 100: one int8 block each
        part, seen = x[:, g0:g0 + 100], r[:, g0:g0 + 100]
        step = part.abs().amax(-1, keepdim=True) / 127
        assert bool(((seen - part).abs() <= step / 2 * 1.0001).all())
        assert torch.equal(torch.round(seen / step), torch.round(seen / step).clamp(-127, 127))
    wide = round_activations_int8(x[:, :1], 1, 1)  # one activation per block: kept exactly
    torch.testing.assert_close(wide, x[:, :1], rtol=1e-6, atol=0)
    # blocks of 128 inside a group of 300: a large value in the first block does not coarsen the third
    y = torch.randn(1, 300)
    y[0, 0] = 1000.0
    ry = round_activations_int8(y, 300, 300)
    assert (ry[0, 256:] - y[0, 256:]).abs().max() < y[0, 256:].abs().max() / 127
    assert (ry[0, 1:128] - y[0, 1:128]).abs().max() > y[0, 256:].abs().max() / 127 / 2


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("rows,out_features,in_features", [(1, 37, 576), (3, 100, 19), (2, 45, 8)])
def test_linear_half_weight_on_every_path(path, rows, out_features, in_features):
    _runnable(path)
    set_cpu_path(path)
    g = torch.Generator().manual_seed(rows + in_features)
    weight = torch.randn(out_features, in_features, generator=g).half()
    x = torch.randn(rows, in_features, generator=g)
    torch.testing.assert_close(linear_half_weight(x, weight), x @ weight.float().t(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_packed_module_follows_a_path_change(path):
    # A TernaryLinear caches its bit planes; after a path change it must build (or drop) them for the new path.
    _runnable(path)
    from tritium.nn import TernaryLinear

    qw = quantize_weight(torch.randn(24, 64), TernaryGrid("absmean", group=32))
    layer = TernaryLinear.from_quantized(qw)
    x = torch.randn(1, 64)
    set_cpu_path("portable")
    layer(x)
    assert layer.cpu_kernel_layout() is None
    set_cpu_path(path)
    got = layer(x)
    assert (layer.cpu_kernel_layout() is not None) == (path != "portable")
    seen = round_activations_int8(x, 64, 32) if path == "avx2" else x
    torch.testing.assert_close(got, seen @ qw.dequantize().T, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the dispatcher


def test_paths_for_flags():
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c", "sse2"}
    assert cpu.paths_for_flags(avx512) == ["avx512", "avx2", "portable"]
    assert cpu.paths_for_flags(avx512 - {"avx512bw"}) == ["avx2", "portable"]
    assert cpu.paths_for_flags({"avx", "avx2", "fma", "f16c"}) == ["avx2", "portable"]
    assert cpu.paths_for_flags({"avx", "avx2", "f16c"}) == ["portable"]  # no FMA: no avx2 path
    assert cpu.paths_for_flags(set()) == ["portable"]


def test_dispatcher_picks_the_fastest_path_the_flags_allow(monkeypatch):
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    if "avx512" in RUNNABLE:
        assert set_cpu_path(None) == "avx512" and active_path() == "avx512"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma", "f16c"}))
    if "avx2" in RUNNABLE:
        assert set_cpu_path(None) == "avx2" and active_path() == "avx2"
        assert torch.ops.tritium_cpu_info.active_path() == "avx2"
    assert "avx512" not in available_paths()


def test_forcing_a_path_the_cpu_cannot_run_is_a_clear_error(monkeypatch):
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    before = active_path()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "f16c"}))
    with pytest.raises(CpuPathError, match=r"avx512.*lacks avx512f, avx512bw, avx512vl") as caught:
        set_cpu_path("avx512")
    assert isinstance(caught.value, TritiumError) and f"choose one of {', '.join(available_paths())}," in str(caught.value)
    with pytest.raises(CpuPathError, match="names no CPU kernel path: choose one of avx512, avx2, portable"):
        set_cpu_path("sse9")
    assert active_path() == before  # a refused request changes nothing
    with pytest.raises(RuntimeError, match="unknown path"):
        torch.ops.tritium_cpu_info.set_path("sse9")  # the library refuses on its own too


def test_no_avx2_gives_the_portable_path_with_one_warning(monkeypatch):
    # As at a fresh load on such a CPU: no path chosen yet, flags without AVX2, then ordinary calls.
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "sse4_2", "avx"}))
    monkeypatch.delenv(cpu.PATH_ENV, raising=False)
    monkeypatch.setitem(cpu._state, "warned_portable", False)
    monkeypatch.setitem(cpu._state, "path", None)
    _, args, planes = _weights(8, 40, "base3", 8, seed=0)
    x = torch.randn(1, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = packed_linear(x, *args, planes)
        b = packed_linear(x, *args, planes)
        assert set_cpu_path(None) == "portable"
    messages = [str(w.message) for w in caught if "tritium" in str(w.message)]
    assert len(messages) == 1 and "no AVX2" in messages[0] and "portable path" in messages[0], messages
    assert active_path() == "portable" and torch.ops.tritium_cpu_info.active_path() == "portable"
    assert torch.equal(a, b)
    torch.testing.assert_close(a, packed_linear_reference(x, *args), rtol=1e-5, atol=1e-5)


def test_environment_variable_naming_an_unrunnable_path_fails_on_every_call(monkeypatch):
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    _, args, planes = _weights(8, 40, "base3", 8, seed=0)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "f16c"}))
    for value, message in (("avx1024", "names no CPU kernel path"), ("avx512", "lacks avx512f")):
        monkeypatch.setenv(cpu.PATH_ENV, value)
        monkeypatch.setitem(cpu._state, "path", None)  # as at a fresh load
        for _ in range(2):  # not only the first call: nothing runs on a path nobody chose
            with pytest.raises(CpuPathError, match=f"TRITIUM_CPU_PATH='{value}'.*{message}"):
                packed_linear(torch.randn(1, 40), *args, planes)


def _fresh(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def test_environment_variable_forces_the_path_at_load():
    # A real fresh load (one process: importing tritium takes seconds): the second-best path, forced.
    if len(RUNNABLE) < 2:
        pytest.skip("this CPU runs only the portable path")
    path = RUNNABLE[1]
    done = _fresh("""
        import torch
        from tritium.kernels import active_path, bit_planes, packed_linear, packed_linear_reference
        from tritium.kernels import round_activations_int8
        from tritium.pack import pack_quantized
        from tritium.quant import TernaryGrid, quantize_weight
        pw = pack_quantized(quantize_weight(torch.randn(6, 20), TernaryGrid("absmean", group=8, ragged_groups=True)))
        args = (pw.packed, pw.scale, pw.zero, pw.shift, pw.radix, pw.in_features, pw.group_size, pw.implicit_zero)
        x = torch.randn(1, 20)
        got = packed_linear(x, *args, bit_planes(pw.packed, pw.radix, 20, 8))
        seen = round_activations_int8(x, 20, 8) if active_path() == "avx2" else x
        torch.testing.assert_close(got, packed_linear_reference(seen, *args), rtol=1e-5, atol=1e-5)
        print("path", active_path(), torch.ops.tritium_cpu_info.active_path())
    """, {cpu.PATH_ENV: f" {path.upper()} "})
    assert done.returncode == 0 and f"path {path} {path}" in done.stdout, done.stderr[-2000:]


# ------------------------------------------------------------------ threads


def test_kernel_threads_are_torchs_pool():
    # The kernel's parallel loops run in the OpenMP runtime torch loaded: one runtime in the process,
    # and its thread count follows torch.set_num_threads (a second runtime would keep its own default).
    # Checked in a fresh interpreter: other tests load libraries (sentencepiece) that bring their own
    # libgomp into this one, which says nothing about the kernel.
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    script = """
import os, torch
from tritium.kernels import cpu
cpu.load_cpu_kernel()
maps = open('/proc/self/maps').read().splitlines() if os.path.exists('/proc/self/maps') else []
runtimes = {line.split()[-1] for line in maps if cpu._OPENMP_LIBRARY.match(line.split('/')[-1])}
assert len(runtimes) <= 1, runtimes
for n in (1, 3):
    torch.set_num_threads(n)
    assert cpu.openmp_max_threads() == n, (n, cpu.openmp_max_threads())
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("grid", [TernaryGrid("absmean", group="channel"), UniformGrid(4, group=32)],
                         ids=lambda g: g.describe())
def test_avx2_path_on_a_packed_model_stays_within_int8_rounding_of_its_fake_quant_logits(grid):
    # The model-level cost of the int8 activations: logits off by under a percent of their spread (RMS).
    _runnable("avx2")
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import tiny_model
    from tritium.nn import pack_model

    fake = tiny_model("llama", seed=0)
    result = quantize_(fake, RTNConfig(grid=grid))
    packed = tiny_model("llama", seed=0)
    quantize_(packed, RTNConfig(grid=grid))
    pack_model(packed, result.weights)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(1))
    set_cpu_path("avx2")
    with torch.no_grad():
        want, got = fake(ids).logits, packed(ids).logits
    spread, diff = want.std(), got - want
    assert diff.pow(2).mean().sqrt() < 0.02 * spread and diff.abs().max() < 0.1 * spread  # measured: ≤ 0.7%, ≤ 3.3%
    assert diff.abs().max() > 1e-5 * spread  # the avx2 path really ran: the int8 rounding shows (exact paths: 1e-6)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8


def test_kernel_stays_on_the_calling_thread_while_other_processes_fill_the_cores():
    # With every core busy elsewhere a fork would wait at its join for a worker the scheduler has not run
    # (20 ms instead of 30 µs measured for 576×3072 at 2 threads); the kernel then runs without forking.
    if not RUNNABLE:
        pytest.skip("no CPU kernel")
    cpus = os.cpu_count() or 1
    if cpus > 16:
        pytest.skip("too many cores to fill for a quick test")
    import time

    info = torch.ops.tritium_cpu_info
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        time.sleep(0.3)
        info.machine_has_room()  # opens a measuring window ...
        time.sleep(0.45)  # ... of more than 200 ms, all of it under the busy processes
        assert info.other_processes_cores() >= cpus - 0.6
        assert not info.machine_has_room()
        _, args, planes = _weights(3072, 576, "base3", "channel", seed=0)  # large enough to fork when idle
        x = torch.randn(1, 576)
        _check_path(RUNNABLE[0], x, args, planes)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def test_cli_refuses_a_bad_path_request_before_any_work(monkeypatch, capsys):
    from tritium.cli import main

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "f16c"}))
    for value, message in (("avx1024", "names no CPU kernel path"), ("avx512", "lacks avx512f, avx512bw, avx512vl")):
        monkeypatch.setenv(cpu.PATH_ENV, value)
        assert main(["info", "--model", "/no/such/model"]) == 2  # the path check comes before the model lookup
        err = capsys.readouterr().err
        assert message in err and "not found" not in err, err
    monkeypatch.setenv(cpu.PATH_ENV, "avx2")
    cpu.check_path_request()  # a runnable request passes
