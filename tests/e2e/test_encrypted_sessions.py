"""Session preferences (the SSM document API for Session documents) and
end-to-end encrypted sessions: the client's GenerateDataKey, the agent's
Decrypt, the challenge round trip, and a relay tap showing that what the
shell prints never crosses the gateway in clear."""

import json
import os
import socket
import subprocess
import threading

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, Agent, Gateway, LineReader, airlock, binary, plugin_env
from test_kms import aws_cli, iam, make_user


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def prefs(**inputs):
    return json.dumps({
        "schemaVersion": "1.0",
        "description": "Session Manager preferences",
        "sessionType": "Standard_Stream",
        "inputs": inputs,
    })


def test_session_document_api(gateway):
    ssm = gateway.client()
    out = ssm.create_document(
        Name="SSM-SessionManagerRunShell", DocumentType="Session", DocumentFormat="JSON",
        Content=prefs(kmsKeyId="", runAsEnabled=False, idleSessionTimeout="20", s3BucketName="audit"),
    )["DocumentDescription"]
    assert out["DocumentVersion"] == "1" and out["DocumentType"] == "Session"
    with pytest.raises(ClientError) as e:
        ssm.create_document(Name="SSM-SessionManagerRunShell", DocumentType="Session", Content=prefs())
    assert code(e) == "DocumentAlreadyExists"

    upd = ssm.update_document(
        Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST",
        Content=prefs(kmsKeyId="alias/sessions", runAsEnabled=True, runAsDefaultUser="nobody",
                      shellProfile={"linux": "cd /tmp", "windows": ""}, maxSessionDuration="60"),
    )["DocumentDescription"]
    assert upd["DocumentVersion"] == "2" and upd["LatestVersion"] == "2"
    with pytest.raises(ClientError) as e:
        ssm.update_document(Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST",
                            Content=prefs(kmsKeyId="alias/sessions", runAsEnabled=True, runAsDefaultUser="nobody",
                                          shellProfile={"linux": "cd /tmp", "windows": ""}, maxSessionDuration="60"))
    assert code(e) == "DuplicateDocumentContent"

    # As in AWS, an update adds a version; the default stays until moved.
    got = ssm.get_document(Name="SSM-SessionManagerRunShell")
    assert got["DocumentVersion"] == "1"
    assert json.loads(got["Content"])["inputs"]["s3BucketName"] == "audit"
    latest = ssm.get_document(Name="SSM-SessionManagerRunShell", DocumentVersion="$LATEST")
    assert json.loads(latest["Content"])["inputs"]["kmsKeyId"] == "alias/sessions"

    ssm.update_document_default_version(Name="SSM-SessionManagerRunShell", DocumentVersion="2")
    d = ssm.describe_document(Name="SSM-SessionManagerRunShell")["Document"]
    assert d["DefaultVersion"] == "2" and d["LatestVersion"] == "2"
    with pytest.raises(ClientError) as e:
        ssm.update_document_default_version(Name="SSM-SessionManagerRunShell", DocumentVersion="7")
    assert code(e) == "InvalidDocumentVersion"

    names = [x["Name"] for x in ssm.list_documents(Filters=[{"Key": "DocumentType", "Values": ["Session"]}])["DocumentIdentifiers"]]
    assert "SSM-SessionManagerRunShell" in names and "AWS-StartPortForwardingSession" in names
    own = [x["Name"] for x in ssm.list_documents(Filters=[{"Key": "Owner", "Values": ["Self"]}])["DocumentIdentifiers"]]
    assert own == ["SSM-SessionManagerRunShell"]
    assert json.loads(ssm.get_document(Name="AWS-StartPortForwardingSession")["Content"])["sessionType"] == "Port"

    for bad, err in (
        (prefs(idleSessionTimeout="0"), "InvalidDocumentContent"),
        (prefs(bogusSetting="x"), "InvalidDocumentContent"),
        (prefs(requireEncryption=True), "InvalidDocumentContent"),
        ("{not json", "InvalidDocumentContent"),
        (json.dumps({"schemaVersion": "2.2", "sessionType": "Standard_Stream"}), "InvalidDocumentSchemaVersion"),
    ):
        with pytest.raises(ClientError) as e:
            ssm.create_document(Name="Custom-Prefs", DocumentType="Session", Content=bad)
        assert code(e) == err, bad
    with pytest.raises(ClientError) as e:
        ssm.create_document(Name="AWS-Mine", DocumentType="Session", Content=prefs())
    assert code(e) == "ValidationException"

    ssm.delete_document(Name="SSM-SessionManagerRunShell")
    with pytest.raises(ClientError) as e:
        ssm.delete_document(Name="SSM-SessionManagerRunShell")
    assert code(e) == "InvalidDocument"


