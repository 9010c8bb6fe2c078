"""Peak memory of the calibration pipeline against depth: tiny Llama models of 4 and 32
layers, same width and calibration set. The pipeline holds one block plus the
activation streams, so the memory it adds above the loaded model should not grow
with the number of layers (the model itself does, and is reported apart). With
``--offload on`` the blocks not being calibrated wait on disk, so the whole peak RSS,
model included, should stay flat.

Each model runs in its own process; a sampler thread reads the process RSS every few
milliseconds during quantization.

    python bench/bench_ptq_memory.py --out bench/results/ptq-memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(layers: int, method: str, hidden: int, samples: int, seqlen: int, offload: bool) -> dict:
    import tempfile

    import torch

    from tritium.methods import config_from_dict, quantize_
    from tritium.models import tiny_model

    torch.set_num_threads(2)
    model = tiny_model("llama", num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(seqlen, 256))
    ids = torch.randint(0, 512, (samples, seqlen), generator=torch.Generator().manual_seed(0))
    args = {"gptq": {}, "tesseraq": {"soft_fractions": (0.5,), "steps_per_stage": 2, "n_grid": 2, "clip_n_grid": 2}}
    offload_dir = tempfile.mkdtemp(prefix="tritium-offload-") if offload else None
    config = config_from_dict(method, {"kind": "uniform", "bits": 2, "group": 64}, offload_dir=offload_dir,
                              **args[method])
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    before = rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    walk = {"start_rss": None, "peak": None}
    if offload:
        # With offload the walk starts once every block is on disk: peak memory from then on is what
        # depth must not change (the RSS before that includes the whole model, which the user loaded).
        from tritium.calib import offload as offload_module

        original_restore = offload_module.BlockOffloader.restore

        def restore(self, index, device=None):
            if walk["start_rss"] is None:
                walk["start_rss"] = rss_mb()
                peak[0] = walk["start_rss"]
            return original_restore(self, index, device)

        original_restore_all = offload_module.BlockOffloader.restore_all

        def restore_all(self):
            # The walk ends here; the model then comes back whole for the caller, which is not the walk's memory.
            walk["peak"] = max(peak[0], rss_mb())
            return original_restore_all(self)

        offload_module.BlockOffloader.restore = restore
        offload_module.BlockOffloader.restore_all = restore_all
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    quantize_(model, config, ids)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    peak[0] = walk.get("peak") or max(peak[0], rss_mb())
    return {"walk_start_rss_mb": walk["start_rss"] or before,
            "layers": layers, "method": method + (" + disk offload" if offload else ""), "model_mb": model_mb, "rss_before_mb": before, "peak_rss_mb": peak[0],
            "pipeline_mb": peak[0] - before, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="4,32")
    parser.add_argument("--methods", default="gptq,tesseraq")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--offload", default="off", choices=["off", "on", "both"],
                        help="keep the blocks not being calibrated on disk (PipelineSettings.offload_dir)")
    parser.add_argument("--out", default="bench/results/ptq-memory.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out:  # a lock beside --out: a second bench writing the same result is refused, not interleaved
        from tritium.utils.runs import claim_output

        claim_output(args.out, Path(__file__).name, overwrite=True)
    if args.child:
        print(json.dumps(run_one(int(args.child[0]), args.child[1], args.hidden, args.samples, args.seqlen,
                                 args.child[2] == "on")))
        return 0
    rows = []
    offload_modes = ["off", "on"] if args.offload == "both" else [args.offload]
    for method, offload in [(m, o) for m in args.methods.split(",") for o in offload_modes]:
        for layers in [int(x) for x in args.layers.split(",")]:
            command = [sys.executable, __file__, "--child", str(layers), method, offload, "--hidden", str(args.hidden),
                       "--samples", str(args.samples), "--seqlen", str(args.seqlen)]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env=os.environ | {"PYTHONPATH": str(REPO / "src")})
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    stream_mb = args.samples * args.seqlen * args.hidden * 4 / 2**20
    lines = ["# Pipeline peak memory against depth", "", f"- command: `{' '.join(sys.argv)}`",
             f"- machine: {platform.node()}, {os.cpu_count()} CPUs, date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"- tiny Llama, hidden {args.hidden}, calibration {args.samples}×{args.seqlen} tokens "
             f"(one activation stream = {stream_mb:.1f} MB), W2g64, CPU", "",
             "| method | layers | model MB | RSS before MB | RSS when the block walk starts MB | peak RSS during the walk MB "
             "| pipeline peak above the model MB | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['layers']} | {r['model_mb']:.1f} | {r['rss_before_mb']:.0f} | "
                     f"{r['walk_start_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['pipeline_mb']:.1f} | "
                     f"{r['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    from tritium.utils.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
