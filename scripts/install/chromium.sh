#!/usr/bin/env bash
# Debian's Chromium (Playwright cannot download its own browsers here) and
# npm's playwright-core, kept in a cache outside the tree. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  # Other installers may hold the dpkg lock; wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
fi

CACHE="${AIRLOCK_PLAYWRIGHT_DIR:-$HOME/.cache/airlock-playwright}"
if [ ! -f "$CACHE/node_modules/playwright-core/package.json" ]; then
  mkdir -p "$CACHE"
  npm install --prefix "$CACHE" --no-audit --no-fund --silent playwright-core@1 >/dev/null
fi
