"""bench/gpu_check.sh's plumbing, run on the CPU (--dry-run) with a tiny model and tiny sizes."""

import json
import os
import re
import subprocess
from pathlib import Path

from tritium.models import tiny_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_gpu_check_dry_run_checks_the_kernel_packs_and_runs_a_model(tmp_path, tokenizer):
    model = tmp_path / "tiny"
    tiny_model("llama", tie_word_embeddings=True).save_pretrained(model)
    tokenizer.save_pretrained(model)
    out, work = tmp_path / "out", tmp_path / "work"
    # The C++ CPU kernels have their own tests; here the reference ops keep this test free of a compile.
    env = os.environ | {"MODEL": str(model), "WORK": str(work), "HEAD_TYPES": "q4_0", "PROMPT": "The quick",
                        "TRITIUM_DISABLE_CPU_KERNEL": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + (work / "kernels.log").read_text()[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["kernels.json", "kernels.md", "machine.txt", "run.log",
                                                     "setup.log", "summary.md"]  # the device tool returns ≤ 8 files
    kernels = json.loads((out / "kernels.json").read_text())
    assert kernels["device"] == "cpu" and kernels["correctness"] and all(c["ok"] for c in kernels["correctness"])
    assert kernels["speed"][0]["packed_us"] > 0
    assert "exit codes: setup 0, kernels 0, pack 0, run 0" in summary
    rates = re.findall(r"\| (.+?) \| decode ([\d.]+) tokens/s \|", summary)
    assert [label for label, _ in rates] == ["packed ternary-absmean-rtn, f16 head", "packed ternary-absmean-rtn, "
                                             "q4_0 head", "float model"]
    assert "q4_0 head" in (out / "run.log").read_text()
    assert (work / "packed" / "model" / "config.json").is_file()  # the folder stays out of OUT
