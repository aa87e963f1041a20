"""Issue 6: port forwarding through a real gateway and agent, with a Python
TCP echo server standing in for the destination."""

import hashlib
import os
import signal
import socket
import subprocess
import threading

import pytest

from conftest import REGION, LineReader, binary, stop

DOC_REMOTE = "AWS-StartPortForwardingSessionToRemoteHost"


class EchoServer:
    """Echoes every byte back on each accepted connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tunnel:
    def __init__(self, gateway, *args):
        self.proc = subprocess.Popen(
            [binary("airlock"), *args, "--endpoint-url", gateway.url, "--region", REGION],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=gateway.env(),
        )
        self.out = LineReader(self.proc)
        match = self.out.wait_for(r"Port (\d+) opened for sessionId (\S+)\.")
        self.port = int(match.group(1))
        self.session_id = match.group(2)
        self.out.wait_for(r"Waiting for connections")

    def close(self):
        stop(self.proc, signal.SIGINT)


@pytest.fixture
def tunnel_to(gateway, agent):
    made = []

    def make(port, host="127.0.0.1"):
        t = Tunnel(gateway, "start-session", "--target", agent.instance_id,
                   "--document-name", DOC_REMOTE,
                   "--parameters", f"host={host},portNumber={port},localPortNumber=0")
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def round_trip(port, payload, results, index):
    digest = hashlib.sha256()
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        def writer():
            view = memoryview(payload)
            while view:
                n = s.send(view[:65536])
                view = view[n:]
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        while received < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        w.join(timeout=60)
    results[index] = (received, digest.hexdigest())


def test_concurrent_connections_echo_exactly(tunnel_to, echo):
    tunnel = tunnel_to(echo.port)
    size = 2 * 1024 * 1024
    payloads = [os.urandom(size) for _ in range(8)]
    results = [None] * len(payloads)
    threads = [threading.Thread(target=round_trip, args=(tunnel.port, p, results, i))
               for i, p in enumerate(payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    for payload, result in zip(payloads, results):
        assert result is not None, "a connection did not finish"
        assert result == (size, hashlib.sha256(payload).hexdigest())
    assert echo.connections == 8
    # The tunnel still serves new connections afterwards.
    again = [None]
    round_trip(tunnel.port, b"after", again, 0)
    assert again[0] == (5, hashlib.sha256(b"after").hexdigest())


def test_refused_dial_closes_the_connection_and_reports(tunnel_to):
    tunnel = tunnel_to(free_port())
    with socket.create_connection(("127.0.0.1", tunnel.port), timeout=30) as s:
        s.settimeout(30)
        try:
            s.sendall(b"hello")
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
    tunnel.out.wait_for(r"Connection to destination port failed", timeout=30)
    # The session survives a failed stream.
    assert tunnel.proc.poll() is None


def test_ctrl_c_exits_zero(tunnel_to, echo):
    tunnel = tunnel_to(echo.port)
    tunnel.proc.send_signal(signal.SIGINT)
    assert tunnel.proc.wait(timeout=15) == 0


def test_invalid_parameters_are_reported(gateway, agent):
    out = subprocess.run(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--document-name", DOC_REMOTE, "--parameters", "portNumber=80",
         "--endpoint-url", gateway.url, "--region", REGION],
        capture_output=True, timeout=30, env=gateway.env(),
    )
    assert out.returncode == 254
    assert b"InvalidParameters" in out.stderr and b"host" in out.stderr


def test_ssh_proxy_pipes_stdio(gateway, agent, echo):
    proc = subprocess.Popen(
        [binary("airlock"), "ssh-proxy", "--target", agent.instance_id,
         "--port", str(echo.port), "--endpoint-url", gateway.url, "--region", REGION],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=gateway.env(),
    )
    try:
        payload = os.urandom(300_000)
        proc.stdin.write(payload)
        proc.stdin.flush()
        got = b""
        while len(got) < len(payload):
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            got += chunk
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        proc.stdin.close()
        assert proc.wait(timeout=15) == 0
    finally:
        stop(proc)
