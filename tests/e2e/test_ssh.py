"""Issue 6: OpenSSH through `airlock ssh-proxy` (AWS-StartSSHSession) to a
real sshd on loopback with its own host key and authorized_keys."""

import hashlib
import os
import shlex
import subprocess

import pytest

from conftest import REGION, LineReader, binary, stop
from portutil import free_port

SSHD = "/usr/sbin/sshd"


@pytest.fixture
def sshd(workdir):
    if not os.path.exists(SSHD):
        pytest.fail("sshd missing: run scripts/install/sshd.sh")
    d = os.path.join(workdir, "sshd")
    os.makedirs(d)
    os.chmod(d, 0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host_key"],
                   check=True, timeout=30)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/client_key"],
                   check=True, timeout=30)
    with open(f"{d}/client_key.pub") as src, open(f"{d}/authorized_keys", "w") as dst:
        dst.write(src.read())
    os.chmod(f"{d}/authorized_keys", 0o600)
    # Privilege separation needs this directory even for a private sshd.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = free_port()
    config = f"{d}/sshd_config"
    with open(config, "w") as f:
        f.write(f"""HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
""")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", config, "-p", str(port), "-o", "ListenAddress=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # sshd -e logs to stderr: hand that pipe to the LineReader as "stdout".
    reader = LineReader(type("SshdLog", (), {"stdout": proc.stderr}))
    reader.wait_for(rf"Server listening on 127\.0\.0\.1 port {port}")
    host_pub = open(f"{d}/host_key.pub").read().split()
    with open(f"{d}/known_hosts", "w") as f:
        # ssh looks the key up under the HostKeyAlias below.
        f.write(f"airlock-target {host_pub[0]} {host_pub[1]}\n")
    yield {"port": port, "dir": d}
    stop(proc)


def ssh(gateway, agent, sshd, command, stdin=None):
    proxy = " ".join(shlex.quote(a) for a in [
        binary("airlock"), "ssh-proxy", "--target", agent.instance_id, "--port", str(sshd["port"]),
        "--endpoint-url", gateway.url, "--region", REGION,
    ])
    d = sshd["dir"]
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={proxy}", "-i", f"{d}/client_key",
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "StrictHostKeyChecking=yes",
         "-o", "HostKeyAlias=airlock-target", "-o", "ConnectTimeout=60",
         f"{os.environ.get('USER') or 'root'}@{agent.instance_id}", command],
        input=stdin, capture_output=True, timeout=120, env=gateway.env(),
    )


def test_ssh_runs_a_command_over_ssh_proxy(gateway, agent, sshd):
    out = ssh(gateway, agent, sshd, "echo via-ssh-$((6*7)); uname -s")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["via-ssh-42", "Linux"]


def test_ssh_moves_data_both_ways_and_exit_status(gateway, agent, sshd):
    payload = os.urandom(8 * 1024 * 1024)
    out = ssh(gateway, agent, sshd, "sha256sum | cut -d' ' -f1; head -c 3000000 /dev/zero | wc -c",
              stdin=payload)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().split()
    assert lines == [hashlib.sha256(payload).hexdigest(), "3000000"]
    failed = ssh(gateway, agent, sshd, "exit 7")
    assert failed.returncode == 7, failed.stderr
