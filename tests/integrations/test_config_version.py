"""Saved quantization_configs carry a format version; another version is a clear error, none is version 1."""

import json

import pytest

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.export.hf import save_fake_quantized, save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model, tiny_model
from tritium.models.loader import read_quantization_config
from tritium.nn import pack_model
from tritium.quant import UniformGrid
from tritium.quant.grids import grid_to_dict
from tritium.utils.errors import TritiumError
from tritium.utils.integrity import QUANT_CONFIG_VERSION, write_manifest


def _saved(tmp_path, tokenizer, save_format="fake"):
    model = tiny_model("llama")
    result = quantize_(model, RTNConfig(grid=UniformGrid(4, group=32)))
    folder = tmp_path / save_format
    if save_format == "packed":
        pack_model(model, result.weights)
        save_packed(model, tokenizer, folder, "rtn", grid_to_dict(result.grid))
    else:
        save_fake_quantized(model, tokenizer, folder, "rtn", grid_to_dict(result.grid), weights=result.weights)
    return folder


def _set_version(folder, version):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if version is None:
        del config["quantization_config"]["format_version"]
    else:
        config["quantization_config"]["format_version"] = version
    path.write_text(json.dumps(config))
    write_manifest(folder)  # the edit is deliberate: reseal, so only the version check speaks


@pytest.mark.parametrize("save_format", ["fake", "packed"])
def test_saved_configs_carry_the_version(tmp_path, tokenizer, save_format):
    folder = _saved(tmp_path, tokenizer, save_format)
    assert read_quantization_config(folder)["format_version"] == QUANT_CONFIG_VERSION


def test_a_folder_saved_without_a_version_still_loads(tmp_path, tokenizer):
    folder = _saved(tmp_path, tokenizer)
    _set_version(folder, None)
    model, _, _ = load_model(folder)
    assert model.config.quantization_config is not None


@pytest.mark.parametrize("version, fix", [(QUANT_CONFIG_VERSION + 1, "upgrade tritium"), ("x", "re-export")])
def test_another_version_is_a_clear_error(tmp_path, tokenizer, version, fix):
    folder = _saved(tmp_path, tokenizer)
    _set_version(folder, version)
    with pytest.raises(TritiumError, match=f"format_version {version!r}.*reads version {QUANT_CONFIG_VERSION}.*{fix}"):
        read_quantization_config(folder)
    with pytest.raises(TritiumError, match=f"format_version {version!r}"):
        load_model(folder)
