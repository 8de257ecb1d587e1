#!/usr/bin/env bash
# The main job: a headless ComfyUI with FewStep runs the example workflows on the embedded
# exact-denoiser model and writes images and a comparison plot to a folder (default ./out).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$ROOT/scripts/host.sh")"
export COMFYUI_PATH FEWSTEP_PYTHON
# The repo root on the path, packages imported by name (scripts.demo, tests.support, samplers).
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$FEWSTEP_PYTHON" -m scripts.demo "$@"
