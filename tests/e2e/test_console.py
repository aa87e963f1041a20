"""The browser console in real headless Chromium (Debian's), driven by
playwright-core from tests/e2e/console/driver.mjs against a real gateway and
agent on loopback."""

import base64
import hashlib
import json
import time
import os
import re
import shutil
import subprocess
import urllib.request
import ssl
from pathlib import Path

import pytest

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import REGION, ROOT, Agent, Gateway, LineReader, binary

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


def test_console_reconnects_with_resume_session(gateway, agent):
    r = drive(gateway, "reconnect", instanceId=agent.instance_id)
    assert r["resumed"]


def test_console_sessions_page_terminates(gateway, agent):
    ssm = gateway.client()
    sid = ssm.start_session(Target=agent.instance_id)["SessionId"]
    r = drive(gateway, "sessions", sessionId=sid)
    assert r["activeLeft"] == 0
    assert "Terminated" in r["historyRow"]


class LimitedGateway(Gateway):
    """A gateway allowing one session per target (`--config`)."""

    def start(self):
        config = self.data_dir.parent / "gateway.toml"
        config.write_text("[sessions]\nmax_per_target = 1\n")
        self.proc = subprocess.Popen(
            [binary("airlock-gateway"), "--config", str(config),
             "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir.parent / "gateway.log", "ab"),
        )
        self.reader = LineReader(self.proc)
        self.url = self.reader.wait_for(r"listening on (\S+)").group(1)
        self.ca_bundle = self.reader.wait_for(r"AWS_CA_BUNDLE=(\S+)").group(1)
        self.credentials_file = self.reader.wait_for(r"admin credentials: (\S+)").group(1)


def test_console_shows_session_limit_in_the_api_words(workdir):
    gw = LimitedGateway(workdir)
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


def signed_post(gateway, path, key, secret, service, body, target=None):
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target:
        headers["X-Amz-Target"] = target
    req = AWSRequest(method="POST", url=gateway.url + path, data=json.dumps(body), headers=headers)
    SigV4Auth(Credentials(key, secret), service, REGION).add_auth(req)
    ctx = ssl.create_default_context(cafile=gateway.ca_bundle)
    http_req = urllib.request.Request(req.url, data=req.body, headers=dict(req.headers), method="POST")
    with urllib.request.urlopen(http_req, context=ctx, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def write_recording(gateway, agent, session_id, events):
    """Writes a recording through the gateway's recordings API with the
    agent's own credentials, sealed as the recordings crate seals: chunk =
    "ALRC" | 1 | seq | prev link | nonce | AES-GCM(events, AAD = prefix ‖ sid)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    reg = json.loads((agent.state_dir / "registration.json").read_text())
    call = lambda body: signed_post(  # noqa: E731
        gateway, "/airlock/v1/recordings", reg["AccessKeyId"], reg["SecretAccessKey"], "ssmmessages", body)
    ctx = {"aws:ssm:SessionId": session_id, "aws:ssm:TargetId": agent.instance_id, "airlock:purpose": "recording"}
    dk = call({"Action": "GenerateDataKey", "SessionId": session_id, "EncryptionContext": ctx})
    key = base64.b64decode(dk["Plaintext"])
    header = json.dumps({
        "format": 1, "sessionId": session_id, "target": agent.instance_id, "owner": "admin",
        "kind": "shell", "width": 80, "height": 24, "started": int(time.time()), "recordInput": False,
        "kmsKeyId": dk["KeyId"], "encryptedDataKey": dk["CiphertextBlob"], "encryptionContext": ctx,
    }).encode()
    call({"Action": "PutHeader", "SessionId": session_id, "Data": base64.b64encode(header).decode()})
    prev = hashlib.sha256(b"airlock-recording-v1\0" + header).digest()
    for seq, chunk_events in enumerate(events):
        plain = b"".join(
            b"o" + int(t * 1e6).to_bytes(8, "big") + len(d).to_bytes(4, "big") + d
            for t, d in chunk_events
        )
        prefix = b"ALRC" + bytes([1]) + seq.to_bytes(8, "big") + prev
        nonce = os.urandom(12)
        chunk = prefix + nonce + AESGCM(key).encrypt(nonce, plain, prefix + session_id.encode())
        call({"Action": "PutChunk", "SessionId": session_id, "Seq": seq, "Data": base64.b64encode(chunk).decode()})
        prev = hashlib.sha256(prev + chunk).digest()
    end = json.dumps({"chunks": len(events), "finalHash": prev.hex(), "ended": int(time.time())}).encode()
    call({"Action": "PutEnd", "SessionId": session_id, "Data": base64.b64encode(end).decode()})


def test_console_plays_recording_and_search_seeks(gateway, agent):
    ssm = gateway.client()
    sid = ssm.start_session(Target=agent.instance_id)["SessionId"]
    ssm.terminate_session(SessionId=sid)
    write_recording(gateway, agent, sid, [
        [(0.5, b"$ echo hello\r\n"), (2.0, b"hello\r\n")],
        [(5.25, b"\x1b[1mneedle-XYZ\x1b[0m found\r\n"), (7.0, b"bye\r\n")],
    ])
    r = drive(gateway, "playback", sessionId=sid, query="needle-xyz")
    assert "hash chain verified" in r["status"], r["status"]
    assert "needle-XYZ found" in r["hits"][0], r["hits"]
    assert abs(r["seekedTo"] - 5.25) < 0.05, r
    assert r["cspViolations"] == [], r["cspViolations"]
    assert (ARTIFACTS / "console-playback.png").stat().st_size > 1000


def test_console_refuses_an_altered_recording(gateway, agent):
    ssm = gateway.client()
    sid = ssm.start_session(Target=agent.instance_id)["SessionId"]
    ssm.terminate_session(SessionId=sid)
    write_recording(gateway, agent, sid, [[(0.1, b"one\r\n")], [(0.2, b"two\r\n")]])
    # Alter one ciphertext byte of chunk 1 where the gateway stored it.
    [chunk] = [p for p in gateway.data_dir.rglob("000000000001.alrc") if sid in str(p)]
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    r = drive(gateway, "playbackRefused", sessionId=sid)
    assert r["error"] == "chunk 1 failed authentication (altered, or the wrong key)", r["error"]
    assert r["player"] == 0
