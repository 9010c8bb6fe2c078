"""save_pretrained + from_pretrained round trip of packed models."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.export.hf import save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model, tiny_tokenizer
from tritium.nn import QuantLinear, TernaryLinear, pack_model, packed_modules
from tritium.pack import PackError
from tritium.quant import TernaryGrid, UniformGrid, grid_to_dict


def _save(folder, family="llama", grid=TernaryGrid("dlt", group=32), layout="base3", skip=(), scale_dtype="float16"):
    model = tiny_model(family, seed=0)
    result = quantize_(model, RTNConfig(grid=grid, skip=tuple(skip)))
    if scale_dtype == "bfloat16":  # RTN rounds scales to fp16 values; bf16 storage needs bf16 values
        for qw in result.weights.values():
            qw.scale = qw.scale.bfloat16().float()
    pack_model(model, result.weights, ternary_layout=layout, scale_dtype=scale_dtype)
    save_packed(model, tiny_tokenizer(), folder, "rtn", grid_to_dict(grid), skip, ternary_layout=layout,
                scale_dtype=scale_dtype)
    return model


def test_tritium_is_registered_with_transformers():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    from tritium.integrations.hf import TritiumConfig, TritiumHfQuantizer

    assert AUTO_QUANTIZATION_CONFIG_MAPPING["tritium"] is TritiumConfig
    assert AUTO_QUANTIZER_MAPPING["tritium"] is TritiumHfQuantizer


IDS = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family,grid,layout,scale_dtype", [
    ("llama", TernaryGrid("dlt", group=32), "base3", "float16"),
    ("qwen2", TernaryGrid("absmean", group="channel"), "2bit", "float16"),
    ("gemma", UniformGrid(4, group=32), "base3", "float16"),
    ("llama", UniformGrid(3, group=64, symmetric=True), "base3", "float16"),
    ("llama", TernaryGrid("twn", group=32), "2bit", "bfloat16"),
    ("qwen2", UniformGrid(2, group=32), "base3", "bfloat16"),
])
def test_round_trip_gives_identical_logits(tmp_path, family, grid, layout, scale_dtype):
    model = _save(tmp_path / "packed", family, grid, layout, scale_dtype=scale_dtype)
    config = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "packed" and config["ternary_layout"] == layout
    assert config["scale_dtype"] == scale_dtype
    assert set(config["packed_modules"]) == set(packed_modules(model)) == set(config["checksums"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    kind = TernaryLinear if isinstance(grid, TernaryGrid) else QuantLinear
    assert all(isinstance(m, kind) for m in packed_modules(loaded).values())
    assert set(packed_modules(loaded)) == set(packed_modules(model))
    assert all(m.scale.dtype == getattr(torch, scale_dtype) for m in packed_modules(loaded).values())
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    # The file holds packed codes, not float weights.
    tensors = load_file(tmp_path / "packed" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj"
    assert tensors[f"{name}.packed"].dtype == torch.uint8 and f"{name}.weight" not in tensors


def test_skipped_linears_stay_float_and_saving_again_works(tmp_path):
    _save(tmp_path / "a", skip=("*.mlp.down_proj",))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert isinstance(loaded.model.layers[0].mlp.up_proj, TernaryLinear)
    loaded.save_pretrained(tmp_path / "b")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, loaded(IDS).logits)


def test_bfloat16_load_keeps_fp16_scales_exact(tmp_path):
    _save(tmp_path / "p")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p", dtype=torch.bfloat16)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.scale.dtype == torch.float16 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    model.to(torch.float32)
    assert q_proj.scale.dtype == torch.float16
    out = model.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def _unseal(folder):
    """Drop the manifest, as in a folder written before manifests: the checks below it must hold alone."""
    (folder / "tritium_manifest.json").unlink()


def _rewrite(folder, edit):
    _unseal(folder)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_corrupt_codes_fail_clearly(tmp_path):
    _save(tmp_path / "p")

    def flip(tensors):
        t = tensors["model.layers.1.mlp.gate_proj.packed"]
        t.view(-1)[:3] = (t.view(-1)[:3] + 1) % 243

    _rewrite(tmp_path / "p", flip)
    with pytest.raises(PackError, match=r"model\.layers\.1\.mlp\.gate_proj.*checksum"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_impossible_byte_values_fail_clearly(tmp_path):
    _save(tmp_path / "p")

    def poison(tensors):
        tensors["model.layers.0.self_attn.k_proj.packed"].view(-1)[0] = 250  # 3^5 = 243: no 5 trits make 250

    _rewrite(tmp_path / "p", poison)
    with pytest.raises(PackError, match="corrupt"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_impossible_2bit_trits_fail_clearly_without_checksums(tmp_path):
    # In the 2-bit layout every byte value is valid data, so only the trit range shows the damage.
    _save(tmp_path / "p", layout="2bit")

    def poison(tensors):
        tensors["model.layers.0.self_attn.k_proj.packed"].view(-1)[0] = 0b0000_0011  # digit 3: "t = 2"

    _rewrite(tmp_path / "p", poison)  # also drops the manifest
    config_path = tmp_path / "p" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["checksums"] = {}  # e.g. a folder written by another tool
    config_path.write_text(json.dumps(config))
    with pytest.raises(PackError, match=r"k_proj.*digit 3"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_missing_tensor_fails_clearly(tmp_path):
    _save(tmp_path / "p")
    _rewrite(tmp_path / "p", lambda t: t.pop("model.layers.0.self_attn.o_proj.scale"))
    with pytest.raises(PackError, match=r"o_proj"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_truncated_file_fails_clearly(tmp_path):
    _save(tmp_path / "p")
    path = tmp_path / "p" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="(?i)incomplete|truncat|deserializ"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_shape_mismatch_fails_clearly(tmp_path):
    _save(tmp_path / "p")

    def shrink(tensors):
        name = "model.layers.0.mlp.up_proj.packed"
        tensors[name] = tensors[name][:, :, :-1].contiguous()

    _rewrite(tmp_path / "p", shrink)
    with pytest.raises(Exception, match=r"(?i)up_proj\.packed.*|mismatch"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_config_with_a_different_grid_fails_clearly(tmp_path):
    _save(tmp_path / "p")
    _unseal(tmp_path / "p")  # with the manifest, any edit of config.json is refused first
    config_path = tmp_path / "p" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["grid"]["group"] = 16  # the file holds groups of 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"(?i)mismatch|do not match|shape"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_unpacked_model_cannot_be_saved_as_packed(tmp_path):
    with pytest.raises(ValueError, match="pack it first"):
        save_packed(tiny_model("llama"), None, tmp_path / "x", "rtn", {"kind": "ternary"})


def test_packed_folder_can_store_its_float_parts_in_16_bits(tmp_path):
    """Embeddings and norms in fp16 on disk, codes and scales untouched; the model loads back in fp32."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tritium.export.hf import save_packed
    from tritium.methods import RTNConfig, quantize_
    from tritium.models import tiny_model
    from tritium.nn import pack_model
    from tritium.quant import TernaryGrid, grid_to_dict

    grid = TernaryGrid("absmean", group=32)
    model = tiny_model("llama", seed=2)
    pack_model(model, quantize_(model, RTNConfig(grid=grid)).weights)
    save_packed(model, None, tmp_path / "full", "rtn", grid_to_dict(grid))
    save_packed(model, None, tmp_path / "half", "rtn", grid_to_dict(grid), float_dtype="float16")
    with safe_open(tmp_path / "half" / "model.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes["model.embed_tokens.weight"] == torch.float16
    assert dtypes["model.norm.weight"] == torch.float16
    assert dtypes["model.layers.0.mlp.up_proj.packed"] == torch.uint8
    assert dtypes["model.layers.0.mlp.up_proj.scale"] == torch.float16
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    half_size = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half_size < 0.75 * full_size
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "half")
    assert loaded.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight.half().float())
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=2e-2, atol=2e-2)