def encrypt_sessions(gateway, **extra):
    """Creates a KMS key and points the Session Manager preferences at it."""
    kms = gateway.client("kms")
    key = kms.create_key(Description="session encryption")["KeyMetadata"]
    kms.create_alias(AliasName="alias/sessions", TargetKeyId=key["KeyId"])
    gateway.client().create_document(
        Name="SSM-SessionManagerRunShell", DocumentType="Session",
        Content=prefs(kmsKeyId="alias/sessions", **extra),
    )
    return key


def test_encrypted_shell_round_trip(gateway, agent):
    encrypt_sessions(gateway)
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"echo enc-$((6*7)); exit 3\n")
    stdout = out.stdout.decode(errors="replace")
    assert "enc-42" in stdout, (stdout, out.stderr)
    assert "This session is encrypted using AWS KMS." in out.stderr.decode(errors="replace")
    assert out.returncode == 3, out.stderr
    # The agent's kms:Decrypt was signed with its short-lived role key, not
    # its long-term registration key.
    events = [json.loads(line) for line in (gateway.data_dir / "audit.log").read_text().splitlines()]
    decrypts = [e for e in events if e.get("action") == "kms:Decrypt"
                and e["principal"].endswith(f"assumed-role/AirlockManagedInstance/{agent.instance_id}")]
    assert decrypts and all(e["access_key_id"].startswith("ASIA") for e in decrypts), decrypts


def test_encrypted_shell_through_aws_cli_plugin_mode(gateway, agent, workdir):
    encrypt_sessions(gateway)
    env = plugin_env(gateway, workdir)
    out = subprocess.run(
        [aws_cli(), "ssm", "start-session", "--target", agent.instance_id,
         "--endpoint-url", gateway.url, "--region", REGION],
        input=b"echo via-plugin-$((40+2)); exit 0\n", capture_output=True, env=env, timeout=120,
    )
    stdout = out.stdout.decode(errors="replace")
    assert "via-plugin-42" in stdout, (stdout, out.stderr)
    assert "This session is encrypted using AWS KMS." in stdout + out.stderr.decode(errors="replace")


def test_disabled_key_refuses_the_session_with_a_clear_error(gateway, agent):
    key = encrypt_sessions(gateway)
    gateway.client("kms").disable_key(KeyId=key["KeyId"])
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"echo should-not-run-$((1+1)); exit 0\n")
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode != 0
    assert "GenerateDataKey" in stderr and "DisabledException" in stderr, stderr
    assert "should-not-run-2" not in out.stdout.decode(errors="replace")


