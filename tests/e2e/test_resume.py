"""Issue 5, resume without loss: a 50 MB random file streams out of a shell
session while the client's TCP connection is cut (through a real TCP proxy)
or the gateway is killed and restarted on the same port. The client and the
agent reattach by themselves; the bytes received must hash equal to the file.

The file crosses the PTY as one base64 line (`base64 -w0`), so the terminal
cannot rewrite any byte of it; the markers around it are computed by the
shell so the echoed command line never matches them."""

import base64
import hashlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REGION, LineReader, binary

FILE_BYTES = 50 * 1024 * 1024
ENCODED_BYTES = (FILE_BYTES + 2) // 3 * 4
# Cut / kill once this much of the encoded file has reached the client:
# well inside the transfer, so the resume happens mid stream.
CUT_AFTER = 16 * 1024 * 1024
TRANSFER_TIMEOUT = 600


def wait_until(predicate, timeout=60, interval=0.05, what="condition"):
    """Polls an observable condition with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} not reached before the deadline")


class CuttingProxy:
    """A TCP proxy in front of the gateway. Once `arm(n)` has been called,
    it cuts every connection it carries (both directions, at once) the
    first time n bytes have gone from the gateway to the client in total,
    then keeps accepting new connections."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.downstream = 0
        self.cut_at = None
        self.threshold = None
        self.accepted = 0
        self.closed = False
        # Client sockets whose connections silently drop everything.
        self.dark = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, threshold):
        with self.lock:
            self.threshold = self.downstream + threshold

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.accepted += 1
                self.conns.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, downstream):
        client = dst if downstream else src
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    dark = id(client) in self.dark
                if dark:
                    continue
                dst.sendall(data)
                if downstream:
                    with self.lock:
                        self.downstream += len(data)
                        due = (self.threshold is not None and self.cut_at is None
                               and self.downstream >= self.threshold)
                        if due:
                            self.cut_at = self.downstream
                    if due:
                        self.cut_all()
                        return
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_all(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for pair in conns:
            for s in pair:
                try:
                    # RST rather than FIN: an abrupt network failure.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()
        self.cut_all()

    def blackhole_existing(self):
        """Every connection carried so far goes on dropping all bytes, with
        no FIN and no RST, like a network path that died; new connections
        work."""
        with self.lock:
            self.dark.update(id(c) for c, _ in self.conns)

    def go_dark(self):
        """Stops for good: no new connections, and every carried one ended
        with a shutdown first, which also wakes the threads parked in recv
        (a bare close waits for them, so an idle connection would never
        see its RST)."""
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.cut_all()


@pytest.fixture
def random_file(workdir):
    path = Path(workdir) / "random.bin"
    data = os.urandom(FILE_BYTES)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def start_cat(gateway, target, endpoint, path, out_path, plugin_dir=None):
    """Starts `airlock start-session` (or, with `plugin_dir`, the AWS CLI
    with airlock as its session-manager-plugin) that base64-cats `path`;
    stdout goes to `out_path` so the test can watch it grow."""
    script = (f"stty -echo; echo BEGIN-$((40+2)); base64 -w0 {path}; "
              f"echo; echo END-$((40+3)); exit 0\n").encode()
    out = open(out_path, "wb")
    err = open(str(out_path) + ".err", "wb")
    env = gateway.env(AIRLOCK_LOG="airlock=info,airlock_client=info")
    if plugin_dir:
        env["PATH"] = plugin_dir + os.pathsep + os.environ["PATH"]
        argv = ["aws", "ssm", "start-session"]
    else:
        argv = [binary("airlock"), "start-session"]
    proc = subprocess.Popen(
        [*argv, "--target", target, "--endpoint-url", endpoint, "--region", REGION],
        stdin=subprocess.PIPE, stdout=out, stderr=err, env=env,
    )
    proc.stdin.write(script)
    proc.stdin.flush()
    return proc


def received(out_path):
    try:
        return os.path.getsize(out_path)
    except OSError:
        return 0


def assert_file_arrived(proc, out_path, sha, encoded_bytes=ENCODED_BYTES):
    try:
        code = proc.wait(timeout=TRANSFER_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = Path(str(out_path) + ".err").read_text(errors="replace")
    assert code == 0, err[-2000:]
    text = Path(out_path).read_bytes()
    begin = text.index(b"BEGIN-42")
    end = text.index(b"END-43")
    body = re.sub(rb"\s+", b"", text[begin + len(b"BEGIN-42"):end])
    assert len(body) == encoded_bytes, (len(body), encoded_bytes)
    data = base64.b64decode(body, validate=True)
    assert hashlib.sha256(data).hexdigest() == sha


def session_history(gateway):
    """(status, reason) of every recorded state change of the newest
    session, oldest first, read from the gateway's own store."""
    db = sqlite3.connect(f"file:{gateway.data_dir / 'gateway.db'}?mode=ro", uri=True)
    try:
        (sid,) = db.execute(
            "SELECT session_id FROM sessions ORDER BY start_ms DESC LIMIT 1").fetchone()
        return db.execute(
            "SELECT status, reason FROM session_events WHERE session_id = ? "
            "ORDER BY ts_ms, rowid", (sid,)).fetchall()
    finally:
        db.close()


def reasons(history):
    return [f"{status} | {reason}" for status, reason in history]


def test_client_tcp_cut_mid_cat_loses_nothing(gateway, agent, random_file, workdir):
    path, sha = random_file
    upstream = int(gateway.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(upstream)
    try:
        # StreamUrl is built from the Host header, so the websocket goes
        # through the proxy too.
        out_path = Path(workdir) / "cut.out"
        proc = start_cat(gateway, agent.instance_id, f"https://127.0.0.1:{proxy.port}",
                         path, out_path)
        wait_until(lambda: received(out_path) > 1024 * 1024 or proc.poll() is not None,
                   what="output starting")
        proxy.arm(CUT_AFTER)
        assert_file_arrived(proc, out_path, sha)
        assert proxy.cut_at is not None, "the proxy never cut the connection"
        assert proxy.cut_at < ENCODED_BYTES, "cut happened after the transfer"
        assert proxy.accepted >= 3, "client did not come back through the proxy"
    finally:
        proxy.close()
    history = reasons(session_history(gateway))
    lost = next(i for i, r in enumerate(history)
                if r.startswith("Disconnected | Disconnected: client connection lost"))
    assert history[lost + 1] == "Connected | Connected: client resumed", history
    assert history[-1].startswith("Terminated"), history


def test_aws_cli_plugin_mode_resumes_after_a_tcp_cut(gateway, agent, workdir):
    """The stock AWS CLI with airlock as session-manager-plugin: the plugin
    gets the endpoint in argv and resumes with ResumeSession by itself."""
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    path = Path(workdir) / "plugin.bin"
    path.write_bytes(data)
    plugin_dir = os.path.join(workdir, "plugin-bin")
    os.makedirs(plugin_dir)
    os.symlink(binary("airlock"), os.path.join(plugin_dir, "session-manager-plugin"))
    upstream = int(gateway.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(upstream)
    try:
        out_path = Path(workdir) / "plugin.out"
        proc = start_cat(gateway, agent.instance_id, f"https://127.0.0.1:{proxy.port}",
                         path, out_path, plugin_dir=plugin_dir)
        wait_until(lambda: received(out_path) > 256 * 1024 or proc.poll() is not None,
                   timeout=120, what="output starting")
        proxy.arm(2 * 1024 * 1024)
        assert_file_arrived(proc, out_path, hashlib.sha256(data).hexdigest(),
                            encoded_bytes=(size + 2) // 3 * 4)
        assert proxy.cut_at is not None, "the proxy never cut the connection"
    finally:
        proxy.close()
    history = reasons(session_history(gateway))
    assert "Connected | Connected: client resumed" in history, history


def restart_on_same_port(gateway, sig):
    """Stops the gateway with `sig` and starts it again on the port it had
    (bound as 127.0.0.1:0 the first time)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    gateway.proc.send_signal(sig)
    gateway.proc.wait(timeout=30)
    gateway.proc = subprocess.Popen(
        [binary("airlock-gateway"), "--data-dir", str(gateway.data_dir),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=open(gateway.data_dir.parent / "gateway.log", "ab"),
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
    )
    gateway.reader = LineReader(gateway.proc)
    url = gateway.reader.wait_for(r"listening on (\S+)").group(1)
    assert url == gateway.url


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_gateway_restart_mid_cat_loses_nothing(gateway, agent, random_file, workdir, sig):
    path, sha = random_file
    out_path = Path(workdir) / "restart.out"
    proc = start_cat(gateway, agent.instance_id, gateway.url, path, out_path)
    wait_until(lambda: received(out_path) > CUT_AFTER or proc.poll() is not None,
               timeout=TRANSFER_TIMEOUT, what="a third of the file received")
    assert proc.poll() is None, "transfer finished before the gateway restart"
    at_restart = received(out_path)
    restart_on_same_port(gateway, sig)
    assert_file_arrived(proc, out_path, sha)
    assert at_restart < ENCODED_BYTES
    history = reasons(session_history(gateway))
    restored = next(i for i, r in enumerate(history)
                    if r.startswith("Disconnected | Disconnected: gateway restarted"))
    assert any(r.startswith("Connected | Connected: ") for r in history[restored:]), history
    if sig == signal.SIGTERM:
        assert any("gateway shutting down" in r for r in history[:restored]), history
    assert history[-1].startswith("Terminated"), history
    sessions = gateway.client().describe_sessions(State="History")["Sessions"]
    assert sessions and sessions[0]["Status"] == "Terminated", sessions


def test_port_forward_connection_survives_gateway_kill(gateway, agent, workdir):
    """An open forwarded TCP connection keeps working across a kill -9 and
    restart of the gateway: neither the agent's TCP stream nor the client's
    listener is torn down, and bytes sent during the outage arrive."""
    from test_port_forwarding import EchoServer, Tunnel

    echo = EchoServer()
    tunnel = Tunnel(gateway, "start-session", "--target", agent.instance_id,
                    "--document-name", "AWS-StartPortForwardingSessionToRemoteHost",
                    "--parameters", f"host=127.0.0.1,portNumber={echo.port},localPortNumber=0")
    try:
        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=120) as s:
            def echoed(payload):
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = s.recv(65536)
                    assert chunk, "forwarded connection closed"
                    got += chunk
                return got

            before = os.urandom(256 * 1024)
            assert echoed(before) == before
            port = int(gateway.url.rsplit(":", 1)[1])
            gateway.proc.kill()
            gateway.proc.wait(timeout=30)
            # Sent while no gateway is listening: the client buffers it.
            during = os.urandom(256 * 1024)
            s.sendall(during)
            gateway.proc = subprocess.Popen(
                [binary("airlock-gateway"), "--data-dir", str(gateway.data_dir),
                 "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.PIPE,
                stderr=open(gateway.data_dir.parent / "gateway.log", "ab"),
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
            )
            gateway.reader = LineReader(gateway.proc)
            gateway.reader.wait_for(r"listening on (\S+)")
            got = b""
            while len(got) < len(during):
                chunk = s.recv(65536)
                assert chunk, "forwarded connection closed across the restart"
                got += chunk
            assert got == during
            after = os.urandom(64 * 1024)
            assert echoed(after) == after
        assert echo.connections == 1
        assert tunnel.proc.poll() is None, "the tunnel exited"
    finally:
        tunnel.close()
        echo.close()


def test_agent_restart_fails_the_sessions_it_lost_at_once(gateway, agent):
    """A restarted agent says which sessions it runs (none); the gateway
    fails the one it lost at once instead of waiting out the 2-minute
    resume window, and the client exits 251 with the reason."""
    from test_recordings import Interactive, last_session

    sess = Interactive(gateway, agent.instance_id)
    try:
        sess.send("echo alive-$((2*3))")
        sess.wait_output("alive-6")
        agent.stop(signal.SIGKILL)
        started = time.monotonic()
        agent.start()
        code = sess.proc.wait(timeout=30)
        assert time.monotonic() - started < 30
        err = sess.proc.stderr.read().decode(errors="replace")
        assert code == 251, (code, err)
        assert "no longer runs this session" in err, err
        s = last_session(gateway, agent.instance_id)
        assert s["Status"] == "Failed", s
    finally:
        if sess.proc.poll() is None:
            sess.proc.kill()
    # The restarted agent takes new sessions.
    out = subprocess.run(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--endpoint-url", gateway.url, "--region", REGION],
        input=b"echo again-$((3*3)); exit 0\n", capture_output=True, env=gateway.env(), timeout=60,
    )
    assert out.returncode == 0 and b"again-9" in out.stdout, (out.stdout, out.stderr)


def test_client_gives_up_after_the_gateway_resume_window(workdir):
    """StartSession tells an Airlock client the gateway's resume window
    (5 s here): cut off from the gateway entirely, the client stops trying
    after that, not after the 120 s it assumes when nobody says."""
    from conftest import Agent
    from test_session_limits import ConfigGateway

    gw = ConfigGateway(Path(workdir) / "rw", "[sessions]\nresume_window_secs = 5\n")
    try:
        ag = Agent(gw, workdir, name="rw-agent")
        proxy = CuttingProxy(int(gw.url.rsplit(":", 1)[1]))
        try:
            proc = subprocess.Popen(
                [binary("airlock"), "start-session", "--target", ag.instance_id,
                 "--endpoint-url", f"https://127.0.0.1:{proxy.port}", "--region", REGION],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=gw.env(),
            )
            reader = LineReader(proc)
            proc.stdin.write(b"echo up-$((1+1))\n")
            proc.stdin.flush()
            reader.wait_for(r"up-2\s*$")
            proxy.go_dark()
            cut = time.monotonic()
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail(proc.stderr.read().decode(errors="replace")[-3000:])
            waited = time.monotonic() - cut
            err = proc.stderr.read().decode(errors="replace")
            assert code == 255, (code, err)
            assert "could not reconnect within 5s" in err, err
            assert waited < 60, waited
        finally:
            proxy.close()
            if proc.poll() is None:
                proc.kill()
            ag.stop()
    finally:
        gw.stop()


def test_silently_dropped_connection_is_noticed_and_resumed(workdir):
    """A path that drops packets without a reset: the client's keepalive
    (1 s here) notices the silence, resumes through a new connection, and
    the shell goes on."""
    from conftest import Agent
    from test_session_limits import ConfigGateway

    gw = ConfigGateway(Path(workdir) / "ka", "")
    try:
        ag = Agent(gw, workdir, name="ka-agent")
        proxy = CuttingProxy(int(gw.url.rsplit(":", 1)[1]))
        proc = subprocess.Popen(
            [binary("airlock"), "start-session", "--target", ag.instance_id,
             "--endpoint-url", f"https://127.0.0.1:{proxy.port}", "--region", REGION],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**gw.env(), "AIRLOCK_KEEPALIVE_SECS": "1"},
        )
        try:
            reader = LineReader(proc)
            proc.stdin.write(b"echo before-$((1+1))\n")
            proc.stdin.flush()
            reader.wait_for(r"before-2\s*$")
            accepted = proxy.accepted
            proxy.blackhole_existing()
            wait_until(lambda: proxy.accepted > accepted, timeout=30,
                       what="the client reconnecting")
            proc.stdin.write(b"echo after-$((2+3)); exit 0\n")
            proc.stdin.flush()
            reader.wait_for(r"after-5\s*$", timeout=60)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proxy.close()
            ag.stop()
    finally:
        gw.stop()
    history = reasons(session_history(gw))
    assert any(r.startswith("Connected | Connected: client resumed") for r in history), history
