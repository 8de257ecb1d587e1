#!/usr/bin/env bash
# Runs every FewStep test (maths, in-process ComfyUI, headless server, browser) against real ComfyUI
# hosts, one leg per host (docs/compatibility.md), and prints a summary per leg:
#   leg 0.3.75  the whole suite; browser tests on its frontend 1.32.9
#   leg 0.33.0  every host-dependent test (the pure-maths files marked host_independent ran in the
#               first leg: they import no ComfyUI and both hosts pin the same torch); browser tests
#               on its frontend 1.49.6 and on the newest frontend, 1.58.1. Skipped, saying why, where
#               ../shared/hosts/ has no ComfyUI 0.33.0 tarball (a user's fresh clone).
# FEWSTEP_COMFY=0.3.75|0.33.0 (or COMFYUI_PATH=<a ComfyUI tree>) runs one leg: the whole suite on
# that host. Installs what it needs on first use. Extra arguments go to pytest in every leg; each
# leg's output (with its 25 slowest tests) is kept in test-artifacts/test-leg-<host>.log.
# Exits non-zero if any leg fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export FEWSTEP_CACHE=${FEWSTEP_CACHE:-$ROOT/.cache}
# The ahead-of-time kernel compile test's artefacts persist beside the hosts (Triton keys its cache
# by kernel source, options, target and Triton version, so an edited kernel is compiled again).
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$FEWSTEP_CACHE/triton}
LOGS=$ROOT/test-artifacts
mkdir -p "$LOGS"
bash "$ROOT/scripts/browser.sh"   # Debian Chromium for tests/test_browser_*.py (once)

NEWEST_FRONTEND=1.58.1
declare -a SUMMARY=()
failed=0

# run_leg NAME FRONTENDS HOST_DEPENDENT_ONLY [pytest args...]
#   FRONTENDS: the browser matrix of this leg, "VERSION" (the host's own) or "VERSION@STATIC_ROOT"
run_leg() {
  local name=$1 frontends=$2 host_only=$3; shift 3
  local log="$LOGS/test-leg-$name.log" start rc line
  start=$(date +%s)
  if [ "$host_only" = 0 ]; then  # the batch runner's optional cluster engine (pyproject extra "ray")
    "$FEWSTEP_PYTHON" -c 'import ray' 2>/dev/null || "$FEWSTEP_PYTHON" -m pip install -q "ray==2.60.0" >&2 \
      || echo "[fewstep tests] ray could not be installed: tests/test_batch_ray.py will skip" >&2
  fi
  echo "[fewstep tests] ---- leg $name: ComfyUI at $COMFYUI_PATH, frontends $(sed -E 's/@[^,]*//g' <<<"$frontends")"
  set +e
  FEWSTEP_FRONTENDS=$frontends FEWSTEP_HOST_DEPENDENT_ONLY=$host_only \
    "$FEWSTEP_PYTHON" -m pytest -c tests/pytest.ini tests --durations=25 "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  line=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -1 \
         | sed -E 's/^=+ //; s/ =+$//' || true)
  if [ "$rc" -eq 5 ] && [ "$host_only" = 1 ]; then
    rc=0; line="no host-dependent test among those selected ($line)"
  elif [ "$rc" -eq 5 ]; then
    echo "[fewstep tests] no tests were collected: that is a failure" >&2
  fi
  local verdict=PASS
  [ "$rc" -eq 0 ] || { verdict="FAIL (pytest exit $rc)"; failed=1; }
  SUMMARY+=("leg $name: $verdict after $(( $(date +%s) - start )) s: ${line:-no pytest summary, see $log}")
}

frontends_of() {  # the browser matrix on the host in $COMFYUI_PATH: its own frontend [+ the newest]
  local own extra=""
  own=$("$FEWSTEP_PYTHON" -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))')
  if [ "$FEWSTEP_COMFY" = 0.33.0 ]; then
    # the newest frontend runs on the newer server only (on 0.3.75 it lacks endpoints it expects)
    extra=$(bash scripts/browser.sh --frontend "$NEWEST_FRONTEND" "$FEWSTEP_PYTHON") \
      || extra="$NEWEST_FRONTEND@not-installed"
  fi
  echo "$own${extra:+,$extra}"
}

t0=$(date +%s)
if [ -n "${COMFYUI_PATH:-}" ] || [ -n "${FEWSTEP_COMFY:-}" ]; then
  host_env=$(bash scripts/host.sh) || { echo "[fewstep tests] no host: scripts/host.sh failed" >&2; exit 1; }
  eval "$host_env"
  export COMFYUI_PATH FEWSTEP_PYTHON FEWSTEP_COMFY
  run_leg "${FEWSTEP_COMFY}" "$(frontends_of)" 0 "$@"
else
  # leg 1: ComfyUI 0.3.75, the whole suite
  host_env=$(env -u COMFYUI_PATH -u FEWSTEP_PYTHON FEWSTEP_COMFY=0.3.75 bash scripts/host.sh) \
    || { echo "[fewstep tests] the 0.3.75 host could not be built (scripts/host.sh)" >&2; exit 1; }
  eval "$host_env"
  export COMFYUI_PATH FEWSTEP_PYTHON FEWSTEP_COMFY
  run_leg 0.3.75 "$(frontends_of)" 0 "$@"
  # leg 2: ComfyUI 0.33.0 where the tarball is, its host-dependent tests
  set +e
  env_033=$(env -u COMFYUI_PATH -u FEWSTEP_PYTHON FEWSTEP_COMFY=0.33.0 bash scripts/host.sh)
  host_rc=$?
  set -e
  if [ "$host_rc" -eq 3 ]; then
    SUMMARY+=("leg 0.33.0: SKIPPED: no ComfyUI 0.33.0 tarball in ${FEWSTEP_HOSTS_DIR:-../shared/hosts/ beside this checkout} (docs/compatibility.md)")
  elif [ "$host_rc" -ne 0 ]; then
    SUMMARY+=("leg 0.33.0: FAIL: its host could not be built (scripts/host.sh exit $host_rc)"); failed=1
  else
    eval "$env_033"
    export COMFYUI_PATH FEWSTEP_PYTHON FEWSTEP_COMFY
    run_leg 0.33.0 "$(frontends_of)" 1 "$@"
  fi
fi

echo "[fewstep tests] ---- summary ($(( $(date +%s) - t0 )) s in all, host builds included)"
for s in "${SUMMARY[@]}"; do echo "[fewstep tests] $s"; done
exit "$failed"
