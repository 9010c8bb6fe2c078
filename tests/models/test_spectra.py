import math
from dataclasses import astuple

import pytest
import torch
from transformers import LlamaForCausalLM

from tritium.models.spectra import (
    SPECTRA_SIZES,
    BitLinear,
    SpectraConfigError,
    TriLinear,
    build_model,
    count_parameters,
    load_spectra_model,
    save_spectra_model,
    to_plain_llama,
)
from tritium.models import decoder_layout
from tritium.quant.grids import QuantConfigError, absmax_activation_ste, absmean_ternary_ste


def test_the_ternary_linear_computes_its_definition():
    torch.manual_seed(0)
    layer = TriLinear(48, 32)
    x = torch.randn(5, 48)
    w = layer.weight.detach()
    gamma = 1e-5 + w.abs().mean()  # Spectra: γ = ε + mean|W|
    expected_weight = gamma * torch.round(torch.clamp(w / gamma, -1, 1))
    torch.testing.assert_close(layer(x), x @ expected_weight.T, rtol=0, atol=1e-6)
    codes, gammas = layer.ternary()
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0} and len(codes.unique()) == 3
    assert gammas.shape == (1,) and torch.isclose(gammas[0], gamma)


def test_shards_get_their_own_scale_along_the_right_dimension():
    w = torch.cat([torch.full((4, 8), 1.0), torch.full((4, 8), 4.0)])  # two output halves of different size
    column = absmean_ternary_ste(w, shards=2, shard_dim=0)
    assert torch.allclose(column[:4], torch.full((4, 8), 1.0 + 1e-5)) and torch.allclose(column[4:], torch.full((4, 8), 4.0 + 1e-5))
    whole = absmean_ternary_ste(w, shards=1)
    # one scale for both halves: 1/2.5 rounds to 0, so the small half vanishes
    assert torch.equal(whole[:4], torch.zeros(4, 8)) and torch.allclose(whole[4:], torch.full((4, 8), 2.5 + 1e-5))
    row = absmean_ternary_ste(w.T.contiguous(), shards=2, shard_dim=1)
    torch.testing.assert_close(row, column.T)
    with pytest.raises(QuantConfigError, match="divide"):
        absmean_ternary_ste(w, shards=3)
    with pytest.raises(SpectraConfigError, match="divide"):
        TriLinear(48, 30, shards=4)


def test_the_straight_through_estimator_passes_the_gradient_to_the_latent_weight():
    torch.manual_seed(1)
    layer = TriLinear(16, 8)
    x = torch.randn(3, 16)
    upstream = torch.randn(3, 8)
    (layer(x) * upstream).sum().backward()
    # d/dW of sum(g · x Ŵᵀ) with Ŵ passed straight through is gᵀx, rounding or not
    torch.testing.assert_close(layer.weight.grad, upstream.T @ x)


def test_bitnet_quantizes_each_tokens_activations_to_8_bits():
    torch.manual_seed(2)
    x = torch.randn(4, 64) * torch.tensor([1.0, 10.0, 0.1, 3.0]).unsqueeze(1)
    q = absmax_activation_ste(x, bits=8)
    for row, original in zip(q, x):
        step = original.abs().max() / 127
        levels = torch.round(row / step)
        torch.testing.assert_close(levels * step, row)
        assert levels.abs().max() <= 128
    layer = BitLinear(64, 16)
    y = layer(x)
    assert y.shape == (4, 16) and isinstance(layer.norm, torch.nn.RMSNorm)
    y.sum().backward()
    assert layer.weight.grad is not None and layer.norm.weight.grad is not None


