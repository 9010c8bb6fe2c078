"""compressed-tensors export: folders that plain transformers loads (in an interpreter that never imports tritium)
with tritium's logits, exact read-back, clear refusals, and no partial output on failure.

Logit tolerance: the exported weights are tritium's exactly (the read-back checks that bit for bit) and load
exactly in float32 (symmetric folders through transformers' default load, which keeps the scales in the model's
dtype; asymmetric ones through dequantize=True with float32 scales), so the logits may differ only by float32
summation order: rtol = atol = 1e-5. With fp16 scales, dequantize=True decompresses in fp16: the "cli-fake" case
checks that the folder then computes tritium's model with its weights rounded to fp16, to the same tolerance.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

import compressed_tensors  # noqa: E402,F401  (a test dependency in pyproject's `test` extra: missing, the tests fail)

import tritium  # noqa: E402
from tritium.cli import main  # noqa: E402
from tritium.export import api, export, export_formats, source, to_compressed_tensors  # noqa: E402
from tritium.export.registry import ExportError, get_exporter  # noqa: E402
from tritium.methods import RTNConfig, quantize_  # noqa: E402
from tritium.models import tiny_model, tiny_tokenizer  # noqa: E402
from tritium.nn import packed_modules  # noqa: E402
from tritium.quant import TernaryGrid, UniformGrid  # noqa: E402

IDS = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))
QUIET = ["--eval", "none", "--no-float", "--no-progress"]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

# (family, grid, overrides): widths 64/128 divide into groups of 32
VARIANTS = {
    "llama-w4g32-asym": ("llama", UniformGrid(4, group=32), {}),
    "llama-w4g32-sym": ("llama", UniformGrid(4, group=32, symmetric=True), {}),
    "llama-w8g32-sym": ("llama", UniformGrid(8, group=32, symmetric=True), {}),
    "llama-w8g32-asym": ("llama", UniformGrid(8, group=32), {}),
    "llama-w2g32-sym": ("llama", UniformGrid(2, group=32, symmetric=True), {}),
    "llama-w2g32-asym": ("llama", UniformGrid(2, group=32), {}),
    "llama-w3g32-sym": ("llama", UniformGrid(3, group=32, symmetric=True), {}),
    "llama-w4-channel-sym": ("llama", UniformGrid(4, group="channel", symmetric=True), {}),
    "llama-w8-tensor-asym": ("llama", UniformGrid(8, group="tensor"), {}),
    "llama-mixed": ("llama", UniformGrid(4, group=32, symmetric=True),
                    {"*.mlp.down_proj": UniformGrid(8, group=32, symmetric=True),
                     "model.layers.1.mlp.*": UniformGrid(2, group=32, symmetric=True)}),
    "qwen2-w4g32-asym": ("qwen2", UniformGrid(4, group=32), {}),
    "qwen2-w4g32-sym": ("qwen2", UniformGrid(4, group=32, symmetric=True), {}),
    "qwen2-w8g32-sym": ("qwen2", UniformGrid(8, group=32, symmetric=True), {}),
}

# Loads each folder with plain transformers and writes its logits; refuses to run if tritium is imported.
LOADER = textwrap.dedent("""
    import json, sys, traceback
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    jobs, ids, out = json.loads(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3]
    results = {}
    for key, job in jobs.items():
        kwargs = {"dtype": getattr(torch, job["dtype"])} if job["dtype"] else {}
        if job["dequantize"]:
            kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        try:
            model = AutoModelForCausalLM.from_pretrained(job["path"], **kwargs)
            with torch.no_grad():
                results[key] = model(ids).logits.float()
        except Exception as err:
            results[key] = f"{type(err).__name__}: {err}"
    assert "tritium" not in sys.modules, "the loader imported tritium"
    assert "compressed_tensors" in sys.modules, "transformers did not use compressed-tensors"
    torch.save(results, out)
