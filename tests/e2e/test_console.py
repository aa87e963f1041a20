"""The browser console in real headless Chromium (Debian's), driven by
playwright-core from tests/e2e/console/driver.mjs against a real gateway and
agent on loopback."""

import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import REGION, ROOT, Agent, airlock
from test_encrypted_sessions import PlainGateway, Tap, encrypt_sessions
from test_session_limits import ConfigGateway

DRIVER = Path(__file__).resolve().parent / "console" / "driver.mjs"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def drive(gateway, scenario, key=None, secret=None, timeout=180, **extra):
    if not Path(CHROMIUM).exists() or not shutil.which("node"):
        pytest.fail("chromium and node are required: run scripts/install/chromium.sh")
    admin_key, admin_secret = gateway.admin_keys()
    cfg = {
        "url": gateway.url,
        "accessKeyId": key or admin_key,
        "secret": secret or admin_secret,
        "artifacts": str(ARTIFACTS),
        **extra,
    }
    out = subprocess.run(
        ["node", str(DRIVER), scenario],
        env={**os.environ, "AIRLOCK_CONSOLE_TEST": json.dumps(cfg)},
        capture_output=True, text=True, timeout=timeout,
    )
    assert out.returncode == 0, f"driver failed:\n{out.stderr[-4000:]}\n{out.stdout[-2000:]}"
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def fetch(gateway, path):
    ctx = ssl.create_default_context(cafile=gateway.ca_bundle)
    with urllib.request.urlopen(gateway.url + path, context=ctx, timeout=10) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def test_console_assets_and_security_headers(gateway):
    status, headers, body = fetch(gateway, "/console/")
    assert status == 200
    assert b'<script type="module" src="app.js">' in body
    assert b"not built" not in body, "the gateway was built without the console"
    h = {k.lower(): v for k, v in headers.items()}
    csp = h["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "'unsafe-eval'" not in csp
    assert "'unsafe-inline'" not in csp.split("style-src-attr")[0]
    assert "default-src 'none'" in csp
    # The <style> nonce is fresh per response and matches the page's.
    nonce = re.search(r"'nonce-([A-Za-z0-9+/=]+)'", csp).group(1)
    assert f'name="airlock-style-nonce" content="{nonce}"'.encode() in body
    assert nonce not in fetch(gateway, "/console/")[1]["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert "set-cookie" not in h
    # No inline script anywhere in the page.
    assert b"<script>" not in body and b"onload=" not in body
    status, headers, js = fetch(gateway, "/console/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert len(js) > 10_000
    status, _, cfg = fetch(gateway, "/console/config.json")
    assert json.loads(cfg)["region"] == "us-east-1"
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(gateway, "/console/../gateway.db")
    assert e.value.code == 404


def test_console_shell_resize_exit_code(gateway, agent):
    ssm = gateway.client()
    ssm.add_tags_to_resource(
        ResourceType="ManagedInstance", ResourceId=agent.instance_id,
        Tags=[{"Key": "Env", "Value": "console-test"}],
    )
    r = drive(gateway, "shell", instanceId=agent.instance_id, tagFilter="Env=console-test")
    assert agent.instance_id in r["instanceRow"]
    assert "Online" in r["instanceRow"]
    assert "Env=console-test" in r["instanceRow"]
    assert r["sawAnswer"]
    assert r["copied"] == "42", r["copied"]
    assert r["pasted"]
    assert r["sizeAfter"]["cols"] > r["sizeBefore"]["cols"], r
    assert r["sizeAfter"]["rows"] > r["sizeBefore"]["rows"], r
    assert "exit code 3" in r["status"], r["status"]
    assert r["cspViolations"] == [], r["cspViolations"]
    assert (ARTIFACTS / "console-terminal.png").stat().st_size > 1000
    sessions = ssm.describe_sessions(State="History")["Sessions"]
    assert any(s["SessionId"] == r["sessionId"] for s in sessions)


def test_console_wrong_secret_shows_api_error(gateway):
    r = drive(gateway, "denied")
    assert r["error"].startswith("InvalidSignatureException: The request signature we calculated"), r["error"]
    assert r["stored"] is None


def test_console_sign_in_link_fragment(gateway, agent):
    key, secret = gateway.admin_keys()
    r = drive(gateway, "link", instanceId=agent.instance_id)
    assert r["whoami"] == key
    assert secret not in r["url"] and r["url"].endswith("/console/#/instances"), r["url"]


def test_airlock_console_link_signs_in_with_temporary_credentials(gateway, agent):
    key, secret = gateway.admin_keys()
    out = airlock(gateway, "console")
    assert out.returncode == 0, out.stderr
    link = out.stdout.decode().strip()
    assert link.startswith(f"{gateway.url}/console/#/signin?AccessKeyId=ASIA"), link
    assert secret not in link and key not in link
    assert b"treat it like a password" in out.stderr
    r = drive(gateway, "link", instanceId=agent.instance_id, link=link)
    assert r["whoami"].startswith("ASIA"), r["whoami"]
    assert "SecretAccessKey" not in r["url"], r["url"]
    # The lifetime is bounded by the gateway, in its own words.
    bad = airlock(gateway, "console", "--duration-seconds", "60")
    assert bad.returncode == 254, bad.stderr
    assert b"DurationSeconds must be an integer between 900 and 3600" in bad.stderr, bad.stderr


def test_console_reconnects_with_resume_session(gateway, agent):
    r = drive(gateway, "reconnect", instanceId=agent.instance_id)
    assert r["resumed"]


def test_console_sessions_page_terminates(gateway, agent):
    ssm = gateway.client()
    sid = ssm.start_session(Target=agent.instance_id)["SessionId"]
    r = drive(gateway, "sessions", sessionId=sid)
    assert r["activeLeft"] == 0
    assert "Terminated" in r["historyRow"]


# The gateway configs these tests start with (`test_session_limits.ConfigGateway`).
ONE_SESSION_PER_TARGET = "[sessions]\nmax_per_target = 1\n"
# Sessions idle for 3 s are closed; the warning comes 1 s before.
IDLE_AFTER_3S = "[sessions]\nidle_timeout_secs = 3\n"


def test_console_shows_the_idle_warning_before_the_close(workdir):
    gw = ConfigGateway(Path(workdir) / "idle", IDLE_AFTER_3S)
    try:
        ag = Agent(gw, workdir)
        try:
            r = drive(gw, "idleNotice", instanceId=ag.instance_id)
            assert r["warnings"] == 1, r
            assert 0 <= r["warningAt"] < r["closedAt"], r
            assert "Session ended" in r["status"], r
        finally:
            ag.stop()
    finally:
        gw.stop()


def test_console_shows_session_limit_in_the_api_words(workdir):
    gw = ConfigGateway(Path(workdir) / "limited", ONE_SESSION_PER_TARGET)
    try:
        ag = Agent(gw, workdir)
        try:
            first = gw.client().start_session(Target=ag.instance_id)["SessionId"]
            r = drive(gw, "startRefused", instanceId=ag.instance_id)
            assert r["error"].startswith(
                "SessionLimitExceeded: Unable to start new sessions because the maximum "
                f"session limit of 1 has been reached for target {ag.instance_id}"
            ), r["error"]
            assert first in r["error"]
        finally:
            ag.stop()
    finally:
        gw.stop()


def iam(gateway, action, **body):
    """One signed call to the gateway's admin API (AirlockIAM.*) as admin."""
    key, secret = gateway.admin_keys()
    req = AWSRequest(
        method="POST", url=gateway.url + "/airlock/v1/iam", data=json.dumps(body),
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"AirlockIAM.{action}"},
    )
    SigV4Auth(Credentials(key, secret), "iam", REGION).add_auth(req)
    ctx = ssl.create_default_context(cafile=gateway.ca_bundle)
    http_req = urllib.request.Request(req.url, data=req.body, headers=dict(req.headers), method="POST")
    with urllib.request.urlopen(http_req, context=ctx, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def test_console_denied_user_sees_access_denied(gateway, agent):
    iam(gateway, "CreateUser", UserName="viewer")
    iam(gateway, "PutUserPolicy", UserName="viewer", PolicyName="look-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
            "ssm:DescribeInstanceInformation", "ssm:ListTagsForResource", "ssm:DescribeSessions"]}],
    }))
    k = iam(gateway, "CreateAccessKey", UserName="viewer")["AccessKey"]
    r = drive(gateway, "startRefused", key=k["AccessKeyId"], secret=k["SecretAccessKey"],
              instanceId=agent.instance_id)
    assert r["error"].startswith(
        "AccessDeniedException: User: arn:aws:iam::"
    ), r["error"]
    assert ":user/viewer is not authorized to perform: ssm:StartSession on resource: " in r["error"], r["error"]
    assert "because no identity-based policy allows the ssm:StartSession action" in r["error"], r["error"]