class Tap:
    """A TCP proxy between the gateway and everyone talking to it that
    records every byte, so a test can look at what the relay carried. It
    decodes websocket framing (client frames are masked) so that plain text
    inside frames would be visible."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.streams = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            for src, dst in ((down, up), (up, down)):
                buf = bytearray()
                with self.lock:
                    self.streams.append(buf)
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def seen(self):
        """Raw bytes plus unmasked websocket payloads of every stream."""
        with self.lock:
            streams = [bytes(b) for b in self.streams]
        out = bytearray()
        for s in streams:
            out += s
            out += ws_payloads(s)
        return bytes(out)

    def close(self):
        self.closed = True
        self.server.close()


def ws_payloads(stream):
    """Payloads of the websocket frames after an HTTP upgrade, unmasked."""
    head = stream.find(b"\r\n\r\n")
    if head < 0 or b"Upgrade" not in stream[:head] and b"upgrade" not in stream[:head]:
        return b""
    i, out = head + 4, bytearray()
    while i + 2 <= len(stream):
        b1 = stream[i + 1]
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = int.from_bytes(stream[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(stream[i:i + 8], "big"), i + 8
        mask = None
        if b1 & 0x80:
            mask, i = stream[i:i + 4], i + 4
        payload = stream[i:i + n]
        if mask:
            payload = bytes(c ^ mask[k % 4] for k, c in enumerate(payload))
        out += payload
        i += n
    return bytes(out)


class PlainGateway(Gateway):
    """The gateway on plain HTTP (loopback only), so a tap can read the bytes."""

    def start(self):
        self.proc = subprocess.Popen(
            [binary("airlock-gateway"), "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
             "--insecure-http"],
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir.parent / "gateway.log", "ab"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        self.reader = LineReader(self.proc)
        self.url = self.reader.wait_for(r"listening on (\S+)").group(1)
        self.ca_bundle = self.reader.wait_for(r"AWS_CA_BUNDLE=(\S+)").group(1)
        self.credentials_file = self.reader.wait_for(r"admin credentials: (\S+)").group(1)


@pytest.fixture
def tapped(workdir):
    gw = PlainGateway(workdir)
    tap = Tap(int(gw.url.rsplit(":", 1)[1]))
    # Everyone (agent registration and channels, the CLI, boto3) goes through the tap.
    gw.url = f"http://127.0.0.1:{tap.port}"
    yield gw, tap
    tap.close()
    gw.stop()


def test_relay_tap_never_sees_the_typed_and_echoed_marker(tapped, workdir):
    gw, tap = tapped
    agent = Agent(gw, workdir)
    try:
        # Control: without encryption the tap does see the marker, so the
        # tap works and the assertion below means something.
        out = airlock(gw, "start-session", "--target", agent.instance_id,
                      stdin=b"echo plain-visible-marker; exit 0\n")
        assert b"plain-visible-marker" in out.stdout, out.stderr
        assert b"plain-visible-marker" in tap.seen()

        encrypt_sessions(gw)
        marker = b"sealed-secret-marker"
        out = airlock(gw, "start-session", "--target", agent.instance_id,
                      stdin=b"echo " + marker + b"; exit 0\n")
        assert out.stdout.count(marker) >= 1, (out.stdout, out.stderr)
        assert b"This session is encrypted" in out.stderr
        seen = tap.seen()
        assert b"GenerateDataKey" in seen, "the tap must have carried the session"
        assert marker not in seen
    finally:
        agent.stop()


SESSION_STATEMENTS = [
    {"Effect": "Allow", "Action": ["ssm:StartSession", "ssm:TerminateSession", "ssm:ResumeSession"],
     "Resource": "*"},
]


def test_client_without_generate_data_key_gets_a_clear_error(gateway, agent):
    encrypt_sessions(gateway)
    ak, sk = make_user(gateway, "nokms", SESSION_STATEMENTS)
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"echo never-$((2+2)); exit 0\n",
                  env=gateway.env(AWS_ACCESS_KEY_ID=ak, AWS_SECRET_ACCESS_KEY=sk))
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode != 0
    assert "kms:GenerateDataKey" in stderr and "AccessDeniedException" in stderr, stderr
    assert b"never-4" not in out.stdout


def test_agent_without_decrypt_gets_a_clear_error(gateway, agent):
    encrypt_sessions(gateway)
    # The agents' role loses its KMS statement.
    iam(gateway, "DeleteRolePolicy", RoleName="AirlockManagedInstance", PolicyName="AirlockAgentExtras")
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"echo never-$((2+3)); exit 0\n")
    text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    assert "kms:Decrypt" in text and "AccessDeniedException" in text, text
    assert "never-5" not in text


def test_encrypted_port_forward_between_airlock_ends(tapped, workdir):
    from portutil import DOC_REMOTE, EchoServer, Tunnel

    gw, tap = tapped
    agent = Agent(gw, workdir)
    echo = EchoServer()
    tunnel = None
    try:
        encrypt_sessions(gw, requireEncryption=True)
        tunnel = Tunnel(gw, "start-session", "--target", agent.instance_id, "--document-name", DOC_REMOTE,
                        "--parameters", f"host=127.0.0.1,portNumber={echo.port},localPortNumber=0")
        marker = b"port-forwarded-secret-" + os.urandom(8).hex().encode()
        payload = marker * 2000 + os.urandom(300_000)
        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=60) as s:
            threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert bytes(got) == payload
        seen = tap.seen()
        assert b"GenerateDataKey" in seen
        assert marker not in seen
    finally:
        if tunnel:
            tunnel.close()
        echo.close()
        agent.stop()


def test_required_encryption_refuses_a_port_session_that_cannot_encrypt(gateway, agent):
    from portutil import DOC_REMOTE

    encrypt_sessions(gateway, requireEncryption=True)
    ak, sk = make_user(gateway, "nokmsport", SESSION_STATEMENTS)
    out = airlock(gateway, "start-session", "--target", agent.instance_id, "--document-name", DOC_REMOTE,
                  "--parameters", "host=127.0.0.1,portNumber=9,localPortNumber=0",
                  env=gateway.env(AWS_ACCESS_KEY_ID=ak, AWS_SECRET_ACCESS_KEY=sk), timeout=60)
    text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    assert out.returncode != 0, text
    assert "kms:GenerateDataKey" in text, text
    assert "Waiting for connections" not in text
