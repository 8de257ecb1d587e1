#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests (apt, once; no browser download).
# Does nothing when /usr/bin/chromium (or $FEWSTEP_CHROMIUM) exists; never fails the caller: without
# a browser the browser tests fail with a message saying how to install one.
set -uo pipefail
CHROMIUM=${FEWSTEP_CHROMIUM:-/usr/bin/chromium}
log() { echo "[fewstep browser] $*" >&2; }
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