def recorded_session(gateway, agent, stdin):
    """Runs a shell with the airlock CLI; the agent records it. Returns the
    session id once the recording is complete."""
    out = airlock(gateway, "start-session", "--target", agent.instance_id, stdin=stdin)
    assert out.returncode == 0, out.stderr
    sessions = gateway.client().describe_sessions(State="History")["Sessions"]
    sid = max(sessions, key=lambda s: s["StartDate"])["SessionId"]
    deadline = time.monotonic() + 60
    while True:
        ls = airlock(gateway, "recordings", "list")
        row = [l.split() for l in ls.stdout.decode().splitlines() if l.startswith(sid)]
        if row and row[0][4] == "yes":
            return sid
        assert time.monotonic() < deadline, f"recording of {sid} not complete: {ls.stdout!r} {ls.stderr!r}"
        time.sleep(0.2)


def test_console_plays_recording_and_search_seeks(gateway, agent):
    sid = recorded_session(gateway, agent, b"echo start\nsleep 1.5\necho needle-$((6*7))-XYZ\nexit 0\n")
    # The time of the output event holding the text, from the airlock CLI's
    # own (Rust) reader's asciicast export, to compare with the page.
    cast = Path(gateway.data_dir).parent / "rec.cast"
    exp = airlock(gateway, "recordings", "export", sid, "-o", str(cast))
    assert exp.returncode == 0, exp.stderr
    events = [json.loads(l) for l in cast.read_text().splitlines()[1:]]
    expected = next(t for t, code, data in events if code == "o" and "needle-42-XYZ" in data)
    assert expected > 1.0, events  # after the sleep: a real offset, not 0
    r = drive(gateway, "playback", sessionId=sid, query="needle-42-xyz")
    assert "hash chain verified" in r["status"], r["status"]
    assert "needle-42-XYZ" in r["hits"][0], r["hits"]
    assert abs(r["seekedTo"] - expected) < 0.002, (r["seekedTo"], expected)
    assert r["cspViolations"] == [], r["cspViolations"]
    assert (ARTIFACTS / "console-playback.png").stat().st_size > 1000


