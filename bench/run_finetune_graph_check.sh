#!/usr/bin/env bash
# Device call (issue 21): is a LoRA trained after graph-mode pretraining in the same process the LoRA a
# fresh process trains on the same base? The dev family with eager and with graph pretraining side by
# side (fixed step count), then bench/check_finetune_state.py on each saved base in a fresh process.
#   bash bench/run_finetune_graph_check.sh OUT_DIR
set -uo pipefail
out=$1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD COMFYUI_PATH=$PWD/.gpu/ComfyUI PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
args="--families gmm8-s0.3 --steps 5 --pretrain-steps 600 --pretrain-batch 4096 --pretrain-ema 0.999 --pretrain-evals 4
  --train-images 131072 --lora-steps 300 --lora-batch 256 --lora-lr 3e-4 --rounds 1 --fixed 0.5:1e-4:0.9:eps:cosine
  --control-lr-schedule cosine --samples 8192 --sample-batch 8192"
for mode in eager graph; do
  python3 -m bench.study_finetune_gmm $args --pretrain-mode $mode --base-dir /tmp/base-$mode --out /tmp/study-$mode \
    > /tmp/log-$mode.txt 2>&1 &
done
wait
for mode in eager graph; do
  grep "N=5\|@32\|pretrain (" /tmp/log-$mode.txt
  cp /tmp/study-$mode/study_finetune_gmm.json "$out/study_$mode.json"
  python3 -m bench.check_finetune_state --base /tmp/base-$mode/*.pt --samples 8192 --out /tmp/check-$mode 2>&1 | grep '^{'
  cp /tmp/check-$mode/check_finetune_state.json "$out/check_$mode.json"
done
