#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/test_ui_browser.py drives it with Playwright;
# no browser is downloaded). Installs it once when missing and this user may (root with
# apt-get); otherwise says so, and that test skips with the same reason (with CI set it
# fails instead, so CI cannot pass without it). Never fails the caller itself: the rest of
# the suite does not need a browser.
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed (apt-get install chromium as root); the browser test will be skipped (or fail, with CI set)" >&2
  exit 0
fi
mkdir -p .venv
echo "installing chromium for the browser test ..." >&2
if ! { apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > .venv/apt-chromium.log 2>&1; then
  tail -n 20 .venv/apt-chromium.log >&2
  echo "could not install chromium (log: .venv/apt-chromium.log); the browser test will be skipped (or fail, with CI set)" >&2
fi
exit 0
