"""Helpers shared by the port-forwarding end-to-end tests: local TCP peers
(echo, hashing sink), free ports and an `airlock` tunnel process."""

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import threading

from pathlib import Path

from conftest import REGION, Gateway, LineReader, binary, plugin_env, stop

DOC_REMOTE = "AWS-StartPortForwardingSessionToRemoteHost"


def free_port():
    """A port that was free a moment ago, for servers that cannot bind :0
    themselves (PostgreSQL, sshd)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Server:
    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._handler = handler
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handler, args=(conn,), daemon=True).start()

    def close(self):
        self.sock.close()


class EchoServer(_Server):
    """Echoes every byte back on each accepted connection."""

    def __init__(self):
        super().__init__(self._echo)

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                conn.sendall(data)


class HashSink(_Server):
    """Reads until EOF, then answers `<bytes> <sha256 hex>\\n`: nothing is
    kept in memory, so gigabytes can pass."""

    def __init__(self):
        super().__init__(self._hash)

    @staticmethod
    def _hash(conn):
        with conn:
            digest = hashlib.sha256()
            total = 0
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                digest.update(data)
                total += len(data)
            conn.sendall(f"{total} {digest.hexdigest()}\n".encode())


def stream_random(port, total, chunk=1 << 20, timeout=600):
    """Sends `total` random bytes to 127.0.0.1:port, half-closes, and returns
    (sent sha256, reply line)."""
    digest = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        left = total
        while left:
            block = os.urandom(min(chunk, left))
            digest.update(block)
            s.sendall(block)
            left -= len(block)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            data = s.recv(4096)
            if not data:
                break
            reply += data
    return digest.hexdigest(), reply.decode().strip()


class Tunnel:
    """`airlock ARGS...`, waited on until every forward printed its ready line."""

    def __init__(self, gateway, *args, ready=1, env=None):
        self.proc = subprocess.Popen(
            [binary("airlock"), *args, "--endpoint-url", gateway.url, "--region", REGION],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env or gateway.env(),
        )
        self.out = LineReader(self.proc)
        self.ports = []
        self.sockets = []
        self.session_ids = []
        for _ in range(ready):
            try:
                match = self.out.wait_for(
                    r"(?:Port (\d+)|Unix socket (\S+)) opened for sessionId (\S+)\.")
            except EOFError as e:
                raise EOFError(f"{e}; stderr: {self.proc.stderr.read()!r}") from None
            except TimeoutError:
                # Not ready: no caller holds this process to stop it.
                stop(self.proc, signal.SIGKILL)
                raise
            if match.group(1):
                self.ports.append(int(match.group(1)))
            else:
                self.sockets.append(match.group(2))
            self.session_ids.append(match.group(3))
        self.port = self.ports[0] if self.ports else None
        self.session_id = self.session_ids[0]

    def close(self):
        stop(self.proc, signal.SIGINT)


# Each forward is one session; the default limit (2 per target) is too small
# for tests that hold several tunnels open at once.
PORT_GATEWAY_CONFIG = "[sessions]\nmax_per_target = 64\n"


class ConfigGateway(Gateway):
    """The conftest Gateway, started with `--config <dir>/gateway.toml`."""

    def __init__(self, tmp, config_text=PORT_GATEWAY_CONFIG):
        Path(tmp).mkdir(parents=True, exist_ok=True)
        self.config_path = Path(tmp) / "gateway.toml"
        self.config_path.write_text(config_text)
        super().__init__(tmp)

    def start(self):
        self.proc = subprocess.Popen(
            [binary("airlock-gateway"), "--config", str(self.config_path),
             "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir.parent / "gateway.log", "ab"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        self.reader = LineReader(self.proc)
        self.url = self.reader.wait_for(r"listening on (\S+)").group(1)
        self.ca_bundle = self.reader.wait_for(r"AWS_CA_BUNDLE=(\S+)").group(1)
        self.credentials_file = self.reader.wait_for(r"admin credentials: (\S+)").group(1)


@contextlib.contextmanager
def aws_cli_port_session(gateway, workdir, target, document, parameters):
    """`aws ssm start-session` with airlock as its session-manager-plugin:
    yields the local port once it is open, then ends the session with
    Ctrl-C and checks the exit status. The CLI runs in its own process
    group, so Ctrl-C reaches it and the plugin together, as a terminal
    would deliver it."""
    proc = subprocess.Popen(
        ["aws", "ssm", "start-session", "--target", target, "--document-name", document,
         "--parameters", parameters, "--endpoint-url", gateway.url, "--region", REGION],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=plugin_env(gateway, workdir), start_new_session=True,
    )
    try:
        out = LineReader(proc)
        yield int(out.wait_for(r"Port (\d+) opened for sessionId").group(1))
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop(proc)
