"""`tritium quantize` (fake) -> `tritium pack` -> from_pretrained / `tritium run` -> `tritium export --gguf`."""

import re

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.cli import main
from tritium.export.codes import CODES_FILE
from tritium.export.gguf import llama_cpp_logits
from tritium.export.hf import save_fake_quantized
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model, tiny_tokenizer
from tritium.nn import QuantLinear, TernaryLinear, packed_modules
from tritium.quant import TernaryGrid, grid_to_dict

IDS = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(0))
QUIET = ["--eval", "none", "--no-float", "--no-progress"]
FAKE = ["--format", "fake"]  # these tests pack or export a fake-quant run themselves


def _float_folder(folder, **overrides):
    model = tiny_model("llama", seed=0, **overrides)
    with torch.no_grad():  # sharper logits, so a wrong row order or scale would show in llama.cpp's output
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
        model.lm_head.weight.mul_(3)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ternary_run(tmp_path_factory):
    """A fake-quant ternary run of a tiny Llama whose widths divide into GGUF's 256-blocks."""
    root = tmp_path_factory.mktemp("cli")
    float_folder = _float_folder(root / "float", hidden_size=256, intermediate_size=512)
    assert main(["quantize", "--model", str(float_folder), "--grid", "ternary", "--variant", "absmean",
                 "--group", "channel", *QUIET, *FAKE, "--out", str(root / "run")]) == 0
    return root / "run"


def _logits(folder, ids=IDS):
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        return model, model(ids).logits[0]


def test_pack_writes_packed_weights_that_load_and_match_the_fake_model(ternary_run, capsys):
    assert (ternary_run / "model" / CODES_FILE).is_file()
    capsys.readouterr()
    assert main(["pack", str(ternary_run)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"packed 14 linears .* 1\.6\d\d bits/weight", out), out
    fake_mb, packed_mb = map(float, re.search(r"fake ([\d.]+) MB -> packed ([\d.]+) MB", out).groups())
    assert packed_mb < fake_mb / 3
    fake, fake_logits = _logits(ternary_run / "model")
    packed, packed_logits = _logits(ternary_run / "packed")
    assert len(packed_modules(packed)) == 14 and not packed_modules(fake)
    assert all(isinstance(m, TernaryLinear) and m.radix == 3 for m in packed_modules(packed).values())
    # The embedding and norms are stored in fp16 (--float-dtype's default) and load back in fp32.
    assert packed.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(packed.model.embed_tokens.weight, fake.model.embed_tokens.weight.half().float())
    torch.testing.assert_close(packed_logits, fake_logits, rtol=2e-2, atol=2e-2)


def test_pack_in_another_layout_and_refuse_a_lossy_scale_dtype(ternary_run, tmp_path, capsys):
    # float32 float parts: the logits then show that repacking is exact
    assert main(["pack", str(ternary_run / "model"), "--ternary-layout", "2bit", "--out", str(tmp_path / "p2"),
                 "--float-dtype", "float32"]) == 0
    packed, packed_logits = _logits(tmp_path / "p2")
    module = packed.model.layers[0].mlp.up_proj
    assert module.radix == 4 and module.scale.dtype == torch.float16
    torch.testing.assert_close(packed_logits, _logits(ternary_run / "model")[1], rtol=1e-4, atol=1e-4)
    # fp16 scales do not fit bf16 exactly: packing would change the weights, so it is refused
    capsys.readouterr()
    assert main(["pack", str(ternary_run), "--scale-dtype", "bfloat16", "--out", str(tmp_path / "p3")]) == 2
    assert "keep --scale-dtype float16" in capsys.readouterr().err
    assert not (tmp_path / "p3").exists()


def test_uniform_grid_packs_too(tmp_path):
    _float_folder(tmp_path / "float")
    assert main(["quantize", "--model", str(tmp_path / "float"), "--grid", "uniform", "--bits", "4", "--group", "32",
                 *QUIET, *FAKE, "--out", str(tmp_path / "run")]) == 0
    assert main(["pack", str(tmp_path / "run"), "--float-dtype", "float32"]) == 0
    packed, packed_logits = _logits(tmp_path / "run" / "packed")
    assert all(isinstance(m, QuantLinear) for m in packed_modules(packed).values())
    torch.testing.assert_close(packed_logits, _logits(tmp_path / "run" / "model")[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("folder,loop", [("packed", "fast"), ("packed", "hf"), ("model", "auto")])
def test_run_generates_the_asked_number_of_tokens(ternary_run, capsys, folder, loop):
    if not (ternary_run / "packed").exists():
        assert main(["pack", str(ternary_run)]) == 0
    capsys.readouterr()
    assert main(["run", str(ternary_run / folder), "--prompt", "The quick brown fox", "--max-new-tokens", "6",
                 "--device", "cpu", "--threads", "1", "--loop", loop]) == 0
    captured = capsys.readouterr()
    assert re.search(r"6 new tokens on cpu with the (lean loop|HF generate) .* decode [\d.]+ tokens/s",
                     captured.err), captured.err
    assert ("HF generate" in captured.err) == (loop == "hf")
    if folder == "packed":  # the packed layers ran the CPU kernel: the line says on which path
        from tritium.kernels import active_path

        assert f"CPU kernel path {active_path()}" in captured.err
    assert captured.out.strip()


def test_run_and_generate_agree_with_the_fake_model(ternary_run, capsys):
    """Greedy text of the packed folder is the fake model's greedy text."""
    if not (ternary_run / "packed").exists():
        assert main(["pack", str(ternary_run)]) == 0
    texts = []
    for folder, loop in (("packed", "fast"), ("packed", "hf"), ("model", "hf")):
        capsys.readouterr()
        assert main(["run", str(ternary_run / folder), "--prompt", "A ternary weight", "--max-new-tokens", "8",
                     "--device", "cpu", "--loop", loop]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2]


def test_run_refuses_chat_without_a_template(ternary_run, capsys):
    assert main(["run", str(ternary_run / "model"), "--prompt", "hi", "--chat", "--device", "cpu"]) == 2
    assert "no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("ttype,expected,bits", [("tq1_0", "TQ1_0", 1.6875), ("tq2_0", "TQ2_0", 2.0625)])
@pytest.mark.parametrize("source", ["packed", "model"])
def test_export_gguf_reads_back_and_llama_cpp_agrees(ternary_run, tmp_path, capsys, ttype, expected, bits, source):
    if not (ternary_run / "packed").exists():
        assert main(["pack", str(ternary_run)]) == 0
    path = tmp_path / "m.gguf"
    capsys.readouterr()
    assert main(["export", str(ternary_run / source), "--gguf", str(path), "--type", ttype, "--no-fallback"]) == 0
    out = capsys.readouterr().out
    assert f"{expected} 14" in out and f"{bits:.4f} bits/weight" in out and "read-back max error" in out
    tensors = GGUFReader(path).tensors
    assert [t.tensor_type.name for t in tensors].count(expected) == 14
    total = float(re.search(r"all tensors: ([\d.]+) bits/weight", out).group(1))
    assert total == pytest.approx(8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors),
                                  abs=1e-4)
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
    theirs = torch.tensor(np.asarray(llama_cpp_logits(path, IDS[0].tolist())))
    _, ours = _logits(ternary_run / "packed")
    assert (theirs - ours).abs().max() < 0.1 * ours.std()


def test_export_no_fallback_refuses_widths_tq_cannot_hold(tmp_path, capsys):
    _float_folder(tmp_path / "float")  # widths 64/128: no 256-blocks
    assert main(["quantize", "--model", str(tmp_path / "float"), "--grid", "ternary", "--group", "channel",
                 *QUIET, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "m.gguf"), "--no-fallback"]) == 2
    assert "TQ1_0 cannot hold" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "m.gguf")]) == 0  # exact fallbacks
    assert "fallback" in capsys.readouterr().out


