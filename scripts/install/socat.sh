#!/usr/bin/env bash
# socat for scripts/bench-tunnel (the two-hop relay baseline); idempotent.
set -euo pipefail
command -v socat >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends socat >/dev/null