""")


def _load_elsewhere(jobs: dict, tmp_path) -> dict:
    """Logits of each folder, computed in a fresh interpreter that never imports tritium."""
    torch.save(IDS, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # tritium's source tree is not on its path
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(jobs), str(tmp_path / "ids.pt"),
                           str(tmp_path / "logits.pt")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "logits.pt")


def _quantized(family, grid, overrides):
    model = tiny_model(family, seed=0)
    result = quantize_(model, RTNConfig(grid=grid, grid_overrides=overrides))
    return model, result


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _run(tmp_path, name, *flags):
    """A `tritium quantize` run (packed, the default) of a tiny Llama; returns the run folder."""
    float_folder = tmp_path / f"{name}-float"
    if not float_folder.exists():
        tiny_model("llama", seed=1).save_pretrained(float_folder)
        tiny_tokenizer().save_pretrained(float_folder)
    assert main(["quantize", "--model", str(float_folder), *flags, *QUIET, "--out", str(tmp_path / name)]) == 0
    return tmp_path / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every variant exported (in memory and from run folders) and loaded once, in one fresh interpreter."""
    root = tmp_path_factory.mktemp("ct")
    jobs, expected, reports = {}, {}, {}
    for key, (family, grid, overrides) in VARIANTS.items():
        model, result = _quantized(family, grid, overrides)
        expected[key] = _logits(model)
        asymmetric = not grid.symmetric or any(not g.symmetric for g in overrides.values())
        # float32 float parts and scales: the folder is exactly tritium's fake-quant model, in every load
        reports[key] = export(model, format="compressed-tensors", out=root / key, result=result,
                              tokenizer=tiny_tokenizer(), float_dtype="float32", scale_dtype="float32")
        jobs[key] = {"path": str(root / key), "dequantize": asymmetric, "dtype": None}
    # From run folders through the CLI: a packed run (float parts stored in fp16) and a fake run with its codes.
    packed_run = _run(root, "packed-run", "--grid", "uniform", "--bits", "4", "--group", "32", "--symmetric")
    fake_run = _run(root, "fake-run", "--grid", "uniform", "--bits", "4", "--group", "32", "--format", "fake")
    assert main(["export", str(packed_run), "--format", "compressed-tensors", "--out", str(root / "cli-packed")]) == 0
    assert main(["export", str(fake_run / "model"), "--format", "compressed-tensors", "--float-dtype", "float32",
                 "--out", str(root / "cli-fake")]) == 0
    expected["cli-packed"] = _logits(AutoModelForCausalLM.from_pretrained(packed_run / "model"))
    fake = AutoModelForCausalLM.from_pretrained(fake_run / "model")
    with torch.no_grad():  # its fp16 scales decompress in fp16 under dequantize=True: tritium's weights, fp16-rounded
        for name, module in fake.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(module.weight.half().float())
    expected["cli-fake"] = _logits(fake)
    # the fp16 folder read in float32: fp16 values and fp16 scales load exactly
    jobs["cli-packed"] = {"path": str(root / "cli-packed"), "dequantize": False, "dtype": "float32"}
    jobs["cli-fake"] = {"path": str(root / "cli-fake"), "dequantize": True, "dtype": None}
    jobs["asym-default-load"] = {"path": str(root / "llama-w4g32-asym"), "dequantize": False, "dtype": None}
    return {"root": root, "logits": _load_elsewhere(jobs, root), "expected": expected, "reports": reports,
            "packed_run": packed_run, "fake_run": fake_run}


@pytest.mark.parametrize("key", [*VARIANTS, "cli-packed", "cli-fake"])
def test_plain_transformers_loads_the_folder_with_tritiums_logits(exported, key):
    got = exported["logits"][key]
    assert isinstance(got, torch.Tensor), got
    torch.testing.assert_close(got, exported["expected"][key], **TOLERANCE)


@pytest.mark.parametrize("key,bits,symmetric,strategy,group_size", [
    ("llama-w4g32-asym", 4, False, "group", 32), ("llama-w8g32-sym", 8, True, "group", 32),
    ("llama-w4-channel-sym", 4, True, "channel", None), ("llama-w8-tensor-asym", 8, False, "tensor", None)])
