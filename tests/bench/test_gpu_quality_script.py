"""The GPU quality script's plumbing, run on the CPU with a tiny model and tiny budgets."""

import json
import os
import subprocess
from pathlib import Path

from tritium.models import tiny_model

REPO = Path(__file__).resolve().parents[2]


def test_gpu_quality_script_runs_both_jobs_and_writes_their_results(tmp_path, tokenizer):
    model = tmp_path / "tiny"
    # the distillation bench evaluates 2048-token chunks
    tiny_model("llama", max_position_embeddings=2048).save_pretrained(model)
    tokenizer.save_pretrained(model)
    data_dir = tmp_path / "data"
    (data_dir / "wikitext-2-raw-v1").mkdir(parents=True)
    text = " ".join(f"The quick brown fox number {i} jumps over the lazy dog." for i in range(1500))
    for split in ("test", "valid"):
        (data_dir / "wikitext-2-raw-v1" / f"wiki.{split}.raw").write_text(text)
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "MODEL": str(model), "LIMIT": "1", "SEQLEN": "128", "PTQ_RECIPES": "cpu",
                        "PTQ_METHODS": "rtn,tesseraq+rot", "TOKENS": "256", "TRAIN_SEQLEN": "32", "MICRO_BATCH": "2",
                        "DEVICE": "cpu", "PRECISION": "fp32", "JOB_SECONDS": "600", "TRITIUM_DATA": str(data_dir)}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_quality.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + (out / "ptq.log").read_text()[-2000:] + \
        (out / "distill.log").read_text()[-2000:]
    ptq = json.loads((out / "ptq.json").read_text())
    assert ptq["float"]["ppl"] > 0
    cells = {c["method"]: c for c in ptq["cells"]}
    assert set(cells) == {"rtn", "tesseraq+rot"} and all("error" not in c for c in cells.values())
    assert cells["tesseraq+rot"]["rotate"] is True
    distill_reports = list((out / "distill").glob("*.json"))
    assert distill_reports, "the distillation job wrote no report"
    assert "ptq exit 0, distill exit 0" in (out / "machine.txt").read_text()
