"""Dead paths and slow ones, under load through a port forward.

A network path that dies while the client is sending through a port
forward. Real packet loss, made with iptables rules that drop both
directions of the client's current connections to the gateway: no FIN, no
RST, nothing acknowledged, exactly what a dead link looks like to TCP.

The client's socket is full at that moment, so no keepalive ping can go
out; the client must learn from the kernel that nothing is being
acknowledged, reconnect and resume, and the sink must get every byte.
Before that check existed the client waited on the full socket until TCP
itself gave up, about fifteen minutes.

A slow path is the opposite case: the gateway's writes to the client wait
much longer than its write stall (1 s here), yet the client's TCP keeps
acknowledging, so the gateway must keep the socket rather than drop it and
have the session reconnect over and over."""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import types

import pytest

from conftest import Agent
from portutil import DOC_REMOTE, ConfigGateway, HashSink, Tunnel
from test_resume import reasons, session_history, wait_until

BEFORE_CUT = 16 << 20
AFTER_CUT = 128 << 20
# Keepalive 1 s: a dead path is given up on after 3 s without an ACK.
# The whole transfer gets far less than TCP's own fifteen minutes.
TRANSFER_TIMEOUT = 90


def iptables():
    path = shutil.which("iptables")
    if path is None:
        pytest.fail("iptables is missing: scripts/test-all installs it (apt-get install iptables)")
    return path


def busiest_connection(pid, remote_port):
    """Local port of `pid`'s established connection to remote_port that has
    sent the most bytes (a data channel, not an idle control channel)."""
    out = subprocess.run(
        ["ss", "-tnpiH", "state", "established", f"( dport = :{remote_port} )"],
        check=True, capture_output=True, text=True).stdout
    best = None
    local = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            local = int(line.split()[2].rsplit(":", 1)[1]) if f"pid={pid}," in line else None
            continue
        sent = re.search(r"bytes_sent:(\d+)", line)
        if local is not None and sent and (best is None or int(sent.group(1)) > best[1]):
            best = (local, int(sent.group(1)))
    return best[0] if best else None


class Blackhole:
    """Drops every packet of the given connections, both ways, until removed."""

    def __init__(self, server_port, client_ports):
        self.rules = []
        for port in client_ports:
            self.rules.append(["-p", "tcp", "--sport", str(port), "--dport", str(server_port),
                               "-j", "DROP"])
            self.rules.append(["-p", "tcp", "--sport", str(server_port), "--dport", str(port),
                               "-j", "DROP"])
        for rule in self.rules:
            subprocess.run([iptables(), "-w", "-I", "INPUT", *rule], check=True)

    def remove(self):
        for rule in self.rules:
            subprocess.run([iptables(), "-w", "-D", "INPUT", *rule], check=False)


class Source:
    """Serves one connection: `before` random bytes, then, once released,
    `after` more, then closes. Keeps the sha256 of what it sent."""

    def __init__(self, before, after):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.digest = hashlib.sha256()
        threading.Thread(target=self._serve, args=(before, after), daemon=True).start()

    def _serve(self, before, after):
        conn, _ = self.listener.accept()
        block = os.urandom(1 << 20)
        with conn:
            for i in range((before + after) >> 20):
                if i == before >> 20 and not self.release.wait(TRANSFER_TIMEOUT):
                    return
                conn.sendall(block)
                self.digest.update(block)

    def close(self):
        self.release.set()
        self.listener.close()


def client_sends(tunnel, cut):
    """Uploads through the forward, cutting after the first part; returns
    (bytes, sha256) sent and the sink's reply."""
    sink_reply = b""
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", tunnel.port), timeout=TRANSFER_TIMEOUT) as s:
        for i in range((BEFORE_CUT + AFTER_CUT) >> 20):
            if i == BEFORE_CUT >> 20:
                cut()
            s.sendall(block)
            digest.update(block)
        s.shutdown(socket.SHUT_WR)
        while not sink_reply.endswith(b"\n"):
            data = s.recv(4096)
            if not data:
                break
            sink_reply += data
    return f"{BEFORE_CUT + AFTER_CUT} {digest.hexdigest()}", sink_reply.decode().strip()


def agent_sends(tunnel, source, cut):
    """Downloads through the forward, cutting once the first part arrived."""
    digest = hashlib.sha256()
    got = 0
    with socket.create_connection(("127.0.0.1", tunnel.port), timeout=TRANSFER_TIMEOUT) as s:
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            digest.update(data)
            got += len(data)
            if got >= BEFORE_CUT and not source.release.is_set():
                cut()
                source.release.set()
    return f"{BEFORE_CUT + AFTER_CUT} {source.digest.hexdigest()}", f"{got} {digest.hexdigest()}"


