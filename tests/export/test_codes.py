"""The codes sidecar that fake-quant folders carry for `tritium pack`."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.export.codes import CODES_FILE, CodesError, load_codes
from tritium.export.hf import save_fake_quantized
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model, tiny_tokenizer
from tritium.quant import TernaryGrid, UniformGrid, grid_to_dict

IDS = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))


def _save(folder, grid, weights=True):
    model = tiny_model("llama", seed=0)
    result = quantize_(model, RTNConfig(grid=grid, skip=("*.mlp.down_proj",)))
    save_fake_quantized(model, tiny_tokenizer(), folder, "rtn", grid_to_dict(grid), ("*.mlp.down_proj",),
                        weights=result.weights if weights else None)
    return model, result


@pytest.mark.parametrize("grid", [TernaryGrid("dlt", group=32), UniformGrid(3, group=64, ragged_groups=True)])
def test_sidecar_holds_the_exact_codes_and_the_folder_still_loads(tmp_path, grid):
    model, result = _save(tmp_path / "fake", grid)
    codes = load_codes(tmp_path / "fake")
    assert codes.grid == grid_to_dict(grid) and codes.grid_object() == grid
    assert set(codes.weights) == set(result.weights) and len(codes.weights) == 12  # down_proj skipped
    for name, weight in codes.weights.items():
        assert weight.scale.dtype == torch.float16 and weight.packed.dtype == torch.uint8
        assert torch.equal(weight.dequantize(), result.weights[name].dequantize())
    assert codes.weights["model.layers.0.mlp.up_proj"].radix == (3 if isinstance(grid, TernaryGrid) else 8)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fake")  # the extra file is ignored
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_without_weights_no_sidecar_and_a_clear_error(tmp_path):
    _save(tmp_path / "fake", TernaryGrid("absmean", group=32), weights=False)
    assert not (tmp_path / "fake" / CODES_FILE).exists()
    with pytest.raises(CodesError, match="Re-run `tritium quantize`.*--format packed"):
        load_codes(tmp_path / "fake")


def test_corrupt_truncated_and_foreign_files_fail_clearly(tmp_path):
    _save(tmp_path / "fake", TernaryGrid("absmean", group=32))
    path = tmp_path / "fake" / CODES_FILE
    good = path.read_bytes()
    path.write_bytes(good[: len(good) - 100])
    with pytest.raises(CodesError, match="corrupt or truncated"):
        load_codes(tmp_path / "fake")
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CodesError, match="corrupt or truncated"):
        load_codes(tmp_path / "fake")
    save_file({"x": torch.zeros(2)}, path, metadata={"format": "pt"})
    with pytest.raises(CodesError, match="not a tritium codes file"):
        load_codes(tmp_path / "fake")
    # A packed tensor cut to the wrong shape (a damaged or edited file) is caught by validation.
    from safetensors import safe_open

    path.write_bytes(good)
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["model.layers.0.mlp.up_proj.packed"] = tensors["model.layers.0.mlp.up_proj.packed"][:, :1].contiguous()
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(CodesError, match="up_proj: packed codes"):
        load_codes(tmp_path / "fake")
