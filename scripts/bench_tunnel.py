"""Driver for scripts/bench-tunnel (run that, not this).

Paths measured, each moving the same bytes from a socat sender reading a
sparse file to a sink process that counts them:
  direct   sender -> sink
  socat2   sender -> socat relay -> socat relay -> sink   (-b 131072)
  airlock  sender -> airlock forward -> gateway -> agent -> sink
Time is taken at the sink, from its first accept to the last EOF, so data
still buffered inside a relay is never counted as delivered. CPU is
utime+stime (+ reaped children, for socat's forked relays) of the relay
processes, read from /proc before and after each run."""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("AIRLOCK_BIN_DIR", ROOT / "target" / "release"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

SINK = r"""
import socket, sys, threading, time
expect = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(256)
print(srv.getsockname()[1], flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    conns = int(line)
    totals = [0] * conns
    first = [None]
    def drain(i, c):
        buf = bytearray(1 << 20)
        n = 0
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            n += k
        totals[i] = n
        c.close()
    threads = []
    for i in range(conns):
        c, _ = srv.accept()
        if first[0] is None:
            first[0] = time.monotonic()
        t = threading.Thread(target=drain, args=(i, c))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    print(sum(totals), time.monotonic() - first[0], min(totals), max(totals), flush=True)
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def listening(port):
    want = f":{port:04X} "
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(want.strip()) and cols[3] == "0A":
            return True
    return False


def cpu_seconds_each(pids):
    each = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            each.append(0.0)
            continue
        # utime stime cutime cstime (fields 14-17, counted from 1)
        each.append(sum(int(f) for f in fields[11:15]) / CLK_TCK)
    return each


def machine_ticks():
    """(idle, total) jiffies of all cores, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def rss_mib(pid, field="VmHWM"):
    """VmHWM: the most resident memory the process ever had; VmRSS: now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_line(proc, pattern, timeout=60):
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"process exited before {pattern!r}")
        m = regex.search(line.decode(errors="replace"))
        if m:
            return m
    raise SystemExit(f"timed out waiting for {pattern!r}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
        self.procs = []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p.args[0].endswith("airlock") else signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if os.environ.get("AIRLOCK_KEEP_TMP"):
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start_sink(self):
        self.sink = self.spawn([sys.executable, "-c", SINK, "0"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
        self.sink_port = int(self.sink.stdout.readline())

    def sparse(self, size):
        path = self.tmp / f"zero-{size}"
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)
            # Warm the page cache so the sender never waits for the disk.
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        return path

    def transfer(self, port, conns, cpu_pids):
        per = self.args.size_mib * (1 << 20) // conns
        src = self.sparse(per)
        self.sink.stdin.write(f"{conns}\n".encode())
        self.sink.stdin.flush()
        before = cpu_seconds_each(cpu_pids)
        ends_before = self.ends_cpu()
        idle_before, total_before = machine_ticks()
        senders = [subprocess.Popen(
            ["socat", "-u", "-b", "131072", f"OPEN:{src},rdonly", f"TCP:127.0.0.1:{port}"])
            for _ in range(conns)]
        for s in senders:
            if s.wait(timeout=600) != 0:
                raise SystemExit("sender failed")
        total, secs, lo, hi = self.sink.stdout.readline().split()
        total, secs = int(total), float(secs)
        if total != per * conns:
            raise SystemExit(f"sink got {total} bytes, expected {per * conns}")
        gb = total / 1e9
        each = [(a - b) / gb for a, b in zip(cpu_seconds_each(cpu_pids), before)]
        # How much of the machine sat idle: a path that leaves cores idle is
        # held back by something other than CPU (flow control, scheduling).
        idle_after, total_after = machine_ticks()
        idle = (idle_after - idle_before) / max(total_after - total_before, 1)
        ends = tuple((a - b) / gb for a, b in zip(self.ends_cpu(), ends_before))
        return total / secs, sum(each), int(lo), int(hi), each, idle, ends

    def ends_cpu(self):
        """CPU seconds of the senders (reaped children: the relays are reaped
        only at the end) and of the sink: the same programs on every path,
        so a difference is what a path makes them do."""
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return reaped.ru_utime + reaped.ru_stime, cpu_seconds_each([self.sink.pid])[0]

    def socat_relay(self, target_port):
        port = free_port()
        p = self.spawn(["socat", "-b", "131072",
                        f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                        f"TCP:127.0.0.1:{target_port}"])
        # Poll the kernel's socket table rather than connecting: a probe
        # connection would be relayed to the sink and counted there.
        deadline = time.monotonic() + 10
        while not listening(port):
            if time.monotonic() > deadline:
                raise SystemExit("socat relay did not start")
            time.sleep(0.02)
        return port, p

    def start_airlock(self, bin_dir=BIN, name="airlock"):
        """One gateway, agent and forwarding client from `bin_dir`, in their
        own directories (a second stack can run beside the first)."""
        BIN = bin_dir
        work = self.tmp / name
        work.mkdir(exist_ok=True)
        # BENCH_B_ENV="K=V,..." sets variables for the B stack's processes only
        # (e.g. TOKIO_WORKER_THREADS=1), to A/B a setting rather than a build.
        extra = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_B_ENV", "").split(",")
                     if "=" in kv) if name == "airlock-B" else {}
        cfg = work / "gateway.toml"
        cfg.write_text("[sessions]\nmax_per_target = 64\n")
        gw = self.spawn([str(BIN / "airlock-gateway"), "--config", str(cfg), "--data-dir",
                         str(work / "gw"), "--listen", "127.0.0.1:0",
                         *(["--insecure-http"] if self.args.no_tls else [])],
                        stdout=subprocess.PIPE, stderr=open(work / "gw.log", "wb"),
                        env={**os.environ, "RUST_LOG": "warn", **extra})
        url = wait_line(gw, r"listening on (\S+)").group(1)
        ca = None if self.args.no_tls else wait_line(gw, r"AWS_CA_BUNDLE=(\S+)").group(1)
        creds = wait_line(gw, r"admin credentials: (\S+)").group(1)
        text = Path(creds).read_text()
        key = re.search(r"aws_access_key_id\s*=\s*(\S+)", text).group(1)
        secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", text).group(1)
        ssm = boto3.client("ssm", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id=key, aws_secret_access_key=secret, verify=ca if ca else True,
                           config=Config(retries={"max_attempts": 1}))
        if self.args.encrypt:
            kms = boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                               aws_access_key_id=key, aws_secret_access_key=secret, verify=ca if ca else True,
                               config=Config(retries={"max_attempts": 1}))
            key_id = kms.create_key(Description="bench")["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName="alias/bench", TargetKeyId=key_id)
            ssm.create_document(
                Name="SSM-SessionManagerRunShell", DocumentType="Session",
                Content='{"schemaVersion":"1.0","sessionType":"Standard_Stream",'
                        '"inputs":{"kmsKeyId":"alias/bench","requireEncryption":true}}')
        act = ssm.create_activation(IamRole="AirlockManagedInstance")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **extra,
               **({"AWS_CA_BUNDLE": ca} if ca else {}), "AWS_SHARED_CREDENTIALS_FILE": creds,
               "AWS_CONFIG_FILE": str(work / "none"), "AWS_REGION": "us-east-1",
               "RUST_LOG": "warn"}
        out = subprocess.run([str(BIN / "airlock-agent"), "register", "--gateway", url,
                              "--activation-id", act["ActivationId"],
                              "--activation-code", act["ActivationCode"],
                              "--state-dir", str(work / "agent")],
                             env=env, capture_output=True, text=True, check=True)
        mi = re.search(r"Registered as (mi-[0-9a-f]{17})", out.stdout).group(1)
        agent = self.spawn([str(BIN / "airlock-agent"), "run", "--state-dir",
                            str(work / "agent")], stdout=subprocess.PIPE,
                           stderr=open(work / "agent.log", "wb"),
                           env={**env, "RUST_LOG": "info"})
        wait_line(agent, rf"agent {mi} connected")
        client = self.spawn([str(BIN / "airlock"), "forward", mi,
                             f"0:127.0.0.1:{self.sink_port}", "--endpoint-url", url,
                             "--region", "us-east-1"],
                            stdout=subprocess.PIPE, stderr=open(work / "client.log", "wb"),
                            env={**env, "AIRLOCK_LOG": "warn"})
        port = int(wait_line(client, r"Port (\d+) opened").group(1))
        return port, [gw.pid, agent.pid, client.pid]


def fmt_rate(bps):
    return f"{bps / 1e9:6.2f} GB/s ({bps * 8 / 1e9:5.1f} Gbit/s)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048, help="bytes per run (MiB)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per path; the median is kept")
    ap.add_argument("--conns", type=int, default=16, help="parallel connections figure")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--encrypt", action="store_true",
                    help="KMS end-to-end encryption on (kmsKeyId + requireEncryption)")
    ap.add_argument("--no-tls", action="store_true",
                    help="diagnostic: gateway on plain HTTP, to price TLS on the two legs")
    ap.add_argument("--compare-bin-dir", metavar="DIR",
                    help="also run a second tunnel from DIR's binaries ('airlock-B'), "
                         "interleaved with the first, for A/B comparisons")
    ap.add_argument("--perf", metavar="FILE",
                    help="only profile one airlock transfer with `perf record` into FILE")
    ap.add_argument("--perf-conns", type=int, default=1, metavar="N",
                    help="connections in the profiled transfer (default 1)")
    ap.add_argument("--perf-path", choices=["airlock", "socat2", "direct"], default="airlock",
                    help="the path whose transfer is profiled (default airlock)")
    ap.add_argument("--perf-sink", action="store_true",
                    help="profile the sink (its threads included) instead of the path's relays")
    args = ap.parse_args()
    if not (BIN / "airlock").exists():
        raise SystemExit(f"{BIN}/airlock missing: cargo build --release --bins")
    b = Bench(args)
    try:
        b.start_sink()
        hop2 = b.socat_relay(b.sink_port)
        hop1 = b.socat_relay(hop2[0])
        tunnel_port, tunnel_pids = b.start_airlock()
        paths = {
            "direct": (b.sink_port, []),
            "socat2": (hop1[0], [hop1[1].pid, hop2[1].pid]),
            "airlock": (tunnel_port, tunnel_pids),
        }
        if args.compare_bin_dir:
            paths["airlock-B"] = b.start_airlock(Path(args.compare_bin_dir), "airlock-B")
        if args.perf:
            port, pids = paths[args.perf_path]
            watched = [b.sink.pid] if args.perf_sink else pids
            perf = subprocess.Popen(["perf", *os.environ.get("BENCH_PERF_ARGS", "record -F 999 -g").split(),
                                     "-o", args.perf, "-p", ",".join(map(str, watched))])
            time.sleep(1)  # let perf attach; profiling only, nothing is timed here
            r = b.transfer(port, args.perf_conns, pids)
            perf.send_signal(signal.SIGINT)
            perf.wait()
            print(f"{args.perf_path} {args.perf_conns} conn {fmt_rate(r[0])} {r[1]:.2f} CPU-s/GB; "
                  f"profile in {args.perf}")
            return
        results = {}
        per_round = {}
        print(f"loopback, {os.cpu_count()} cores, {args.size_mib} MiB per run, "
              f"median of {args.rounds}; airlock: release build, "
              + ("plain HTTP to the gateway (--no-tls diagnostic), " if args.no_tls
                 else "TLS to the gateway, ")
              + ("KMS end-to-end encryption (requireEncryption)" if args.encrypt
                 else "no end-to-end encryption (--encrypt to enable)"))
        for conns in sorted({1, args.conns}):
            # Rounds interleave the paths (direct, socat2, airlock, direct, ...)
            # so a shift in the machine's load lands on all of them alike.
            all_runs = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, (port, pids) in paths.items():
                    all_runs[name].append(b.transfer(port, conns, pids))
            for name, (port, pids) in paths.items():
                runs = all_runs[name]
                rate = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                fair = min(r[2] / max(r[3], 1) for r in runs)
                results[(name, conns)] = rate
                per_round[(name, conns)] = [r[0] for r in runs]
                cpu_txt = f"{cpu:5.2f} CPU-s/GB" if pids else "      -       "
                # Per-process medians show which relay costs what (socat2's two
                # relays against the tunnel's client, gateway and agent).
                split = "/".join(f"{statistics.median(r[4][i] for r in runs):.2f}"
                                 for i in range(len(pids)))
                print(f"{name:9} {conns:2} conn  {fmt_rate(rate)}  {cpu_txt}  "
                      f"runs: {', '.join(f'{r[0] / 1e9:.2f}' for r in runs)} GB/s"
                      + (f"  min/max conn bytes {fair:.2f}" if conns > 1 else "")
                      + (f"  per process {split}" if pids else "")
                      + f"  idle {100 * statistics.median(r[5] for r in runs):.0f}%"
                      + "  senders/sink {:.2f}/{:.2f} CPU-s/GB".format(
                          *(statistics.median(r[6][i] for r in runs) for i in (0, 1))),
                      flush=True)
        for stack in ("airlock", "airlock-B"):
            if stack in paths:
                # Resident now (idle, after the last run) beside the peak: what
                # the allocator kept rather than what the transfers needed.
                print(f"{stack} peak RSS (VmHWM) after all runs, and resident now: " + ", ".join(
                    f"{name} {rss_mib(pid):.0f} MiB ({rss_mib(pid, 'VmRSS'):.0f} now)"
                    for name, pid in zip(("gateway", "agent", "client"), paths[stack][1])))
        print()
        for conns in sorted({1, args.conns}):
            a, s, d = (results[(n, conns)] for n in ("airlock", "socat2", "direct"))
            verdict = "meets" if a >= 0.6 * s else "BELOW"
            paired = statistics.median(
                x / y for x, y in zip(per_round[("airlock", conns)], per_round[("socat2", conns)]))
            print(f"{conns:2} conn: airlock/socat2 = {a / s:.2f} ({verdict} the 0.6 target; "
                  f"median of per-round ratios {paired:.2f}), "
                  f"airlock/direct = {a / d:.2f}, socat2/direct = {s / d:.2f}")
            if ("airlock-B", conns) in results:
                bb = results[("airlock-B", conns)]
                paired_b = statistics.median(
                    x / y for x, y in zip(per_round[("airlock-B", conns)], per_round[("airlock", conns)]))
                print(f"{conns:2} conn: airlock-B/socat2 = {bb / s:.2f}, airlock-B/airlock = {bb / a:.2f} "
                      f"(median of per-round ratios {paired_b:.2f})")
    finally:
        b.close()


if __name__ == "__main__":
    main()
