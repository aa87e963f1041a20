#!/usr/bin/env bash
# PostgreSQL server, psql and pgbench for tests/e2e/test_postgres_tunnel.py;
# idempotent (the image usually has them already).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null \
   && command -v pgbench >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
