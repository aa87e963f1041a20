"""End-to-end harness: starts the real gateway and agent binaries on
127.0.0.1:0 and waits on the readiness lines they print, never on sleeps.
Every process is stopped by its own PID when the fixture ends."""

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("AIRLOCK_BIN_DIR", ROOT / "target" / "debug"))
REGION = "us-east-1"
READY_TIMEOUT = 60


def binary(name):
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first")
    return str(path)


class LineReader:
    """Collects a process's stdout lines on a thread so tests can wait for a
    readiness line with a deadline."""

    def __init__(self, proc):
        self.lines = queue.Queue()
        self.seen = []
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc):
        for raw in proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern, timeout=READY_TIMEOUT):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line matching {pattern!r}; saw {self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"process exited before {pattern!r}; saw {self.seen[-20:]}")
            self.seen.append(line)
            match = regex.search(line)
            if match:
                return match


def plugin_env(gateway, workdir):
    """The gateway's environment with `airlock` first on PATH as
    `session-manager-plugin`, for the AWS CLI's start-session."""
    plugin_dir = os.path.join(workdir, "plugin-bin")
    os.makedirs(plugin_dir, exist_ok=True)
    link = os.path.join(plugin_dir, "session-manager-plugin")
    if not os.path.lexists(link):
        os.symlink(binary("airlock"), link)
    return gateway.env(PATH=plugin_dir + os.pathsep + os.environ["PATH"])


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Gateway:
    def __init__(self, tmp):
        self.data_dir = Path(tmp) / "gateway"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [binary("airlock-gateway"), "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir.parent / "gateway.log", "ab"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        self.reader = LineReader(self.proc)
        self.url = self.reader.wait_for(r"listening on (\S+)").group(1)
        self.ca_bundle = self.reader.wait_for(r"AWS_CA_BUNDLE=(\S+)").group(1)
        self.credentials_file = self.reader.wait_for(r"admin credentials: (\S+)").group(1)

    def env(self, **extra):
        env = {
            **os.environ,
            "AWS_CA_BUNDLE": self.ca_bundle,
            "AWS_SHARED_CREDENTIALS_FILE": self.credentials_file,
            "AWS_CONFIG_FILE": str(self.data_dir.parent / "no-aws-config"),
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_PROFILE": "default",
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(key, None)
        env.update(extra)
        return env

    def admin_keys(self):
        text = Path(self.credentials_file).read_text()
        key = re.search(r"aws_access_key_id\s*=\s*(\S+)", text).group(1)
        secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", text).group(1)
        return key, secret

    def client(self, service="ssm", key=None, secret=None):
        admin_key, admin_secret = self.admin_keys()
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key or admin_key,
            aws_secret_access_key=secret or admin_secret,
            verify=self.ca_bundle,
            config=Config(retries={"max_attempts": 1}),
        )

    def stop(self, sig=signal.SIGTERM):
        stop(self.proc, sig)


class Agent:
    def __init__(self, gateway, tmp, name="agent"):
        self.gateway = gateway
        self.state_dir = Path(tmp) / name
        ssm = gateway.client()
        activation = ssm.create_activation(IamRole="AirlockManagedInstance", DefaultInstanceName=name)
        out = subprocess.run(
            [
                binary("airlock-agent"), "register", "--gateway", gateway.url,
                "--activation-id", activation["ActivationId"],
                "--activation-code", activation["ActivationCode"],
                "--state-dir", str(self.state_dir),
            ],
            env=gateway.env(), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        self.instance_id = re.search(r"Registered as (mi-[0-9a-f]{17})", out.stdout).group(1)
        self.log = open(Path(tmp) / f"{name}.log", "ab")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [binary("airlock-agent"), "run", "--state-dir", str(self.state_dir), "--shell", "/bin/sh"],
            stdout=subprocess.PIPE, stderr=self.log, env=self.gateway.env(),
        )
        self.reader = LineReader(self.proc)
        self.reader.wait_for(rf"agent {self.instance_id} connected")

    def stop(self, sig=signal.SIGTERM):
        stop(self.proc, sig)


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="airlock-e2e-")
    yield path
    if os.environ.get("AIRLOCK_KEEP_TMP"):
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway(workdir):
    gw = Gateway(workdir)
    yield gw
    gw.stop()


@pytest.fixture
def agent(gateway, workdir):
    ag = Agent(gateway, workdir)
    yield ag
    ag.stop()


def airlock(gateway, *args, stdin=None, timeout=60, env=None):
    """Runs the airlock CLI to completion with stdin piped (not a TTY)."""
    return subprocess.run(
        [binary("airlock"), *args, "--endpoint-url", gateway.url, "--region", REGION],
        input=stdin, capture_output=True, timeout=timeout, env=env or gateway.env(),
    )
