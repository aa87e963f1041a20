"""Issue 2: the core path, driven as a user would, with boto3, the AWS CLI
and the airlock CLI against a real gateway and agent."""

import os
import subprocess
import time

import botocore.exceptions
import pytest

from conftest import REGION, airlock, binary, plugin_env


def wait_until(predicate, timeout=30, interval=0.1):
    """Polls an observable condition (not a readiness sleep): returns the
    first truthy value or fails at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail("condition not reached before the deadline")


def instance_info(gateway, instance_id):
    ssm = gateway.client()
    infos = ssm.describe_instance_information()["InstanceInformationList"]
    return next(i for i in infos if i["InstanceId"] == instance_id)


def test_shell_round_trip_carries_remote_exit_code(gateway, agent):
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"echo marker-$((6*7)); uname -s; exit 3\n")
    stdout = out.stdout.decode(errors="replace")
    assert "marker-42" in stdout, (stdout, out.stderr)
    assert "Linux" in stdout
    assert out.returncode == 3, out.stderr


def test_aws_cli_start_session_uses_airlock_as_plugin(gateway, agent, workdir):
    env = plugin_env(gateway, workdir)
    version = subprocess.run(["session-manager-plugin", "--version"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == "1.2.700.0"
    out = subprocess.run(
        ["aws", "ssm", "start-session", "--target", agent.instance_id,
         "--endpoint-url", gateway.url, "--region", REGION],
        input=b"echo via-cli-$((40+2)); exit 0\n", capture_output=True, env=env, timeout=120,
    )
    stdout = out.stdout.decode(errors="replace")
    assert "via-cli-42" in stdout, (stdout, out.stderr)
    assert out.returncode == 0, out.stderr


def test_describe_sessions_history_shows_terminated(gateway, agent):
    out = airlock(gateway, "start-session", "--target", agent.instance_id, stdin=b"exit 0\n")
    assert out.returncode == 0, out.stderr
    ssm = gateway.client()

    def terminated():
        sessions = ssm.describe_sessions(State="History")["Sessions"]
        return [s for s in sessions if s["Target"] == agent.instance_id and s["Status"] == "Terminated"]

    session = wait_until(terminated)[0]
    assert session["SessionId"].startswith("admin-")
    assert session["Owner"].endswith(":user/admin")
    assert "EndDate" in session
    active = ssm.describe_sessions(State="Active")["Sessions"]
    assert session["SessionId"] not in [s["SessionId"] for s in active]


def test_instance_online_then_connection_lost_after_agent_killed(gateway, agent):
    info = instance_info(gateway, agent.instance_id)
    assert info["PingStatus"] == "Online"
    assert info["ResourceType"] == "ManagedInstance"
    assert info["PlatformType"] == "Linux"
    assert info["AgentVersion"]
    agent.stop(sig=9)
    wait_until(lambda: instance_info(gateway, agent.instance_id)["PingStatus"] == "ConnectionLost")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gateway.client().start_session(Target=agent.instance_id)
    assert err.value.response["Error"]["Code"] == "TargetNotConnected"


def test_wrong_secret_gets_invalid_signature(gateway):
    key, _ = gateway.admin_keys()
    ssm = gateway.client(key=key, secret="not-the-secret-at-all-0000000000000000000")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.describe_sessions(State="Active")
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_unknown_key_is_unrecognized(gateway):
    ssm = gateway.client(key="AKIAUNKNOWNKEY000000", secret="x" * 40)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.describe_sessions(State="Active")
    assert err.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_terminate_session_ends_shell_on_both_sides(gateway, agent):
    marker = "98765"
    proc = subprocess.Popen(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--endpoint-url", gateway.url, "--region", REGION],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gateway.env(),
    )
    proc.stdin.write(f"sleep {marker}\n".encode())
    proc.stdin.flush()
    ssm = gateway.client()

    def remote_sleep_running():
        ps = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
        return ps.returncode == 0

    wait_until(remote_sleep_running)
    session = wait_until(lambda: [s for s in ssm.describe_sessions(State="Active")["Sessions"]
                                  if s["Target"] == agent.instance_id])[0]
    ssm.terminate_session(SessionId=session["SessionId"])
    proc.wait(timeout=30)
    wait_until(lambda: not remote_sleep_running())
    history = ssm.describe_sessions(State="History")["Sessions"]
    assert any(s["SessionId"] == session["SessionId"] and s["Status"] == "Terminated" for s in history)


def test_gateway_files_holding_secrets_are_private(gateway):
    mode = os.stat(gateway.credentials_file).st_mode & 0o777
    assert mode == 0o600


def test_large_output_arrives_complete_and_in_order(gateway, agent):
    out = airlock(gateway, "start-session", "--target", agent.instance_id,
                  stdin=b"stty -echo; echo BEGIN-$((1+1)); seq 1 200000; echo END-$((2+2)); exit 0\n",
                  timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    body = text[text.index("BEGIN-2"):text.index("END-4")]
    numbers = [line.strip() for line in body.splitlines()[1:]]
    assert numbers == [str(n) for n in range(1, 200001)]
