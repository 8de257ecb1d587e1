#!/usr/bin/env bash
# What the browser tests need beyond the host.
#   bash scripts/browser.sh
#       Makes sure Debian's Chromium is installed (apt, once; no browser download). Does nothing when
#       /usr/bin/chromium (or $FEWSTEP_CHROMIUM) exists; never fails the caller: without a browser
#       the browser tests fail with a message saying how to install one.
#   bash scripts/browser.sh --frontend VERSION [PYTHON]
#       Installs ComfyUI's frontend comfyui-frontend-package==VERSION from the registry into the
#       git-ignored cache ($FEWSTEP_CACHE or .cache/, once), not into a host's venv, and prints
#       VERSION@STATIC_ROOT: the folder to serve with ComfyUI's --front-end-root. Exit 1 on failure.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "[fewstep browser] $*" >&2; }

if [ "${1:-}" = --frontend ]; then
  VERSION=${2:?--frontend needs a version}
  PY=${3:-python3}
  DIR=${FEWSTEP_CACHE:-$ROOT/.cache}/frontend-$VERSION
  STATIC=$DIR/comfyui_frontend_package/static
  if [ ! -f "$DIR/.ready" ]; then
    mkdir -p "$DIR"
    exec 9>"$DIR.lock"; flock 9
    if [ ! -f "$DIR/.ready" ]; then
      log "installing frontend $VERSION into $DIR (first run only)"
      rm -rf "$DIR"/comfyui_frontend_package*
      "$PY" -m pip install -q --no-deps --target "$DIR" "comfyui-frontend-package==$VERSION" \
        2> >(grep -v -E "^WARNING: (Location|Running pip as)" >&2) >&2 || { log "could not install frontend $VERSION"; exit 1; }
      [ -f "$STATIC/index.html" ] || { log "frontend $VERSION has no static/index.html"; exit 1; }
      touch "$DIR/.ready"
    fi
  fi
  echo "$VERSION@$STATIC"
  exit 0
fi

CHROMIUM=${FEWSTEP_CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "no Chromium at $CHROMIUM and no root apt-get to install it: run 'apt-get install chromium'"
  exit 0
fi
exec 9>/tmp/fewstep-chromium-install.lock; flock 9   # two test runs at once install once
[ -x "$CHROMIUM" ] && exit 0
log "installing Debian's chromium (first run only)"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >&2 && apt-get install -y -qq chromium >&2; then
  log "chromium installed: $("$CHROMIUM" --version 2>/dev/null)"
else
  log "apt-get install chromium failed; the browser tests will say so"
fi
exit 0
