#!/usr/bin/env bash
# Runs every FewStep test (maths, in-process ComfyUI, headless server, browser) against a real
# ComfyUI. Installs what it needs on first use. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$ROOT/scripts/host.sh")"
export COMFYUI_PATH FEWSTEP_PYTHON
bash "$ROOT/scripts/browser.sh"   # Debian Chromium for tests/test_browser_*.py (once)
# the batch runner's optional cluster engine, for tests/test_batch_ray.py (pyproject extra "ray")
"$FEWSTEP_PYTHON" -c 'import ray' 2>/dev/null || "$FEWSTEP_PYTHON" -m pip install -q "ray==2.60.0" >&2
cd "$ROOT"
start=$(date +%s)
set +e
"$FEWSTEP_PYTHON" -m pytest -c tests/pytest.ini tests "$@"
rc=$?
set -e
echo "[fewstep tests] pytest exit $rc after $(( $(date +%s) - start )) s"
if [ "$rc" -eq 5 ]; then
  echo "[fewstep tests] no tests were collected: that is a failure" >&2
  exit 1
fi
exit "$rc"
