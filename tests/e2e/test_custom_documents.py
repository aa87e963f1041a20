"""Issue 6: custom Session documents of the port and command types, made
through the document API, run like the AWS documents they copy: with
`airlock start-session` and with the stock AWS CLI using airlock as its
session-manager-plugin. The client cannot tell a custom document's kind
from its name; it reads it from the agent's handshake (the SessionType
action), as the stock plugin does."""

import os
import signal
import socket
import subprocess

import pytest

from conftest import REGION, LineReader, binary, stop
from portutil import DOC_REMOTE, ConfigGateway, EchoServer, Tunnel, aws_cli_port_session


@pytest.fixture
def gateway(workdir):
    gw = ConfigGateway(workdir)
    yield gw
    gw.stop()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


def copy_document(gateway, source, name):
    ssm = gateway.client()
    content = ssm.get_document(Name=source)["Content"]
    ssm.create_document(Name=name, DocumentType="Session", DocumentFormat="JSON", Content=content)


def echo_round_trip(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_custom_port_document_with_airlock(gateway, agent, echo):
    copy_document(gateway, DOC_REMOTE, "Team-EchoTunnel")
    tunnel = Tunnel(gateway, "start-session", "--target", agent.instance_id,
                    "--document-name", "Team-EchoTunnel",
                    "--parameters", f"host=127.0.0.1,portNumber={echo.port},localPortNumber=0")
    try:
        payload = os.urandom(3 << 20)
        assert echo_round_trip(tunnel.port, payload) == payload
        # A second connection in the same session: multiplexed, as with the
        # AWS document.
        assert echo_round_trip(tunnel.port, b"again") == b"again"
    finally:
        tunnel.close()
    assert tunnel.proc.returncode == 0


def test_custom_port_document_through_the_aws_cli(gateway, agent, echo, workdir):
    copy_document(gateway, DOC_REMOTE, "Team-EchoTunnel")
    with aws_cli_port_session(gateway, workdir, agent.instance_id, "Team-EchoTunnel",
                              f"host=127.0.0.1,portNumber={echo.port},localPortNumber=0") as port:
        payload = os.urandom(1 << 20)
        assert echo_round_trip(port, payload) == payload


def start_command(gateway, agent, document, command, stdin=b""):
    return subprocess.run(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--document-name", document, "--parameters", f"command={command}",
         "--endpoint-url", gateway.url, "--region", REGION],
        input=stdin, capture_output=True, env=gateway.env(), timeout=60,
    )


def test_non_interactive_command_passes_bytes_unchanged(gateway, agent):
    """No terminal: the output comes back byte for byte (no \\r\\n), stderr
    merged, with the exit status; stdin is empty, so a command that reads
    it ends instead of waiting for input the protocol cannot close."""
    out = start_command(gateway, agent, "AWS-StartNonInteractiveCommand",
                        "cat; printf 'ONE\\nTWO\\n'; printf 'x\\ny\\n' >&2; exit 7",
                        stdin=b"typed\n")
    assert out.returncode == 7, out
    assert b"ONE\nTWO\n" in out.stdout and b"x\ny\n" in out.stdout, out
    assert b"\r" not in out.stdout.split(b"ONE", 1)[1], out
    assert b"typed" not in out.stdout, out


def test_interactive_command_runs_in_a_terminal(gateway, agent):
    out = start_command(gateway, agent, "AWS-StartInteractiveCommand",
                        "test -t 0 && echo tty-$((40+2)); exit 3")
    assert b"tty-42" in out.stdout, out
    assert out.returncode == 3, out


def test_custom_command_document_with_airlock(gateway, agent):
    copy_document(gateway, "AWS-StartNonInteractiveCommand", "Team-RunCommand")
    out = start_command(gateway, agent, "Team-RunCommand", "echo custom-$((40+2)); exit 5")
    assert b"custom-42" in out.stdout, out
    assert out.returncode == 5, out


def test_command_document_without_a_command_is_refused(gateway, agent):
    out = subprocess.run(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--document-name", "AWS-StartNonInteractiveCommand",
         "--endpoint-url", gateway.url, "--region", REGION],
        capture_output=True, env=gateway.env(), timeout=60,
    )
    assert out.returncode != 0
    assert b"InvalidParameters" in out.stderr and b"command is required" in out.stderr, out


def test_ctrl_c_ends_a_non_interactive_command(gateway, agent):
    """The command reads no input, so Ctrl-C (SIGINT) is the client's: it
    terminates the session, which stops the command, and exits 130."""
    proc = subprocess.Popen(
        [binary("airlock"), "start-session", "--target", agent.instance_id,
         "--document-name", "AWS-StartNonInteractiveCommand",
         "--parameters", "command=echo started; sleep 30; echo finished",
         "--endpoint-url", gateway.url, "--region", REGION],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=gateway.env(),
    )
    try:
        out = LineReader(proc)
        out.wait_for(r"^started$")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert "finished" not in out.seen
    finally:
        stop(proc, signal.SIGKILL)
    sessions = gateway.client().describe_sessions(State="History")["Sessions"]
    assert sessions[0]["Status"] == "Terminated", sessions
