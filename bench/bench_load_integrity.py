"""What the manifest check adds to loading a model folder: ``tritium.models.load_model`` with and without it.

Loads alternate (checked, unchecked, checked, ...) so that both see the same page cache and machine
load; "unchecked" replaces the folder check by a no-op for that load only (the product has no
switch to skip it). Reports the median of each and the added fraction, plus the time of the check
alone (every file's sha256 and every tensor's CRC-32), in wall time and in this process's CPU time (on a
shared machine the wall time mostly measures the other processes).

    python bench/bench_load_integrity.py --model runs/smollm2-packed/model --repeats 7

Make the folder with e.g. ``tritium quantize --model smollm2-135m --recipe ternary-absmean-rtn
--format packed --no-float --eval none --out runs/smollm2-packed``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder tritium saved (with tritium_manifest.json)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from tritium.models import load_model
    from tritium.utils import integrity
    from tritium.utils.io import folder_bytes

    folder = Path(args.model)
    if not integrity.has_manifest(folder):
        raise SystemExit(f"{folder} has no {integrity.MANIFEST_FILE}: save it with tritium first")
    real_verify = integrity.verify_folder
    load_model(folder)  # warm the page cache and the imports
    def unchecked(f, background=False):
        return integrity.FolderCheck(Path(f))

    timings: dict[str, list[float]] = {"checked": [], "unchecked": [], "check alone": []}
    cpu: dict[str, list[float]] = {key: [] for key in timings}
    for _ in range(args.repeats):
        for mode in ("checked", "unchecked"):
            integrity.verify_folder = real_verify if mode == "checked" else unchecked
            start, start_cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_model(folder)
            timings[mode].append(time.perf_counter() - start)
            cpu[mode].append(time.process_time() - start_cpu)
        integrity.verify_folder = real_verify
        start, start_cpu = time.perf_counter(), time.process_time()
        real_verify(folder)
        timings["check alone"].append(time.perf_counter() - start)
        cpu["check alone"].append(time.process_time() - start_cpu)
    print(f"folder: {folder} ({folder_bytes(folder) / 1e6:.1f} MB), {args.repeats} repeats, median seconds")
    for label, table in (("wall", timings), ("cpu", cpu)):
        median = {k: statistics.median(v) for k, v in table.items()}
        for key, value in median.items():
            print(f"  {label} {key:12s} {value:.3f}   (all: {', '.join(f'{t:.3f}' for t in table[key])})")
        print(f"  {label}: added by the check {median['checked'] - median['unchecked']:+.3f} s "
              f"({100 * (median['checked'] / median['unchecked'] - 1):+.1f}% of the unchecked load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