def test_console_refuses_an_altered_recording(gateway, agent):
    sid = recorded_session(gateway, agent, b"echo altered-$((1+1))\nexit 0\n")
    # Alter one ciphertext byte of chunk 0 where the gateway stored it.
    chunk = gateway.data_dir / "recordings" / sid / "chunks" / "000000000000.alrc"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    r = drive(gateway, "playbackRefused", sessionId=sid)
    assert r["error"] == "chunk 0 failed authentication (altered, or the wrong key)", r["error"]
    assert r["player"] == 0

def test_console_encrypted_session_relay_sees_no_plaintext(workdir):
    # Plain HTTP on loopback (still a secure context for WebCrypto) so a tap
    # between everyone and the gateway can read every byte.
    gw = PlainGateway(workdir)
    tap = Tap(int(gw.url.rsplit(":", 1)[1]))
    gw.url = f"http://127.0.0.1:{tap.port}"
    try:
        ag = Agent(gw, workdir)
        try:
            encrypt_sessions(gw)
            marker = "browser-sealed-marker"
            r = drive(gw, "encrypted", instanceId=ag.instance_id, marker=marker)
            assert r["encryptedBadge"]
            assert "exit code 4" in r["status"], r["status"]
            seen = tap.seen()
            assert b"TrentService.GenerateDataKey" in seen, "the browser's KMS call must cross the tap"
            assert b"input_stream_data" in seen and b"output_stream_data" in seen
            assert marker.encode() not in seen
            assert f"{marker}-42".encode() not in seen
        finally:
            ag.stop()
    finally:
        tap.close()
        gw.stop()
