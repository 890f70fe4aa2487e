#!/usr/bin/env bash
# The slow tier's browser: Debian's chromium (for the chat page test and its screenshot), installed when missing.
#   bash scripts/setup-browser.sh
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-browser.sh: chromium is missing; run as root (or: sudo apt-get install -y chromium)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium
