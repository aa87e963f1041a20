#!/usr/bin/env bash
# Installs s3s-fs (an S3-compatible server that really verifies SigV4) for the
# recordings e2e tests. The binary lives in a cache dir outside the checkout so
# the ~2.5 min build happens once per machine; 0.14.1 is the newest release the
# machine's Rust can build.
set -euo pipefail
if command -v s3s-fs >/dev/null 2>&1; then exit 0; fi
root="${AIRLOCK_TOOL_CACHE:-$HOME/.cache/airlock-tools}/s3s-fs-0.14.1"
if [ ! -x "$root/bin/s3s-fs" ]; then
  cargo install --locked s3s-fs@0.14.1 --features binary --root "$root"
fi
echo "$root/bin"