def test_config_is_compressed_tensors_pack_quantized(exported, key, bits, symmetric, strategy, group_size):
    config = json.loads((exported["root"] / key / "config.json").read_text())
    qconfig = config["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == "pack-quantized"
    assert qconfig["quantization_status"] == "compressed" and qconfig["ignore"] == ["lm_head"]
    (group,) = qconfig["config_groups"].values()
    assert group["targets"] == ["Linear"]
    weights = group["weights"]
    assert (weights["num_bits"], weights["type"], weights["symmetric"], weights["strategy"],
            weights["group_size"]) == (bits, "int", symmetric, strategy, group_size)
    assert config["dtype"] == "float32"


def test_tensors_are_tritiums_codes_scales_and_zero_points(exported, tmp_path):
    """The stored int32 words hold tritium's unsigned codes and zero points, 32/k per word, lowest bits first."""
    from safetensors.torch import load_file

    model, result = _quantized("llama", UniformGrid(4, group=32), {})
    export(model, format="compressed-tensors", out=tmp_path / "ct", result=result, float_dtype="float16")
    tensors = load_file(tmp_path / "ct" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    qweight = result.weights[name]
    words = tensors[f"{name}.weight_packed"]
    assert words.dtype == torch.int32 and words.shape == (64, 64 * 4 // 32)
    nibbles = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1).reshape(64, 64)
    assert torch.equal(nibbles, qweight.codes.to(torch.int32))
    zeros = tensors[f"{name}.weight_zero_point"]  # packed along the output dimension
    assert zeros.shape == (64 * 4 // 32, 2)
    unpacked = torch.stack([(zeros >> (4 * i)) & 0xF for i in range(8)], dim=1).reshape(64, 2)
    assert torch.equal(unpacked, qweight.zero.to(torch.int32))
    assert tensors[f"{name}.weight_scale"].dtype == torch.float16
    assert torch.equal(tensors[f"{name}.weight_scale"].float(), qweight.scale)
    assert tensors[f"{name}.weight_shape"].tolist() == [64, 64]
    # the folder declares the dtype its float parts and scales are stored in
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["dtype"] == "float16"
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16


def test_mixed_precision_becomes_one_config_group_per_scheme(exported):
    qconfig = json.loads((exported["root"] / "llama-mixed" / "config.json").read_text())["quantization_config"]
    groups = {f"W{g['weights']['num_bits']}-{'sym' if g['weights']['symmetric'] else 'asym'}": g["targets"]
              for g in qconfig["config_groups"].values()}
    assert set(groups) == {"W4-sym", "W8-sym", "W2-sym"}
    # the first matching pattern wins: layer 1's down_proj is W8, as tritium quantized it
    assert groups["W8-sym"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert groups["W2-sym"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert len(groups["W4-sym"]) == 14 - 4
    assert qconfig["ignore"] == ["lm_head"]
    assert not any("vLLM fuses" in line or "cannot load" in line for line in exported["reports"]["llama-mixed"].lines)


def test_mixed_schemes_that_transformers_or_vllm_cannot_load_are_named(tmp_path):
    """transformers' dequantize=True load decompresses every linear with one config group's scheme, and its default
    load fails on asymmetric zero points, so a mixed folder with an asymmetric group does not load there; vLLM fuses
    q/k/v, which then must share a scheme."""
    overrides = {"model.layers.0.self_attn.q_proj": UniformGrid(8, group=32)}
    model, result = _quantized("llama", UniformGrid(4, group=32, symmetric=True), overrides)
    report = export(model, format="compressed-tensors", out=tmp_path / "ct", result=result)
    assert any("transformers cannot load this mixed folder" in line for line in report.lines), report.lines
    assert any("model.layers.0.self_attn mix grids" in line for line in report.lines), report.lines


def test_report_names_what_vllm_runs(exported):
    assert any("vLLM's pack-quantized scheme runs 4 and 8-bit" in line
               for line in exported["reports"]["llama-w2g32-sym"].lines)
    assert not any("vLLM's" in line for line in exported["reports"]["llama-w4g32-sym"].lines)
    assert any("densely" in line for line in exported["reports"]["llama-w3g32-sym"].lines)
    assert any("dequantize=True" in line for line in exported["reports"]["llama-w4g32-asym"].lines)


def test_asymmetric_default_load_note_is_still_true(exported):
    """The report tells users to load asymmetric folders with dequantize=True, because compressed-tensors 0.20.1
    leaves the zero point unpacked on the meta device; if this starts to load, drop that note."""
    failure = exported["logits"]["asym-default-load"]
    assert isinstance(failure, str) and "ignore_mismatched_sizes" in failure, failure


def test_a_packed_model_in_memory_exports_and_is_left_unchanged(exported, tmp_path):
    from tritium.nn import QuantLinear

    packed = AutoModelForCausalLM.from_pretrained(exported["packed_run"] / "model")
    export(packed, format="compressed-tensors", out=tmp_path / "ct")
    assert all(isinstance(m, QuantLinear) for m in packed_modules(packed).values()) and len(packed_modules(packed)) == 14
    assert packed.config.quantization_config.quant_method == "tritium"
    assert (tmp_path / "ct" / "config.json").is_file()


def test_the_registry_lists_the_formats():
    assert set(export_formats()) == {"compressed-tensors", "gguf", "tritium"}
    assert all(export_formats().values())
    assert get_exporter("compressed-tensors").kind == "folder" and get_exporter("gguf").kind == "file"
    with pytest.raises(ExportError, match="choose one of compressed-tensors, gguf, tritium"):
        get_exporter("onnx")
    assert tritium.export_model is export  # the package-level name of tritium.export.export


@pytest.mark.parametrize("grid,overrides,message", [
    (TernaryGrid("absmean", group="channel"), {}, "ternary grid ternary-absmean-perchannel has no compressed-tensors"),
    (UniformGrid(4, group=32), {"*.mlp.up_proj": TernaryGrid("dlt", group=32)}, "plus a shift per group"),
])
def test_ternary_is_refused_before_the_model_is_copied(grid, overrides, message, tmp_path, monkeypatch):
    model, result = _quantized("llama", grid, overrides)
    monkeypatch.setattr(source, "model_source", lambda *a, **k: pytest.fail("the model was copied before the check"))
    with pytest.raises(ExportError, match=message) as err:
        export(model, format="compressed-tensors", out=tmp_path / "ct", result=result)
    assert "--format gguf" in str(err.value)
    assert not (tmp_path / "ct").exists()


def test_a_ternary_run_folder_is_refused_before_it_loads(tmp_path, monkeypatch, capsys):
    run = _run(tmp_path, "ternary", "--grid", "ternary", "--group", "channel")
    monkeypatch.setattr(source, "load_folder_source", lambda plan: pytest.fail("the folder was loaded"))
    capsys.readouterr()
    assert main(["export", str(run), "--format", "compressed-tensors"]) == 2
    assert "ternary grid" in capsys.readouterr().err
    assert not (run / "compressed-tensors").exists()


def test_ragged_groups_and_fractional_zero_points_are_refused_before_writing(tmp_path):
    model = tiny_model("llama", seed=0, intermediate_size=96)  # down_proj reads 96 = one group of 64 + 32
    result = quantize_(model, RTNConfig(grid=UniformGrid(4, group=64, ragged_groups=True)))
    with pytest.raises(ExportError, match=r"W4g64 leaves a ragged last group .* input width 96.*\(32\)"):
        export(model, format="compressed-tensors", out=tmp_path / "ragged", result=result)
    model, result = _quantized("llama", UniformGrid(4, group=32), {})
    name = "model.layers.0.mlp.up_proj"
    result.weights[name].zero[0, 0] += 0.5  # a learned, fractional zero point
    with torch.no_grad():
        model.get_submodule(name).weight.copy_(result.weights[name].dequantize())
    with pytest.raises(ExportError, match="zero points that are not integers"):
        export(model, format="compressed-tensors", out=tmp_path / "fractional", result=result)
    assert not (tmp_path / "ragged").exists() and not (tmp_path / "fractional").exists()


@pytest.mark.parametrize("option,flag", [("float_dtype", "--float-dtype"), ("scale_dtype", "--scale-dtype")])
def test_bfloat16_would_round_the_scales_and_is_refused(tmp_path, option, flag):
    model, result = _quantized("llama", UniformGrid(4, group=32, symmetric=True), {})
    with pytest.raises(ExportError, match=f"not exactly representable in bfloat16.*export with {flag} float16"):
        export(model, format="compressed-tensors", out=tmp_path / "ct", result=result, **{option: "bfloat16"})
    assert not (tmp_path / "ct").exists()


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def test_an_existing_output_needs_overwrite(exported, tmp_path, capsys):
    run, out = exported["packed_run"], tmp_path / "ct"
    assert main(["export", str(run), "--format", "compressed-tensors", "--out", str(out)]) == 0
    before = _listing(out)
    (out / "note.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "compressed-tensors", "--out", str(out), "--float-dtype",
                 "float32"]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert (out / "note.txt").read_text() == "mine"
    assert main(["export", str(run), "--format", "compressed-tensors", "--out", str(out), "--overwrite"]) == 0
    assert _listing(out) == before  # replaced whole: the stray file is gone, the export is the same bytes
    # the GGUF alias refuses an existing file too
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"old")
    assert main(["export", str(run), "--gguf", str(gguf)]) == 2
    assert gguf.read_bytes() == b"old"
    assert main(["export", str(run), "--gguf", str(gguf), "--overwrite"]) == 0 and gguf.read_bytes()[:4] == b"GGUF"
    # an output that holds the source is never written
    assert main(["export", str(run / "model"), "--format", "tritium", "--out", str(run), "--overwrite"]) == 2
    assert "is (or holds) the folder being exported" in capsys.readouterr().err


def test_a_failed_read_back_leaves_nothing(exported, tmp_path, monkeypatch, capsys):
    """A packer that wrote one wrong code: the read-back catches it; no folder (or parent) appears, and an
    existing output under --overwrite is left as it was."""
    compress = to_compressed_tensors._compress

    def damaged(model, plans, groups, ignore):
        compressor = compress(model, plans, groups, ignore)
        packed = model.get_submodule("model.layers.1.mlp.down_proj").weight_packed
        packed.data[0, 0] ^= 1
        return compressor

    monkeypatch.setattr(to_compressed_tensors, "_compress", damaged)
    run = exported["packed_run"]
    capsys.readouterr()
    assert main(["export", str(run), "--format", "compressed-tensors", "--out", str(tmp_path / "a" / "b" / "ct")]) == 2
    assert "down_proj: the packed codes are not tritium's codes; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("old export")
    assert main(["export", str(run), "--format", "compressed-tensors", "--out", str(tmp_path / "old"),
                 "--overwrite"]) == 2
    assert _listing(tmp_path / "old") == [("keep.txt", b"old export")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_cli_flags_are_checked(exported, capsys):
    run = exported["packed_run"]
    cases = [(["export", str(run)], "choose a format"),
             (["export", str(run), "--format", "compressed-tensors", "--type", "tq2_0"], "--type does not apply"),
             (["export", str(run), "--format", "gguf", "--scale-dtype", "float32"], "--scale-dtype does not apply"),
             (["export", str(run), "--format", "tritium", "--gguf", "x.gguf"], "--gguf x.gguf means --format gguf")]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(ExportError, match="'type' belongs to gguf"):
        api.export_model(run, format="compressed-tensors", type="tq1_0")


def test_tritium_format_rewrites_a_packed_folder_from_a_fake_run(exported, tmp_path):
    fake_run = exported["fake_run"]
    assert main(["export", str(fake_run), "--format", "tritium", "--out", str(tmp_path / "packed"),
                 "--float-dtype", "float32"]) == 0
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert len(packed_modules(packed)) == 14
    fake = AutoModelForCausalLM.from_pretrained(fake_run / "model")
    torch.testing.assert_close(_logits(packed), _logits(fake), **TOLERANCE)
