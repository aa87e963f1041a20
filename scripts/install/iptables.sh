#!/usr/bin/env bash
# iptables (and ss, from iproute2) for tests/e2e/test_dead_path.py, which
# drops one connection's packets to make a dead network path; idempotent.
set -euo pipefail
command -v iptables >/dev/null && command -v ss >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends iptables iproute2 >/dev/null