def test_one_definition_with_the_linear_as_the_only_switch():
    models = {arch: build_model(arch, "tiny-xs", vocab_size=300, context=64, seed=3) for arch in ("float", "trilm", "bitnet")}
    float_state = models["float"].state_dict()
    for arch, model in models.items():
        assert isinstance(model, LlamaForCausalLM)
        linears = [m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
        kind = {"float": torch.nn.Linear, "trilm": TriLinear, "bitnet": BitLinear}[arch]
        assert all(type(m) is kind for m in linears)
        # same seed, same initial weights: only the linear's forward differs
        assert all(torch.equal(v, float_state[k]) for k, v in model.state_dict().items() if k in float_state)
        assert not model.config.tie_word_embeddings and model.config.vocab_size == 300
    counts = count_parameters(models["trilm"])
    assert counts["linear"] == 2 * (4 * 64 * 64 + 3 * 64 * 160) and counts["embedding"] == counts["lm_head"] == 300 * 64


def test_a_trilm_checkpoint_reloads_as_a_plain_llama_with_identical_logits(tmp_path):
    model = build_model("trilm", "tiny-xs", vocab_size=300, context=64, seed=4).eval()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        expected = model(ids).logits
    save_spectra_model(model, tmp_path / "trilm")
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "trilm").eval()
    assert all(type(m) is torch.nn.Linear for n, m in plain.named_modules() if n.endswith("_proj"))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, expected)
    for name, module in plain.named_modules():
        if name.endswith("_proj"):  # exactly ternary × one scale
            values = module.weight.abs().unique()
            assert len(values) == 2 and values[0] == 0
    assert plain.config.tritium_spectra["unpacked"] is True


def test_bitnet_round_trips_through_its_own_loader_and_refuses_plain_llama(tmp_path):
    model = build_model("bitnet", "tiny-xs", vocab_size=300, context=64, seed=5).eval()
    with pytest.raises(SpectraConfigError, match="activations"):
        to_plain_llama(model)
    save_spectra_model(model, tmp_path / "bitnet")
    again = load_spectra_model(tmp_path / "bitnet")
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_unknown_sizes_and_architectures_fail_clearly():
    with pytest.raises(SpectraConfigError, match="size 'huge'.*99m"):
        build_model("trilm", "huge", vocab_size=100)
    with pytest.raises(SpectraConfigError, match="architecture 'binary'.*trilm"):
        build_model("binary", "tiny-xs", vocab_size=100)


# Spectra's table of the suite (hidden / GLU / heads / layers), as the released checkpoints' config.json
# files have it; typed in here from the paper, not from the code, so a wrong preset fails.
SPECTRA_TABLE = {"99m": (512, 1280, 8, 16), "190m": (768, 2048, 12, 16), "390m": (1024, 2560, 16, 24),
                 "560m": (1280, 3072, 20, 24), "830m": (1536, 4096, 24, 24), "1.1b": (1792, 5120, 28, 24),
                 "1.5b": (2048, 6144, 32, 24), "2.4b": (2304, 7680, 36, 30), "3.9b": (3072, 9216, 24, 30)}
SPECTRA_VOCAB = 50304  # the released models' (GPT-NeoX's tokenizer, padded)


def _two_significant_digits(count: int) -> float:
    unit = 10 ** (int(math.log10(count)) - 1)
    return count // unit * unit


def test_size_presets_are_spectras_table_and_count_what_their_names_say():
    assert {name: astuple(preset) for name, preset in SPECTRA_SIZES.items()} == SPECTRA_TABLE
    for name in SPECTRA_TABLE:
        with torch.device("meta"):  # shapes only: the 3.9B model allocates nothing
            model = build_model("float", name, vocab_size=SPECTRA_VOCAB)
        total = count_parameters(model)["total"]
        # Spectra names each model by its parameter count cut to two digits: 99.7M is "99m", 1.15B "1.1b"
        nominal = float(name[:-1]) * {"m": 1e6, "b": 1e9}[name[-1]]
        assert _two_significant_digits(total) == pytest.approx(nominal), (name, total)


def test_every_linear_of_the_tiny_256_preset_splits_into_llama_cpps_256_blocks():
    with torch.device("meta"):
        model = build_model("float", "tiny-256", vocab_size=1000)
    widths = {linear.in_features for linear in decoder_layout(model).quantizable_linears().values()}
    assert widths == {256, 768}


def test_spectra_folders_are_sealed_and_a_damaged_one_is_refused(tmp_path):
    from tritium.models import load_model
    from tritium.utils.integrity import MANIFEST_FILE, DamagedFileError, safetensors_tensor_ranges

    for arch in ("trilm", "bitnet"):
        folder = tmp_path / arch
        save_spectra_model(build_model(arch, "tiny-xs", vocab_size=300, context=64, seed=6).eval(), folder)
        assert (folder / MANIFEST_FILE).is_file()
        start, _ = safetensors_tensor_ranges(folder / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[start + 3] ^= 0x40
        (folder / "model.safetensors").write_bytes(bytes(data))
        with pytest.raises(DamagedFileError, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
            load_spectra_model(folder)
    with pytest.raises(DamagedFileError):
        load_model(tmp_path / "trilm")
