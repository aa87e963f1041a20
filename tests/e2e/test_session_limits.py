"""Issue 5: the concurrent-session limit, stale sessions, idle timeout and
maximum session duration, against real gateway, agent and airlock
processes. Gateways with a non-default `[sessions]` config are started by
`make_gateway` (a `--config FILE` variant of the conftest Gateway)."""

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import REGION, Agent, Gateway, LineReader, binary
from portutil import HashSink, Tunnel

LIMIT_MESSAGE = re.compile(
    r"^Unable to start new sessions because the maximum session limit of (\d+) has been "
    r"reached for target (mi-[0-9a-f]{17}); active sessions: ((?:admin-[0-9a-f]{17}(?:, )?)+) "
    r"\(terminate one with TerminateSession\)$"
)


def wait_until(predicate, timeout=30, interval=0.1, what="condition"):
    """Polls an observable condition with a deadline; returns its first truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} not reached before the deadline")


class ConfigGateway(Gateway):
    """The conftest Gateway, started with `--config <dir>/gateway.toml`."""

    def __init__(self, tmp, config_text):
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


@pytest.fixture
def make_gateway(workdir):
    """Starts a gateway with the given TOML config plus a registered agent."""
    started = []

    def make(config_text):
        n = len(started)
        gw = ConfigGateway(Path(workdir) / f"cfg{n}", config_text)
        started.append(gw)
        ag = Agent(gw, workdir, name=f"cfg{n}-agent")
        started.append(ag)
        return gw, ag

    yield make
    for proc in reversed(started):
        proc.stop()


def start_shell(gw, target):
    """`airlock start-session` with piped stdin kept open; stdout read by a LineReader."""
    proc = subprocess.Popen(
        [binary("airlock"), "start-session", "--target", target,
         "--endpoint-url", gw.url, "--region", REGION],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gw.env(),
    )
    return proc, LineReader(proc)


def send(proc, text):
    proc.stdin.write(text.encode())
    proc.stdin.flush()


def sessions(ssm, state, target):
    return ssm.describe_sessions(State=state, Filters=[{"key": "Target", "value": target}])["Sessions"]


def session(ssm, state, session_id):
    found = ssm.describe_sessions(State=state, Filters=[{"key": "SessionId", "value": session_id}])
    return next(iter(found["Sessions"]), None)


def limit_error(call):
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    e = err.value.response
    assert e["Error"]["Code"] == "SessionLimitExceeded", e
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 400
    return e["Error"]["Message"]


def test_hundred_racing_start_sessions_yield_exactly_the_limit(gateway, agent):
    key, secret = gateway.admin_keys()
    ssm = boto3.client(
        "ssm", endpoint_url=gateway.url, region_name=REGION,
        aws_access_key_id=key, aws_secret_access_key=secret, verify=gateway.ca_bundle,
        config=Config(retries={"max_attempts": 1}, max_pool_connections=100),
    )
    for round_no in range(3):
        barrier = threading.Barrier(100)
        results = [None] * 100

        def call(i):
            barrier.wait()
            try:
                results[i] = ("ok", ssm.start_session(Target=agent.instance_id)["SessionId"])
            except botocore.exceptions.ClientError as e:
                r = e.response
                results[i] = ("err", r["Error"]["Code"], r["Error"]["Message"],
                              r["ResponseMetadata"]["HTTPStatusCode"])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        created = [r[1] for r in results if r and r[0] == "ok"]
        refused = [r for r in results if r and r[0] == "err"]
        assert len(created) == 2, (round_no, created, refused[:3])
        assert len(refused) == 98, (round_no, [r for r in results if not r or r[0] != "err"])
        for _, code, message, status in refused:
            assert (code, status) == ("SessionLimitExceeded", 400), (code, message)
            m = LIMIT_MESSAGE.match(message)
            assert m, message
            assert m.group(1) == "2" and m.group(2) == agent.instance_id
            assert set(m.group(3).split(", ")) == set(created), message
        active = [s["SessionId"] for s in sessions(ssm, "Active", agent.instance_id)
                  if s["Status"] in ("Connecting", "Connected", "Disconnected")]
        assert sorted(active) == sorted(created)
        for sid in created:
            ssm.terminate_session(SessionId=sid)
        wait_until(lambda: not sessions(ssm, "Active", agent.instance_id), what="no active sessions")
        for sid in created:
            s = session(ssm, "History", sid)
            assert s["Status"] == "Terminated"
            assert s["Details"] == "Terminated: Session terminated by TerminateSession.", s


def test_stale_session_frees_its_slot_after_resume_window(make_gateway):
    gw, ag = make_gateway("[sessions]\nmax_per_target = 1\nresume_window_secs = 3\n")
    ssm = gw.client()
    proc, out = start_shell(gw, ag.instance_id)
    try:
        send(proc, "echo ready-$((40+2))\n")
        out.wait_for(r"ready-42", timeout=30)
        (sid,) = [s["SessionId"] for s in sessions(ssm, "Active", ag.instance_id)]
        # The client vanishes without TerminateSession (no close handshake).
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    s = wait_until(lambda: (x := session(ssm, "Active", sid)) and x["Status"] == "Disconnected" and x,
                   what="Disconnected")
    assert s["Details"].startswith("Disconnected: client connection lost"), s
    # Still holding its slot during the resume window.
    message = limit_error(lambda: ssm.start_session(Target=ag.instance_id))
    assert "maximum session limit of 1" in message and sid in message, message
    ended = wait_until(lambda: session(ssm, "History", sid), what="stale session reaped")
    assert ended["Status"] == "Terminated"
    assert ended["Details"] == "Terminated: client disconnected and did not resume within 3s", ended
    # The slot is free again.
    new = ssm.start_session(Target=ag.instance_id)["SessionId"]
    ssm.terminate_session(SessionId=new)


def test_idle_timeout_closes_an_idle_shell_but_not_a_busy_one(make_gateway):
    gw, ag = make_gateway("[sessions]\nidle_timeout_secs = 3\n")
    ssm = gw.client()
    proc, out = start_shell(gw, ag.instance_id)
    try:
        # Busy for ~5 s (> the 3 s idle timeout): output keeps it alive.
        send(proc, "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick$i; sleep 0.5; done; echo busy-$((2+3))\n")
        out.wait_for(r"busy-5", timeout=30)
        # Now idle: the gateway closes it.
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Session idle timeout reached" in stderr, stderr
    # Warned first (half the timeout early, as the timeout is short), once.
    warning = "This session will be closed in 1s because it has been idle"
    assert stderr.count(warning) == 1, stderr
    assert stderr.index(warning) < stderr.index("Session idle timeout reached"), stderr
    (s,) = sessions(ssm, "History", ag.instance_id)
    assert s["Status"] == "Terminated"
    assert s["Details"] == "Terminated: idle timeout after 3s", s
    # Every state change is in the audit log too, in order, with its reason.
    audit = [json.loads(line) for line in (gw.data_dir / "audit.log").read_text().splitlines()]
    states = [(e["status"], e["reason"]) for e in audit
              if e.get("event") == "session_state" and e["session_id"] == s["SessionId"]]
    assert [st for st, _ in states][0] == "Connecting", states
    assert "Connected" in [st for st, _ in states], states
    assert states[-1] == ("Terminated", "Terminated: idle timeout after 3s"), states


def test_port_forward_moving_data_one_way_is_never_idle(make_gateway):
    """Idle time counts traffic in both directions: a forward that only
    uploads (the destination never answers) outlives the idle timeout, then
    closes with a warning once it stops."""
    gw, ag = make_gateway("[sessions]\nidle_timeout_secs = 3\n")
    ssm = gw.client()
    sink = HashSink()
    tunnel = Tunnel(gw, "start-session", "--target", ag.instance_id,
                    "--document-name", "AWS-StartPortForwardingSession",
                    "--parameters", f"portNumber={sink.port},localPortNumber=0")
    try:
        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=30) as conn:
            deadline = time.monotonic() + 6  # twice the idle timeout
            while time.monotonic() < deadline:
                conn.sendall(b"x" * 1024)
                time.sleep(0.4)
            assert tunnel.proc.poll() is None, "a busy forward was closed as idle"
            assert session(ssm, "Active", tunnel.session_id)["Status"] == "Connected"
            # Quiet now: warned, then closed.
            tunnel.proc.wait(timeout=30)
        stderr = tunnel.proc.stderr.read().decode(errors="replace")
        assert "because it has been idle" in stderr, stderr
    finally:
        tunnel.close()
        sink.close()
    s = session(ssm, "History", tunnel.session_id)
    assert s["Details"] == "Terminated: idle timeout after 3s", s


def test_max_session_duration_closes_a_busy_session_with_a_message(make_gateway):
    gw, ag = make_gateway("[sessions]\nmax_session_duration_secs = 3\n")
    ssm = gw.client()
    proc, out = start_shell(gw, ag.instance_id)
    try:
        send(proc, "while true; do echo alive-$((1+1)); sleep 0.3; done\n")
        out.wait_for(r"alive-2", timeout=30)
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Session reached its maximum duration of 3s" in stderr, stderr
    (s,) = sessions(ssm, "History", ag.instance_id)
    assert s["Details"] == "Terminated: maximum session duration of 3s reached", s


def test_per_tag_limit_follows_instance_tags(make_gateway):
    gw, ag = make_gateway(
        '[sessions]\nmax_per_target = 2\n'
        '[[sessions.per_tag]]\nkey = "Environment"\nvalue = "prod"\nmax = 1\n'
    )
    ssm = gw.client()
    mi = ag.instance_id
    ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=mi,
                             Tags=[{"Key": "Environment", "Value": "prod"}])
    assert ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=mi)["TagList"] == [
        {"Key": "Environment", "Value": "prod"}]
    first = ssm.start_session(Target=mi)["SessionId"]
    message = limit_error(lambda: ssm.start_session(Target=mi))
    assert "maximum session limit of 1" in message and first in message, message
    ssm.remove_tags_from_resource(ResourceType="ManagedInstance", ResourceId=mi, TagKeys=["Environment"])
    second = ssm.start_session(Target=mi)["SessionId"]
    limit_error(lambda: ssm.start_session(Target=mi))
    for sid in (first, second):
        ssm.terminate_session(SessionId=sid)