def test_pack_and_export_errors_are_clear(ternary_run, tmp_path, capsys):
    # a fake folder saved without codes
    model = tiny_model("llama", seed=0)
    grid = TernaryGrid("absmean", group="channel")
    quantize_(model, RTNConfig(grid=grid))
    save_fake_quantized(model, tiny_tokenizer(), tmp_path / "nocodes", "rtn", grid_to_dict(grid))
    cases = [
        (["pack", str(tmp_path / "nocodes")], "Re-run `tritium quantize`"),
        (["pack", str(tmp_path / "missing")], "does not exist"),
        (["pack", str(tmp_path)], "neither model/config.json"),
        (["export", str(tmp_path / "nocodes"), "--gguf", str(tmp_path / "x.gguf")], "without codes"),
    ]
    if not (ternary_run / "packed").exists():
        assert main(["pack", str(ternary_run)]) == 0
    cases.append((["pack", str(ternary_run / "packed")], "already packed"))
    _float_folder(tmp_path / "float")
    cases.append((["pack", str(tmp_path / "float")], "not a tritium-quantized model"))
    cases.append((["pack", str(ternary_run), "--out", str(tmp_path / "float")], "not a packed tritium folder"))
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        main(["pack", str(ternary_run), "--format", "gguf"])
    assert "tritium export" in capsys.readouterr().err


def _eval_row(capsys, model, out):
    import json

    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--eval", "none", "--no-progress", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["rows"][0], capsys.readouterr()


def test_eval_of_a_gguf_reports_its_types_and_real_bits(tmp_path, capsys):
    from tritium.export.gguf import write_gguf

    # down_proj's 384-wide rows do not split into 256-blocks: Q4_0 there, TQ1_0 elsewhere
    model = tiny_model("llama", hidden_size=256, intermediate_size=384)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tiny_tokenizer())
    linears = [t for t in GGUFReader(tmp_path / "m.gguf").tensors
               if t.name.startswith("blk.") and len(t.shape) == 2]
    bits = 8 * sum(int(t.n_bytes) for t in linears) / sum(int(t.n_elements) for t in linears)
    row, captured = _eval_row(capsys, tmp_path / "m.gguf", tmp_path / "eval")
    assert row["model"] == "gguf" and row["method"] == "TQ1_0/Q4_0" and row["gguf_types"] == {"TQ1_0": 12, "Q4_0": 2}
    assert row["bits"] == round(bits, 2) and row["size"]["linear_bits_per_weight"] == pytest.approx(bits)
    assert row["storage"] == f"gguf TQ1_0/Q4_0 mix, {bits:.2f} bits/weight"
    assert "float" not in captured.out and f"gguf TQ1_0/Q4_0 mix, {bits:.2f} bits/weight" in captured.out


def test_eval_of_a_packed_folder_reports_the_bits_its_modules_hold(ternary_run, tmp_path, capsys):
    from tritium.nn import packed_bits_report

    if not (ternary_run / "packed").exists():
        assert main(["pack", str(ternary_run)]) == 0
    row, captured = _eval_row(capsys, ternary_run / "packed", tmp_path / "eval")
    real = packed_bits_report(AutoModelForCausalLM.from_pretrained(ternary_run / "packed"))["bits_per_weight"]
    assert row["stored_bits_per_weight"] == pytest.approx(real)
    assert row["storage"] == f"packed ternary base3 in 14 linears, {real:.2f} bits/weight"
    assert row["storage"] in captured.out
