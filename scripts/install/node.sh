#!/usr/bin/env bash
# Node.js and npm build the browser console (gateway/build.rs) and run its
# tests. Debian's packages are enough (esbuild needs Node 18+). Idempotent.
set -euo pipefail
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm >/dev/null
fi
