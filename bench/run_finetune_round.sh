#!/usr/bin/env bash
# One device call of the Phase 2 ground-truth study (issue 21) on the GPU machine, from the repo root:
# the pretraining speed probe, then the study with the fastest pretraining step the probe saw working
# (bf16 only where it is 1.3x the best float32 one), one process per family.
#   bash bench/run_finetune_round.sh OUT_DIR PRETRAIN_BUDGET_S STUDY_BUDGET_S FAMILY... -- [study options]
# Needs the .gpu bundle (scripts/gpu_bundle.sh), whole or packed; bases saved by an earlier run and carried in .gpu/bases
# are loaded instead of pretrained (the study's --base-dir rule: same family and pretraining settings).
# Results: OUT_DIR/pretrain_probe.json, OUT_DIR/results.tgz (merged study_finetune_gmm.json + one folder
# per family with its log), the UNets it pretrained. Several may run at once in one device call, each with its
# own OUT_DIR (its work folder is named after it); FEWSTEP_THREADS sets each family process's CPU threads.
set -uo pipefail
out=$1 pretrain_s=$2 study_s=$3; shift 3
families=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do families+=("$1"); shift; done; shift || true
# the bundle may be carried packed (site.tar.xz, ComfyUI.tgz): it then leaves room for two bases
(
  flock 9  # runs started together unpack once
  if [ ! -f /tmp/site/.unpacked ]; then
    if [ -f .gpu/site.tar.xz ]; then mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site
    else python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl; fi
    touch /tmp/site/.unpacked
  fi
  [ -d .gpu/ComfyUI ] || tar xzf .gpu/ComfyUI.tgz -C .gpu
) 9>/tmp/fewstep-unpack.lock
export PYTHONPATH=/tmp/site:$PWD COMFYUI_PATH=$PWD/.gpu/ComfyUI PYTHONUNBUFFERED=1
# FEWSTEP_PRETRAIN_STEP="graph fp32 4096" (mode amp batch, as an earlier probe chose) skips the probe
choice=${FEWSTEP_PRETRAIN_STEP:-}
[ -n "$choice" ] || timeout 150 python3 -m bench.study_pretrain --probe --batches 1024 4096 --count 20 --out "$out" 2>&1 | grep '^{'
[ -n "$choice" ] || choice=$(python3 - "$out/pretrain_probe.json" <<'PY' 2>/dev/null || echo "eager fp32 4096"
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r.get("taken") == r["mode"]]
fp32 = max((r for r in rows if r["amp"] == "fp32"), key=lambda r: r["samples_s"])
best = max(rows, key=lambda r: r["samples_s"])
pick = best if best["samples_s"] > 1.3 * fp32["samples_s"] else fp32
print(pick["mode"], pick["amp"], pick["batch"])
PY
)
set -- $choice "$@"; echo "pretraining step chosen from the probe: $choice"
mode=$1 amp=$2 batch=$3; shift 3
work=/tmp/round-$(basename "$out")
rm -rf "$work" && mkdir -p "$work/bases" "$out" && cp .gpu/bases/*.pt "$work/bases/" 2>/dev/null
python3 -m bench.study_finetune_parallel --out "$work" --timeout-s "$study_s" --families "${families[@]}" \
  ${FEWSTEP_THREADS:+--threads "$FEWSTEP_THREADS"} -- \
  --pretrain-mode "$mode" --pretrain-amp "$amp" --pretrain-batch "$batch" --pretrain-budget-s "$pretrain_s" \
  --base-dir "$work/bases" "$@" 2>&1 | tail -c 7000
for base in "$work"/bases/*.pt; do [ -e "$base" ] && [ ! -e ".gpu/bases/${base##*/}" ] && cp "$base" "$out"/; done
tar czf "$out/results.tgz" -C "$work" --exclude=bases .
