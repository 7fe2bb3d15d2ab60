#!/usr/bin/env bash
# Install Debian's headless-capable Chromium and its WebDriver for the chat page's browser test
# (tests/server/test_web_page.py drives /usr/bin/chromium through /usr/bin/chromedriver with
# selenium). Idempotent and quiet: does nothing when both are already installed. No browser is
# downloaded at test time; this uses the distribution's packages only.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver; } \
    >"$log" 2>&1; then
  echo "install_chromium.sh: apt-get failed:" >&2
  tail -n 20 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
command -v chromium >/dev/null && command -v chromedriver >/dev/null
