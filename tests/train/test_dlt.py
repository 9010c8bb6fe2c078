import pytest
import torch
import torch.nn.functional as F

from tritium.models import decoder_layout, tiny_model
from tritium.quant.grids import GroupLayout, QuantConfigError, TernaryGrid, quantize_weight
from tritium.train.dlt import DLTConfig, DLTLinear, dlt_codes, dlt_weight, fold_, quant_parameters, to_dlt_


def _group_params(out=6, inp=12, group=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = GroupLayout.for_weight((out, inp), group)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    alpha = (torch.rand(layout.scale_shape, generator=gen, dtype=torch.float64) + 0.5)
    shift = 0.1 * torch.randn(layout.scale_shape, generator=gen, dtype=torch.float64)
    return w, alpha, shift, layout


@pytest.mark.parametrize("group", [4, 5, "channel", "tensor"])
def test_scale_and_shift_gradients_match_finite_differences(group):
    w, alpha, shift, _ = _group_params()
    layout = GroupLayout.for_weight(tuple(w.shape), group, ragged=True)  # 5: a shorter last group
    alpha = torch.rand(layout.scale_shape, dtype=torch.float64) + 0.5
    shift = 0.1 * torch.randn(layout.scale_shape, dtype=torch.float64)
    x = torch.randn(3, w.shape[1], dtype=torch.float64)
    alpha.requires_grad_(True)
    shift.requires_grad_(True)
    x.requires_grad_(True)

    def layer(x, alpha, shift):
        return F.linear(x, dlt_weight(w, alpha, shift, layout, ste_clip=1.0))

    assert torch.autograd.gradcheck(layer, (x, alpha, shift), eps=1e-7, atol=1e-6)


def test_forward_is_alpha_times_codes_plus_shift_with_twn_threshold():
    w, alpha, shift, layout = _group_params()
    out = dlt_weight(w, alpha, shift, layout)
    # the definition, written out group by group
    for r in range(w.shape[0]):
        for gi in range(layout.n_groups):
            cols = slice(gi * 4, gi * 4 + 4)
            centered = w[r, cols] - shift[r, gi]
            delta = 0.7 * centered.abs().mean()
            t = torch.sign(centered) * (centered.abs() > delta)
            torch.testing.assert_close(out[r, cols], alpha[r, gi] * t + shift[r, gi])


def test_latent_gradient_is_clipped_straight_through():
    w, alpha, shift, layout = _group_params()
    w.requires_grad_(True)
    grad = torch.randn_like(w)
    dlt_weight(w, alpha, shift, layout, ste_clip=1.0).backward(grad)
    inside = (w.detach() - layout.expand(shift)).abs() <= layout.expand(alpha)
    assert 0 < inside.sum() < inside.numel()  # the clip really cuts something here
    torch.testing.assert_close(w.grad, grad * inside)
    w.grad = None
    dlt_weight(w, alpha, shift, layout, ste_clip=None).backward(grad)
    torch.testing.assert_close(w.grad, grad)


def test_first_forward_is_the_least_squares_ternary_fit():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8)
    module = DLTLinear.from_linear(linear, DLTConfig(group=16))
    expected = quantize_weight(linear.weight.detach(), TernaryGrid(variant="dlt", group=16)).dequantize()
    torch.testing.assert_close(module.quantized_weight().detach(), expected)
    # α is the least-squares optimum for those codes: nudging it either way raises the error
    err = lambda a: ((linear.weight - (a * dlt_codes(linear.weight, module.shift, module.layout).float()
                                         .view(8, 2, 16)).view(8, 32) - module.layout.expand(module.shift)) ** 2).sum()
    base = module.alpha.detach().unsqueeze(-1)
    assert err(base) <= err(base * 1.01) and err(base) <= err(base * 0.99)
    zero = DLTLinear.from_linear(linear, DLTConfig(group=16, shift_init="zero", learn_shift=False))
    assert torch.count_nonzero(zero.shift) == 0 and not isinstance(zero.shift, torch.nn.Parameter)


def test_swap_and_fold_round_trip_on_a_tiny_model():
    model = tiny_model("llama", seed=1)
    ids = torch.randint(0, 512, (2, 16))
    swapped = to_dlt_(model, DLTConfig(group=32, skip=("*.mlp.down_proj",)))
    assert len(swapped) == 2 * 6 and all(isinstance(m, DLTLinear) for m in swapped.values())
    assert not isinstance(model.model.layers[0].mlp.down_proj, DLTLinear)
    latent, quant = quant_parameters(model)
    assert len(latent) == 12 and len(quant) == 24
    with torch.no_grad():
        for m in swapped.values():  # move α, γ away from their init, as training would
            m.alpha.mul_(1.1)
            m.shift.add_(0.001)
        before = model(ids).logits
    result = fold_(model)
    assert result.method == "dlt" and set(result.weights) == set(swapped)
    assert not any(isinstance(m, DLTLinear) for m in model.modules())
    layout = decoder_layout(model)  # still a decoder layout of plain linears
    for name, q in result.weights.items():
        assert q.codes.dtype == torch.int8 and set(q.codes.unique().tolist()) <= {-1, 0, 1}
        assert q.shift is not None and torch.equal(q.scale, q.scale.half().float())
        torch.testing.assert_close(layout.quantizable_linears()[name].weight, q.dequantize())
    after = model(ids).logits
    torch.testing.assert_close(after, before, atol=2e-3, rtol=2e-3)  # fp16 rounding of α, γ only


def test_bad_group_size_fails_before_anything_changes():
    model = tiny_model("llama", seed=1)  # widths 64 and 128
    with pytest.raises(QuantConfigError, match="does not divide"):
        to_dlt_(model, DLTConfig(group=48))
    assert not any(isinstance(m, DLTLinear) for m in model.modules())
    with pytest.raises(QuantConfigError, match="tied"):
        to_dlt_(tiny_model("llama", tie_word_embeddings=True), DLTConfig(group=32, quantize_lm_head=True))
    with pytest.raises(QuantConfigError, match="shift_init"):
        DLTConfig(shift_init="median")
