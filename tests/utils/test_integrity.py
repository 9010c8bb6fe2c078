"""Manifests: every folder tritium saves is sealed, and any damaged, missing or added file is refused on load."""

import json
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.export.hf import save_fake_quantized, save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import load_model, tiny_model, tiny_tokenizer
from tritium.nn import pack_model
from tritium.quant import TernaryGrid, grid_to_dict
from tritium.utils import integrity
from tritium.utils.integrity import (
    MANIFEST_FILE,
    DamagedFileError,
    UnsealedFolderWarning,
    digest_file,
    safetensors_tensor_ranges,
    verify_folder,
    write_manifest,
)

GRID = TernaryGrid("absmean", group=32)


@pytest.fixture(scope="module")
def packed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sealed") / "packed"
    model = tiny_model("llama", seed=0)
    pack_model(model, quantize_(model, RTNConfig(grid=GRID)).weights)
    save_packed(model, tiny_tokenizer(), folder, "rtn", grid_to_dict(GRID), float_dtype="float16")
    return folder


@pytest.fixture
def copy_of(tmp_path):
    def copy(folder):
        target = tmp_path / folder.name
        shutil.copytree(folder, target)
        return target

    return copy


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_manifest_lists_every_file_and_every_tensor(packed_folder):
    manifest = json.loads((packed_folder / MANIFEST_FILE).read_text())
    on_disk = {p.name for p in packed_folder.iterdir() if p.name != MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk >= {"config.json", "model.safetensors", "tokenizer.json"}
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (packed_folder / name).stat().st_size
        assert entry["sha256"] == digest_file(packed_folder / name)[0]
    with safe_open(packed_folder / "model.safetensors", "pt") as f:
        names = set(f.keys())
    tensors = manifest["files"]["model.safetensors"]["tensors"]
    # every tensor, not only codes and scales: embeddings, norms and the head too
    assert set(tensors) == names and {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert verify_folder(packed_folder).files.keys() == manifest["files"].keys()


def test_one_flipped_byte_in_the_embedding_is_refused_and_named(packed_folder, copy_of):
    folder = copy_of(packed_folder)
    start, end = safetensors_tensor_ranges(folder / "model.safetensors")["model.embed_tokens.weight"]
    _flip(folder / "model.safetensors", (start + end) // 2)
    for load in (lambda: load_model(folder), lambda: AutoModelForCausalLM.from_pretrained(folder)):
        with pytest.raises(DamagedFileError, match=r"model\.safetensors.*model\.embed_tokens\.weight.*re-export"):
            load()


def test_an_intact_file_is_read_once_for_its_sha256_and_a_damaged_one_again_to_name_its_tensors(
        packed_folder, copy_of, monkeypatch):
    calls = []

    def counting(path, ranges=None, skip=None):
        calls.append((path.name, bool(ranges)))
        return digest_file(path, ranges, skip)

    monkeypatch.setattr(integrity, "digest_file", counting)
    verify_folder(packed_folder)
    assert [c for c in calls if c[0] == "model.safetensors"] == [("model.safetensors", False)]
    folder = copy_of(packed_folder)
    start, end = safetensors_tensor_ranges(folder / "model.safetensors")["model.norm.weight"]
    _flip(folder / "model.safetensors", start)
    calls.clear()
    with pytest.raises(DamagedFileError, match=r"damaged tensors: model\.norm\.weight"):
        verify_folder(folder)
    assert [c for c in calls if c[0] == "model.safetensors"] == [("model.safetensors", False),
                                                                 ("model.safetensors", True)]


def _every_file_and_region(folder):
    """(file, byte offset) pairs: the start, middle and end of every file, and the safetensors header."""
    cases = []
    for path in sorted(folder.iterdir()):
        size = path.stat().st_size
        cases += [(path.name, 0), (path.name, size // 2), (path.name, size - 1)]
    cases.append(("model.safetensors", 20))  # inside the JSON header
    return cases


def test_a_flipped_byte_anywhere_in_a_packed_folder_is_refused(packed_folder, copy_of):
    for name, offset in _every_file_and_region(packed_folder):
        folder = copy_of(packed_folder)
        _flip(folder / name, offset)
        with pytest.raises(DamagedFileError, match=rf"{name}"):
            load_model(folder)
        shutil.rmtree(folder)


def test_truncated_missing_and_added_files_are_refused(packed_folder, copy_of):
    folder = copy_of(packed_folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(DamagedFileError, match=r"model\.safetensors is truncated"):
        load_model(folder)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "tokenizer.json").rename(folder / "tokenizer.json.bak")
    with pytest.raises(DamagedFileError, match=r"tokenizer\.json is missing"):
        load_model(folder)
    (folder / "tokenizer.json.bak").rename(folder / "tokenizer.json")
    (folder / "added_tokens.json").write_text("{}")
    with pytest.raises(DamagedFileError, match=r"added_tokens\.json.*does not list"):
        load_model(folder)
    (folder / "added_tokens.json").unlink()
    (folder / "README.md").write_text("notes")  # not read by any loader: allowed
    load_model(folder)


def test_a_fake_quant_folder_and_its_codes_are_sealed(tmp_path):
    model = tiny_model("llama", seed=1)
    result = quantize_(model, RTNConfig(grid=GRID))
    save_fake_quantized(model, tiny_tokenizer(), tmp_path / "fake", "rtn", grid_to_dict(GRID), weights=result.weights)
    files = json.loads((tmp_path / "fake" / MANIFEST_FILE).read_text())["files"]
    assert "tritium_codes.safetensors" in files and files["tritium_codes.safetensors"]["tensors"]
    start, _ = safetensors_tensor_ranges(tmp_path / "fake" / "model.safetensors")["model.norm.weight"]
    _flip(tmp_path / "fake" / "model.safetensors", start + 1)
    with pytest.raises(DamagedFileError, match=r"model\.norm\.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "fake")


def test_a_damaged_manifest_is_refused(packed_folder, copy_of):
    folder = copy_of(packed_folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"]["config.json"]["sha256"] = "0" * 64
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DamagedFileError, match=rf"{MANIFEST_FILE} is corrupt: its content does not match"):
        load_model(folder)
    manifest["manifest_sha256"] = integrity._manifest_digest(manifest)  # consistent, but wrong about a file
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DamagedFileError, match=r"config\.json does not match"):
        load_model(folder)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(DamagedFileError, match=rf"{MANIFEST_FILE} is corrupt"):
        load_model(folder)


def test_a_folder_without_a_manifest_loads_with_one_warning(packed_folder, copy_of):
    folder = copy_of(packed_folder)
    (folder / MANIFEST_FILE).unlink()
    with pytest.warns(UnsealedFolderWarning, match="no tritium_manifest.json"):
        model, _, _ = load_model(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsealedFolderWarning)  # once per folder, not on every load
        load_model(folder)
    write_manifest(folder)  # sealing it again makes it checkable
    _flip(folder / "config.json", 3)
    with pytest.raises(DamagedFileError):
        load_model(folder)


def test_a_sealed_folder_loads_exactly(packed_folder):
    model, _, _ = load_model(packed_folder)
    reference = AutoModelForCausalLM.from_pretrained(packed_folder)
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_digest_file_covers_ranges_and_skips_exactly(tmp_path, monkeypatch):
    import hashlib
    import zlib

    data = bytes(range(256)) * 500
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(integrity, "READ_CHUNK", 1000)  # ranges and the skip straddle chunk boundaries
    sha, crcs = digest_file(tmp_path / "f", {"a": (10, 2500), "b": (2500, 2500), "c": (99_000, 128_000)},
                            skip=(1990, 2054))
    assert sha == hashlib.sha256(data[:1990] + data[2054:]).hexdigest()
    assert crcs == {"a": f"{zlib.crc32(data[10:2500]):08x}", "b": f"{zlib.crc32(b''):08x}",
                    "c": f"{zlib.crc32(data[99_000:128_000]):08x}"}


def test_weights_hashed_in_the_background_are_still_checked_before_the_load_returns(packed_folder, copy_of,
                                                                                    monkeypatch):
    from tritium.pack import PackError

    monkeypatch.setattr(integrity, "BACKGROUND_BYTES", 0)  # the tiny weights take the path large ones take
    model, _, _ = load_model(packed_folder)
    assert model is not None
    ranges = safetensors_tensor_ranges(packed_folder / "model.safetensors")
    codes = "model.layers.0.mlp.up_proj.packed"
    for tensor, offset in [("model.embed_tokens.weight", ranges["model.embed_tokens.weight"][0] + 5),
                           (codes, ranges[codes][0])]:
        folder = copy_of(packed_folder)
        _flip(folder / "model.safetensors", offset)
        with pytest.raises(DamagedFileError, match=rf"{tensor}") as caught:
            load_model(folder)
        if tensor == codes:  # the load failed on the codes' own CRC first; the damaged file explains it
            assert isinstance(caught.value.__cause__, PackError)
        shutil.rmtree(folder)
    folder = copy_of(packed_folder)
    _flip(folder / "model.safetensors", 30)
    with pytest.raises(DamagedFileError, match="its header"):  # refused before the load starts
        load_model(folder)