# --- a config.json that does not match the packed tensors is refused (never random linears) ----------


def _edit_config(folder, edit, reseal=True):
    """Edit config.json; with ``reseal`` write a fresh manifest, as a tool rewriting the folder would,
    so that the check of config against tensors is what must refuse it."""
    from tritium.utils.integrity import write_manifest

    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    if reseal:
        write_manifest(folder)


def _loaders(folder):
    from tritium.models import load_model

    return [lambda: load_model(folder), lambda: AutoModelForCausalLM.from_pretrained(folder)]


def test_packed_tensors_without_quantization_config_are_refused(tmp_path):
    from tritium.models import load_model
    from tritium.utils.integrity import DamagedFileError, InconsistentFolderError

    _save(tmp_path / "p")
    _edit_config(tmp_path / "p", lambda c: c.pop("quantization_config"), reseal=False)
    with pytest.raises(DamagedFileError, match=r"config\.json is truncated or was edited"):  # the manifest first
        load_model(tmp_path / "p")
    _edit_config(tmp_path / "p", lambda c: None)  # resealed: the consistency check alone must refuse it
    with pytest.raises(InconsistentFolderError, match=r"packed tritium weights .* no tritium quantization_config"):
        load_model(tmp_path / "p")


def test_format_fake_on_packed_tensors_is_refused(tmp_path):
    from tritium.utils.integrity import InconsistentFolderError

    _save(tmp_path / "p")
    _edit_config(tmp_path / "p", lambda c: c["quantization_config"].update(format="fake"))
    for load in _loaders(tmp_path / "p"):
        with pytest.raises(InconsistentFolderError, match=r"format 'fake' but the folder holds packed weights"):
            load()


def test_packed_modules_that_do_not_match_the_tensors_are_refused(tmp_path):
    from tritium.utils.integrity import InconsistentFolderError

    _save(tmp_path / "p")
    name = "model.layers.0.mlp.up_proj"
    _edit_config(tmp_path / "p", lambda c: c["quantization_config"]["packed_modules"].remove(name))
    for load in _loaders(tmp_path / "p"):
        with pytest.raises(InconsistentFolderError, match=rf"not listed: {name}"):
            load()
