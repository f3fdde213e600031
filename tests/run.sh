#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs them. Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt -r tests/requirements.txt -c constraints.txt
# The browser test drives Debian's chromium; install it when missing and apt is usable (else that test skips).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
    || echo "note: could not install chromium; the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pytest -q "$@"
