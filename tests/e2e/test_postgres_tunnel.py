"""Issue 6: a real PostgreSQL behind a tunnel: psql, pgbench with 16
clients, and the stock AWS CLI path with airlock as session-manager-plugin."""

import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from portutil import DOC_REMOTE, ConfigGateway, Tunnel, aws_cli_port_session, free_port


def pg_bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"{name} missing: run scripts/install/postgres.sh")
    return found[-1]


class Postgres:
    """initdb in a temp dir, started on a free loopback port with its unix
    socket directory in the same temp dir; stopped by pg_ctl."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="airlock-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        # initdb and postgres refuse to run as root.
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_pg:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            [*self.as_pg, pg_bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        self.port = free_port()
        subprocess.run(
            [*self.as_pg, pg_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"),
             "-w", "-t", "60", "-o",
             f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
             "-c max_connections=100",
             "start"],
            check=True, capture_output=True, timeout=120,
        )

    def stop(self):
        subprocess.run([*self.as_pg, pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture
def gateway(workdir):
    """Overrides conftest's: several tunnels per target at once."""
    gw = ConfigGateway(workdir)
    yield gw
    gw.stop()


def psql(port, sql):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-X", "-A", "-t",
         "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_psql_queries_through_forward(gateway, agent, postgres):
    tunnel = Tunnel(gateway, "forward", agent.instance_id, f"0:127.0.0.1:{postgres.port}")
    try:
        assert psql(tunnel.port, "select 40 + 2") == "42"
        psql(tunnel.port, "drop table if exists t; create table t (id int, v text)")
        psql(tunnel.port, "insert into t select g, repeat('x', 1000) from generate_series(1, 5000) g")
        assert psql(tunnel.port, "select count(*), sum(length(v)) from t") == "5000|5000000"
        # A large result set comes back intact (several MB through the tunnel).
        rows = psql(tunnel.port, "select id, v from t order by id").splitlines()
        assert len(rows) == 5000 and rows[-1] == "5000|" + "x" * 1000
    finally:
        tunnel.close()


def test_pgbench_16_clients(gateway, agent, postgres):
    tunnel = Tunnel(gateway, "forward", agent.instance_id, f"0:127.0.0.1:{postgres.port}")
    try:
        base = ["-h", "127.0.0.1", "-p", str(tunnel.port), "-U", "postgres"]
        init = subprocess.run(["pgbench", "-i", "-s", "1", *base, "postgres"],
                              capture_output=True, text=True, timeout=180)
        assert init.returncode == 0, init.stderr
        run = subprocess.run(["pgbench", "-c", "16", "-j", "4", "-T", "10", *base, "postgres"],
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr
        assert "number of clients: 16" in run.stdout, run.stdout
        assert re.search(r"number of failed transactions: 0 ", run.stdout), run.stdout
        done = int(re.search(r"number of transactions actually processed: (\d+)",
                             run.stdout).group(1))
        assert done > 0, run.stdout
    finally:
        tunnel.close()


def test_aws_cli_remote_host_document_with_airlock_plugin(gateway, agent, postgres, workdir):
    with aws_cli_port_session(gateway, workdir, agent.instance_id, DOC_REMOTE,
                              f"host=127.0.0.1,portNumber={postgres.port},localPortNumber=0") as port:
        assert psql(port, "select 'via-aws-cli'") == "via-aws-cli"
        assert psql(port, "select count(*) from generate_series(1, 100000)") == "100000"