@pytest.mark.parametrize("sender", ["client", "agent"])
def test_dead_path_under_load_is_noticed_and_the_forward_resumes(workdir, monkeypatch, sender):
    # Both ends' keepalive (the gateway's env() passes it on).
    monkeypatch.setenv("AIRLOCK_KEEPALIVE_SECS", "1")
    gw = ConfigGateway(os.path.join(workdir, "dead"))
    far_end = HashSink() if sender == "client" else Source(BEFORE_CUT, AFTER_CUT)
    ag = tunnel = hole = None
    try:
        ag = Agent(gw, workdir, name="dead-agent")
        tunnel = Tunnel(gw, "start-session", "--target", ag.instance_id,
                        "--document-name", DOC_REMOTE,
                        "--parameters", f"host=127.0.0.1,portNumber={far_end.port},localPortNumber=0")
        stderr = []
        threading.Thread(target=lambda: stderr.extend(tunnel.proc.stderr), daemon=True).start()
        gateway_port = int(gw.url.rsplit(":", 1)[1])
        sending_pid = tunnel.proc.pid if sender == "client" else ag.proc.pid
        cut_ports = []

        def cut():
            nonlocal hole
            port = wait_until(lambda: busiest_connection(sending_pid, gateway_port),
                              what="the sender's websocket to the gateway")
            cut_ports.append(port)
            hole = Blackhole(gateway_port, [port])

        if sender == "client":
            expected, got = client_sends(tunnel, cut)
        else:
            expected, got = agent_sends(tunnel, far_end, cut)
        assert got == expected
        # The connection now carrying the session is a new one.
        assert busiest_connection(sending_pid, gateway_port) not in cut_ports
        if sender == "client":
            tunnel.close()
            log = b"".join(stderr).decode(errors="replace")
        else:
            log = open(os.path.join(workdir, "dead-agent.log"), errors="replace").read()
        assert "acknowledged nothing sent" in re.sub(r"\x1b\[[0-9;]*m", "", log), log[-3000:]
    finally:
        if hole:
            hole.remove()
        for proc in (tunnel, ag):
            if proc:
                proc.close() if proc is tunnel else proc.stop()
        far_end.close()
        gw.stop()
    history = reasons(session_history(gw))
    resumed = "client resumed" if sender == "client" else "agent data channel reattached"
    assert any(resumed in r for r in history), history


class ThrottlingProxy:
    """A TCP proxy in front of the gateway that passes the gateway's bytes
    to the client at about 640 KB/s (16 KiB per 25 ms), with a small
    receive buffer toward the gateway so the gateway feels it at once."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            server.connect(self.upstream)
            self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server, 0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, 0.025), daemon=True).start()

    @staticmethod
    def _pump(src, dst, pause):
        try:
            while True:
                data = src.recv(16 << 10)
                if not data:
                    break
                dst.sendall(data)
                if pause:
                    time.sleep(pause)  # the link's pace, not a wait for readiness
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def test_a_slow_link_that_keeps_acknowledging_is_not_dropped(workdir):
    gw = ConfigGateway(os.path.join(workdir, "slow"),
                       "[sessions]\nmax_per_target = 8\n[limits]\nwrite_stall_secs = 1\n")
    total = 8 << 20
    source = Source(total, 0)
    source.release.set()
    proxy = ThrottlingProxy(int(gw.url.rsplit(":", 1)[1]))
    ag = tunnel = None
    try:
        ag = Agent(gw, workdir, name="slow-agent")
        # The client's API calls and its websocket (built from the Host
        # header) both go through the slow proxy.
        via_proxy = types.SimpleNamespace(url=f"https://127.0.0.1:{proxy.port}", env=gw.env)
        tunnel = Tunnel(via_proxy, "start-session", "--target", ag.instance_id,
                        "--document-name", DOC_REMOTE,
                        "--parameters", f"host=127.0.0.1,portNumber={source.port},localPortNumber=0")
        connections = proxy.accepted
        digest = hashlib.sha256()
        got = 0
        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=TRANSFER_TIMEOUT) as s:
            while data := s.recv(1 << 20):
                digest.update(data)
                got += len(data)
        assert f"{got} {digest.hexdigest()}" == f"{total} {source.digest.hexdigest()}"
        assert proxy.accepted == connections, "the client reconnected: the gateway dropped a slow socket"
    finally:
        for proc in (tunnel, ag):
            if proc:
                proc.close() if proc is tunnel else proc.stop()
        proxy.close()
        source.close()
        gw.stop()
    history = reasons(session_history(gw))
    assert not any("client resumed" in r for r in history), history
