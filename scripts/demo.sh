#!/usr/bin/env bash
# The main job: a headless ComfyUI with FewStep runs the example workflows on the embedded
# exact-denoiser model and writes images and a comparison plot to a folder (default ./out).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$ROOT/scripts/host.sh")"
export COMFYUI_PATH FEWSTEP_PYTHON
exec "$FEWSTEP_PYTHON" "$ROOT/scripts/demo.py" "$@"
