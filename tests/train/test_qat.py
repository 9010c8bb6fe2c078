import pytest
import torch
import torch.nn.functional as F

from tritium.models import tiny_model
from tritium.quant.grids import GroupLayout, QuantConfigError, UniformGrid, quantize_weight
from tritium.train.distill import DistillConfig, distill
from tritium.train.dlt import fold_, quant_parameters, to_uniform_qat_
from tritium.train.qat import UniformQATLinear, uniform_qat_weight


def _params(grid, out=6, inp=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = GroupLayout.for_weight((out, inp), grid.group, grid.ragged_groups)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    scale = (0.3 + 0.4 * torch.rand(layout.scale_shape, generator=gen, dtype=torch.float64))
    # non-integer zero points: the forward rounds them; some near the range edges so the clamp cuts
    zero = torch.rand(layout.scale_shape, generator=gen, dtype=torch.float64) * grid.max_code
    return w, scale, zero, layout


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=5, ragged_groups=True), UniformGrid(bits=3, group=4),
                                  UniformGrid(bits=4, group="channel", symmetric=True)])
def test_forward_is_the_clamped_rounded_grid_value(grid):
    w, scale, zero, layout = _params(grid)
    out = uniform_qat_weight(w, scale, zero, layout, grid, fp16_scales=False)
    s, z = layout.expand(scale), layout.expand(torch.round(zero))
    expected = s * (torch.clamp(torch.round(w / s) + z, 0, grid.max_code) - z)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=5, ragged_groups=True), UniformGrid(bits=3, group=4)])
def test_gradients_are_lsq_straight_through(grid):
    """Autograd through round_ste/clamp gives LSQ's gradients, written out here in float64."""
    w, scale, zero, layout = _params(grid)
    w.requires_grad_(True), scale.requires_grad_(True), zero.requires_grad_(True)
    grad = torch.randn_like(w)
    uniform_qat_weight(w, scale, zero, layout, grid, fp16_scales=False).backward(grad)
    s, z = layout.expand(scale.detach()), layout.expand(torch.round(zero.detach()))
    v = w.detach() / s
    unclamped = torch.round(v) + z
    inside = (unclamped >= 0) & (unclamped <= grid.max_code)
    assert 0 < inside.sum() < inside.numel()  # both branches are exercised
    q = torch.clamp(unclamped, 0, grid.max_code)
    d_scale = torch.where(inside, torch.round(v) - v, q - z)
    d_zero = torch.where(inside, torch.zeros_like(v), -s)
    per_group = lambda t: layout.reduce(t, lambda g: g.sum(-1))  # noqa: E731
    torch.testing.assert_close(w.grad, grad * inside)
    torch.testing.assert_close(scale.grad, per_group(grad * d_scale))
    torch.testing.assert_close(zero.grad, per_group(grad * d_zero))


def test_frozen_codes_gradients_match_finite_differences():
    """With the codes fixed (E2E-QP) the weight is smooth in the scale: a true gradcheck in float64."""
    grid = UniformGrid(bits=2, group=5, ragged_groups=True)
    w, scale, zero, layout = _params(grid)
    codes = torch.randint(0, 4, w.shape, generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    x = torch.randn(3, w.shape[1], dtype=torch.float64, requires_grad=True)
    scale.requires_grad_(True)

    def layer(x, scale):
        return F.linear(x, uniform_qat_weight(w, scale, zero, layout, grid, codes=codes, fp16_scales=False))

    assert torch.autograd.gradcheck(layer, (x, scale), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=48, ragged_groups=True),
                                  UniformGrid(bits=3, group=32, symmetric=True), UniformGrid(bits=4, group="tensor")])
def test_first_forward_is_rtn_and_export_equals_the_forward(grid):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 8)
    module = UniformQATLinear.from_linear(linear, grid)
    rtn = quantize_weight(linear.weight.detach(), grid).dequantize()
    assert torch.equal(module.quantized_weight().detach(), rtn)
    with torch.no_grad():  # move the quantizer off its start, to non-fp16 scales and non-integer zeros
        module.scale.mul_(1.0123)
        module.zero.add_(0.3 if not grid.symmetric else 0.0)
        module.weight.add_(0.01 * torch.randn_like(module.weight))
    q = module.to_quantized()
    assert torch.equal(q.scale, q.scale.half().float()) and torch.equal(q.zero, torch.round(q.zero))
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= grid.max_code
    assert torch.equal(q.dequantize(), module.quantized_weight().detach())  # bit for bit


def test_swap_and_fold_round_trip():
    model = tiny_model("llama", seed=1)
    grid = UniformGrid(bits=2, group=32)
    swapped = to_uniform_qat_(model, grid)
    latent, quant = quant_parameters(model)
    assert len(swapped) == 14 and len(latent) == 14 and len(quant) == 28
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
    result = fold_(model, method="qat")
    assert not any(isinstance(m, UniformQATLinear) for m in model.modules())
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    assert result.grid == grid and all(q.zero is not None for q in result.weights.values())
    with pytest.raises(QuantConfigError, match="does not divide"):
        to_uniform_qat_(tiny_model("llama"), UniformGrid(bits=2, group=48))


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_uniform_qat_distills_tiny_models(arch, tmp_path):
    model = tiny_model(arch, seed=0)
    seqs = torch.randint(0, 500, (8, 16), generator=torch.Generator().manual_seed(0))
    grid = UniformGrid(bits=2, group=48, ragged_groups=True)
    config = DistillConfig(grid=grid, loss={"off_weight": 1.0, "kl_weight": 1.0},
                           train={"steps": 10, "micro_batch_size": 4, "progress": False,
                                  "optim": {"lr": 1e-3, "lr_quant": 1e-3, "schedule": "constant"}})
    result, train = distill(model, None, config, tmp_path, sequences=seqs)
    losses = train.losses()
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0]
    assert result.method == "qat" and result.grid == grid
    layers = dict(model.named_modules())
    for name, q in result.weights.items():
        assert int(q.codes.max()) <= 3 and torch.equal(q.zero, torch.round(q.zero))
        assert torch.equal(layers[name].weight, q.dequantize())  # the folded model is its export


