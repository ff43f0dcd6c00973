#!/usr/bin/env bash
# Headless Chromium for `make ui-screenshot` (Debian/Ubuntu package). Does nothing when a
# chromium is already on PATH; installs it with apt-get when run as root; else says what to run.
set -euo pipefail

for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium with apt-get (headless screenshots of the Prefect UI)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
else
  echo "chromium is not installed; run: sudo apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)" >&2
  exit 1
fi
