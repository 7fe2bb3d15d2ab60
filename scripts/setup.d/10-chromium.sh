#!/usr/bin/env bash
# Headless Chromium for the web-page test (Debian packages; idempotent).
exec bash "$(dirname "$0")/../install_chromium.sh"