@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=5, ragged_groups=True), UniformGrid(bits=3, group=4)])
def test_codes_scale_gradient_is_the_frozen_codes_one_with_latents_training(grid):
    """scale_gradient="codes": same forward as LSQ; s gets q − z and z gets −s everywhere (as with frozen
    codes), the latent the straight-through identity inside the range."""
    w, scale, zero, layout = _params(grid)
    lsq = uniform_qat_weight(w, scale, zero, layout, grid, fp16_scales=False)
    w.requires_grad_(True), scale.requires_grad_(True), zero.requires_grad_(True)
    grad = torch.randn_like(w)
    out = uniform_qat_weight(w, scale, zero, layout, grid, fp16_scales=False, scale_gradient="codes")
    torch.testing.assert_close(out.detach(), lsq, rtol=0, atol=0)
    out.backward(grad)
    s, z = layout.expand(scale.detach()), layout.expand(torch.round(zero.detach()))
    unclamped = torch.round(w.detach() / s) + z
    inside = (unclamped >= 0) & (unclamped <= grid.max_code)
    assert 0 < inside.sum() < inside.numel()
    q = torch.clamp(unclamped, 0, grid.max_code)
    per_group = lambda t: layout.reduce(t, lambda g: g.sum(-1))  # noqa: E731
    torch.testing.assert_close(w.grad, grad * inside)
    torch.testing.assert_close(scale.grad, per_group(grad * (q - z)))
    torch.testing.assert_close(zero.grad, per_group(grad * -s))


def test_codes_scale_gradient_moves_scales_from_a_ptq_start_where_lsq_barely_does():
    """Latents at their cells' centres (load_codes): LSQ's scale gradient is 0 there, the codes one is not."""
    grid = UniformGrid(bits=2, group=16)
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 4)
    q = quantize_weight(linear.weight.detach(), grid)
    norms = {}
    for mode in ("lsq", "codes"):
        module = UniformQATLinear.from_linear(linear, grid, scale_gradient=mode)
        module.load_codes(q.codes, q.scale.half().float(), q.zero)
        module(torch.randn(8, 32, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        norms[mode] = module.scale.grad.norm().item()
    assert norms["lsq"] < 1e-3 * norms["codes"]
    with pytest.raises(QuantConfigError, match="scale_gradient"):
        UniformQATLinear.from_linear(linear, grid, scale_gradient="fast")


def test_scale_gradient_on_a_ternary_grid_is_refused():
    from tritium.quant.grids import TernaryGrid

    with pytest.raises(QuantConfigError, match="applies to uniform and GGUF grids"):
        DistillConfig(grid=TernaryGrid(variant="dlt", group=32), scale_gradient="codes")


def _autograd_chain(latent, scale, zero, layout, grid, codes=None):
    """The frozen-codes / codes-gradient fake quant written as plain autograd ops (what the fused
    CodesGradientFakeQuant replaces)."""
    from tritium.quant.grids import round_ste
    from tritium.train.qat import effective_scale_zero

    s, z = effective_scale_zero(scale, zero, grid)
    s_full, z_full = layout.expand(s), layout.expand(z)
    q = codes.to(latent.dtype) if codes is not None else \
        torch.clamp(round_ste(latent / s_full.detach()) + z_full.detach(), 0, grid.max_code)
    return (q - z_full) * s_full


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("grid", [UniformGrid(bits=2, group=5, ragged_groups=True), UniformGrid(bits=4, group=4),
                                  UniformGrid(bits=3, group="tensor")])
def test_fused_fake_quant_equals_the_autograd_chain(grid, frozen):
    """float32, fp16 scales, as training runs: the same weights bit for bit, and the same gradients."""
    w, scale, zero, layout = _params(grid, out=9, inp=12 if grid.group == 4 else 13, seed=3)
    w, scale, zero = w.float(), scale.float(), zero.float()
    codes = torch.randint(0, grid.max_code + 1, w.shape, dtype=torch.uint8) if frozen else None
    grad = torch.randn_like(w)
    results = []
    for fn in (lambda *a: uniform_qat_weight(*a, codes=codes, scale_gradient="codes"),
               lambda *a: _autograd_chain(*a, codes=codes)):
        leaves = [t.clone().requires_grad_(True) for t in (w, scale, zero)]
        out = fn(*leaves, layout, grid)
        out.backward(grad)
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    (fused, fused_grads), (chain, chain_grads) = results
    torch.testing.assert_close(fused, chain, rtol=0, atol=0)
    for got, want in zip(fused_grads, chain_grads):
        if want is None or frozen and got is None:
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, want)
    assert (fused_grads[0] is None) == frozen
