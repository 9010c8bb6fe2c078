import pytest
import torch

from tritium.models import ModelSourceError, load_model, resolve_model_source, tiny_model


def test_local_folder_round_trip(tmp_path, tokenizer):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, tok, source = load_model(tmp_path / "m")
    assert source.kind == "folder"
    x = torch.randint(0, 512, (1, 6))
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert tok.encode("hello") == tokenizer.encode("hello")


def test_missing_path_lists_what_was_tried(tmp_path):
    with pytest.raises(ModelSourceError, match="named default.*local path.*hub id"):
        resolve_model_source(tmp_path / "nope")
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_source(tmp_path)


def test_hub_id_is_recognised_without_fetching():
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_named_default_resolves_to_the_packaged_gguf():
    source = resolve_model_source("smollm2-135m")
    assert source.kind == "named" and source.gguf_file.endswith(".gguf")


def test_gguf_file_and_folder_with_one_gguf_resolve(tmp_path):
    named = resolve_model_source("smollm2-135m")
    gguf = resolve_model_source(f"{named.location}/{named.gguf_file}")
    assert gguf.kind == "gguf" and gguf.gguf_file == named.gguf_file
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model_source(tmp_path).gguf_file == "m.gguf"


def _drop_weight(folder, name):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors.pop(name)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_tritium_folder_missing_a_weight_is_refused_not_random(tmp_path, tokenizer):
    from tritium.export.hf import save_fake_quantized
    from tritium.utils.integrity import InconsistentFolderError, write_manifest

    model = tiny_model("llama")
    save_fake_quantized(model, tokenizer, tmp_path / "fake", "rtn", {"kind": "uniform", "bits": 4, "group": 32})
    _drop_weight(tmp_path / "fake", "model.layers.1.self_attn.v_proj.weight")
    write_manifest(tmp_path / "fake")  # a consistent manifest: the load itself must notice the gap
    with pytest.raises(InconsistentFolderError, match=r"missing from its files.*v_proj\.weight"):
        load_model(tmp_path / "fake")


def test_a_foreign_folder_missing_a_weight_still_loads_as_transformers_does(tmp_path, tokenizer):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    _drop_weight(tmp_path / "m", "model.layers.1.self_attn.v_proj.weight")
    loaded, _, _ = load_model(tmp_path / "m")  # not written by tritium: transformers' own warning applies
    assert loaded.model.layers[1].self_attn.v_proj.weight.shape == (32, 64)


def test_saved_tokenizer_json_is_compact_and_the_same_tokenizer(tmp_path, tokenizer):
    import json

    from transformers import AutoTokenizer

    from tritium.models.loader import save_tokenizer

    tokenizer.save_pretrained(tmp_path / "pretty")
    save_tokenizer(tokenizer, tmp_path / "compact")
    pretty, compact = (tmp_path / "pretty" / "tokenizer.json"), (tmp_path / "compact" / "tokenizer.json")
    assert "\n" not in compact.read_text() and compact.stat().st_size < pretty.stat().st_size
    assert json.loads(compact.read_text()) == json.loads(pretty.read_text())
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "compact")
    text = "the quick brown fox, 42 times"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
