#!/usr/bin/env bash
# Issue 15: the ternary SmolLM2 folder with a q4_0 head, now that tokenizer.json is compact.
set -euo pipefail
cd /work/main
export TRITIUM_DATA=/work/shared/data OMP_NUM_THREADS=1
rm -rf /tmp/m && mkdir -p /tmp/m
tritium quantize --model smollm2-135m --recipe ternary-absmean-rtn --eval none --no-float --format fake --out /tmp/m/t
for head in f16 q8_0 q4_0; do
  tritium pack /tmp/m/t --head-type $head --out /tmp/m/t-$head
  echo "head $head: $(du -sb /tmp/m/t-$head | cut -f1) bytes"; ls -l /tmp/m/t-$head
done
