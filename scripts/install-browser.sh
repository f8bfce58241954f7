#!/usr/bin/env bash
# The browser the /ui tests drive: Debian's chromium (Playwright's own download is not reachable).
# Idempotent: nothing to do when /usr/bin/chromium (or $GLASSBOX_TEST_CHROMIUM) exists.
set -euo pipefail
target="${GLASSBOX_TEST_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$target" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser: $target is missing; run as root, or: sudo apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x "$target"
