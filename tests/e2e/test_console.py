"""The browser console in real headless Chromium (Debian's), driven by
playwright-core from tests/e2e/console/driver.mjs against a real gateway and
agent on loopback."""

import json
import os
import re
import shutil
import subprocess
import urllib.request
import ssl
from pathlib import Path

import pytest

from conftest import ROOT, Agent, Gateway, LineReader, binary

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
    assert "script-src 'self';" in csp and "unsafe-eval" not in csp
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
