#!/usr/bin/env bash
# OpenSSH server (and client) for tests/e2e/test_ssh.py; idempotent.
set -euo pipefail
if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
# The package may start a system sshd on port 22; the tests run their own.
