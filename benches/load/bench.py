#!/usr/bin/env python3
"""The load benchmark's runs and report; start it with `benches/load/run`.

Every target runs for the whole benchmark, the proxy pinned to core 0. Each round
runs every scenario against every target in turn (the order rotates by round),
with oha pinned to core 1. A run records what oha saw (requests per second,
latency percentiles, status codes) and what the proxy process spent (user and
system CPU from /proc, over the run), and the medians over the rounds go in the
tables.
"""

import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "benches" / "load"
WORK = HERE / "work"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
# Offered loads of the open-loop runs, requests per second.
FIXED_RATE = int(os.environ.get("BENCH_FIXED_RATE", "2000"))
HANDSHAKE_RATE = int(os.environ.get("BENCH_HANDSHAKE_RATE", "300"))
LOGIN_RATE = int(os.environ.get("BENCH_LOGIN_RATE", "20"))
# Worker threads of both Rust proxies (nginx keeps one worker process).
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
# Only these scenarios (names from SCENARIOS, plus "login storm", separated by ";");
# all of them when unset.
ONLY = [name.strip() for name in os.environ.get("BENCH_SCENARIOS", "").split(";") if name.strip()]
OHA = os.environ.get("BENCH_OHA", "oha")
PORTCULLIS = os.environ.get("BENCH_PORTCULLIS", "portcullis")
PINGORA = os.environ.get("BENCH_PINGORA", "bare_pingora")
TICK = os.sysconf("SC_CLK_TCK")
PATH = "/bench/item"
EMAIL = "bench@example.com"
PASSWORD = "load benchmark passphrase"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"load: {what} does not listen on {port}; see {WORK}")


def fill(template, values):
    text = (HERE / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def descendants(pid):
    """pid and every process below it (nginx's workers)."""
    found = [pid]
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found.extend(descendants(int(child)))
    return found


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def pinned(cpu, args, **kwargs):
    return subprocess.Popen(["taskset", "-c", cpu, *args], **kwargs)


class Target:
    def __init__(self, name, url, pids, headers=()):
        self.name = name
        self.url = url
        self.pids = pids
        self.headers = list(headers)


def start_all(processes, wrap=()):
    """Starts the backend and every target; `wrap` goes before the two Rust proxies'
    commands (callgrind, for `instructions`)."""
    WORK.mkdir(parents=True, exist_ok=True)
    certificate, key = WORK / "localhost.pem", WORK / "localhost-key.pem"
    subprocess.run([PORTCULLIS, "certs", "dev", "--dir", str(WORK)], check=True,
                   stdout=subprocess.DEVNULL)
    body = "x" * 1024
    backend = f"127.0.0.1:{free_port()}"
    (WORK / "nginx-backend.conf").write_text(
        fill("nginx-backend.conf", {"WORK": WORK, "BACKEND": backend, "BODY": body}))
    subprocess.run(["taskset", "-c", LOAD_CPU, "nginx", "-c", str(WORK / "nginx-backend.conf"),
                    "-p", str(WORK)], check=True)
    wait_listening(int(backend.split(":")[1]), "the backend")
    processes.append(("nginx", WORK / "nginx-backend.conf"))

    targets = [Target("direct", f"http://{backend}", [])]

    port = free_port()
    (WORK / "nginx-proxy.conf").write_text(fill("nginx-proxy.conf", {
        "WORK": WORK, "LISTEN": f"127.0.0.1:{port}", "BACKEND": backend,
        "CERTIFICATE": certificate, "KEY": key}))
    subprocess.run(["taskset", "-c", PROXY_CPU, "nginx", "-c", str(WORK / "nginx-proxy.conf"),
                    "-p", str(WORK)], check=True)
    wait_listening(port, "nginx")
    processes.append(("nginx", WORK / "nginx-proxy.conf"))
    master = int((WORK / "proxy.pid").read_text())
    targets.append(Target("nginx", f"https://localhost:{port}", descendants(master)))

    port = free_port()
    log = open(WORK / "pingora.log", "w")
    pingora = pinned(PROXY_CPU, [*wrap, PINGORA, f"127.0.0.1:{port}", backend, str(certificate),
                                 str(key), str(THREADS)], stdout=log, stderr=log)
    processes.append(("process", pingora))
    wait_listening(port, "bare pingora")
    targets.append(Target("pingora", f"https://localhost:{port}", [pingora.pid]))

    port, admin = free_port(), free_port()
    config = WORK / "portcullis.toml"
    for stale in WORK.glob("bench.db*"):
        stale.unlink()
    (WORK / "token.key").write_text(os.urandom(32).hex())
    config.write_text(fill("portcullis.toml", {
        "WORK": WORK, "LISTEN": f"127.0.0.1:{port}", "ADMIN": f"127.0.0.1:{admin}",
        "BACKEND": backend, "CERTIFICATE": certificate, "KEY": key, "THREADS": THREADS,
        "POLICIES": HERE / "policies"}))
    cli = [PORTCULLIS]
    subprocess.run([*cli, "account", "add", "Bench", "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "user", "add", "--email", EMAIL, "--account", "Bench", "--role",
                    "account-admin", "--password-stdin", "--config", str(config)],
                   input=PASSWORD + "\n", text=True, check=True, stdout=subprocess.DEVNULL)
    token = subprocess.run([*cli, "token", "issue", "--user", EMAIL, "--config", str(config)],
                           check=True, capture_output=True, text=True).stdout.strip()
    log = open(WORK / "portcullis.log", "w")
    gateway = pinned(PROXY_CPU, [*wrap, PORTCULLIS, "run", "--config", str(config)], stdout=log,
                     stderr=log)
    processes.append(("process", gateway))
    wait_listening(port, "portcullis")
    targets.append(Target("portcullis", f"https://localhost:{port}", [gateway.pid],
                          [f"Authorization: Bearer {token}"]))
    return targets


def stop_all(processes):
    for kind, what in reversed(processes):
        if kind == "nginx":
            subprocess.run(["nginx", "-c", str(what), "-p", str(WORK), "-s", "quit"],
                           stderr=subprocess.DEVNULL)
        else:
            what.terminate()
            try:
                what.wait(10)
            except subprocess.TimeoutExpired:
                what.kill()


def oha(url, headers, extra, seconds=SECONDS):
    args = [OHA, "--no-tui", "--output-format", "json", "--insecure", "-z", f"{seconds}s",
            *extra]
    for header in headers:
        args += ["-H", header]
    done = subprocess.run(["taskset", "-c", LOAD_CPU, *args, url], capture_output=True,
                          text=True, timeout=seconds + 60)
    if done.returncode != 0:
        sys.exit(f"load: oha failed: {done.stderr}")
    return json.loads(done.stdout)


def measured(target, headers, extra, path=PATH):
    before = cpu_seconds(target.pids) if target.pids else None
    result = oha(target.url + path, headers, extra)
    after = cpu_seconds(target.pids) if target.pids else None
    summary = result["summary"]
    statuses = {int(k): v for k, v in result.get("statusCodeDistribution", {}).items()}
    answered = sum(statuses.values())
    percentiles = result.get("latencyPercentiles", {})
    return {
        "rps": summary.get("requestsPerSec") or 0.0,
        "p50_ms": (percentiles.get("p50") or 0.0) * 1000,
        "p99_ms": (percentiles.get("p99") or 0.0) * 1000,
        "answered": answered,
        "statuses": statuses,
        # Requests still in flight when the time is up are not failures.
        "errors": sum(count for error, count in result.get("errorDistribution", {}).items()
                      if "deadline" not in error),
        "cpu_us_per_request": (None if before is None or not answered
                               else (after - before) * 1e6 / answered),
        "rss_kib": rss_kib(target.pids) if target.pids else None,
    }


# (name, which targets, oha arguments, expected status, what it shows)
SCENARIOS = [
    ("keep-alive, max", None, ["-c", "32"], 200,
     "HTTP/1.1 keep-alive, 32 connections, as fast as it goes: throughput"),
    ("keep-alive, fixed", None,
     ["-c", "64", "-q", str(FIXED_RATE), "--latency-correction"], 200,
     f"HTTP/1.1 keep-alive at a fixed {FIXED_RATE}/s (open loop): latency"),
    ("handshake per request", ["nginx", "pingora", "portcullis"],
     ["-c", "16", "-q", str(HANDSHAKE_RATE), "--latency-correction", "--disable-keepalive"],
     200, f"a new TLS connection for every request, {HANDSHAKE_RATE}/s"),
    ("h2, max", ["nginx", "pingora", "portcullis"], ["--http2", "-c", "4", "-p", "16"], 200,
     "HTTP/2, 4 connections of 16 streams, as fast as it goes"),
    ("401 without a token", ["portcullis"],
     ["-c", "16", "-q", str(HANDSHAKE_RATE), "--latency-correction"], 401,
     f"the refusal path at {HANDSHAKE_RATE}/s (a 401 closes the connection)"),
]


def run_round(number, targets):
    records = []
    order = targets[number % len(targets):] + targets[:number % len(targets)]
    for name, only, extra, status, _ in SCENARIOS:
        if ONLY and name not in ONLY:
            continue
        for target in order:
            if only and target.name not in only:
                continue
            headers = [] if status == 401 else target.headers
            oha(target.url + PATH, headers, extra, seconds=1)  # warm
            record = measured(target, headers, extra)
            record.update(round=number, scenario=name, target=target.name, expected=status)
            records.append(record)
            print(f"  {name:<24} {target.name:<11} {record['rps']:>9.0f}/s  "
                  f"p50 {record['p50_ms']:6.2f} ms  p99 {record['p99_ms']:7.2f} ms  "
                  f"cpu {record['cpu_us_per_request'] or 0:6.1f} us/req  {record['statuses']}",
                  flush=True)
    # The login storm: Portcullis's proxied latency with bcrypt logins beside it.
    if ONLY and "login storm" not in ONLY:
        return records
    gateway = next(t for t in targets if t.name == "portcullis")
    login = json.dumps({"email": EMAIL, "password": PASSWORD})
    storm = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, OHA, "--no-tui", "--output-format", "json", "--insecure",
         "-z", f"{SECONDS + 2}s", "-c", "8", "-q", str(LOGIN_RATE), "-m", "POST",
         "-H", "Content-Type: application/json", "-d", login,
         gateway.url + "/api/requestAuthToken"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    record = measured(gateway, gateway.headers,
                      ["-c", "64", "-q", str(FIXED_RATE), "--latency-correction"])
    out, _ = storm.communicate(timeout=SECONDS + 60)
    logins = json.loads(out).get("statusCodeDistribution", {})
    record.update(round=number, scenario="keep-alive, fixed, login storm", target="portcullis",
                  expected=200, logins=logins)
    records.append(record)
    print(f"  {'login storm beside it':<24} portcullis  p50 {record['p50_ms']:6.2f} ms  "
          f"p99 {record['p99_ms']:7.2f} ms  logins {logins}", flush=True)
    return records


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(records):
    lines = []
    scenarios = [s[0] for s in SCENARIOS] + ["keep-alive, fixed, login storm"]
    cpu = {}
    for scenario in scenarios:
        rows = [r for r in records if r["scenario"] == scenario]
        if not rows:
            continue
        lines.append(f"\n**{scenario}**\n")
        lines.append("| target | requests/s | p50 ms | p99 ms | CPU µs/request | × pingora CPU | RSS MiB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for target in ["direct", "nginx", "pingora", "portcullis"]:
            cpu[(scenario, target)] = median(
                [r["cpu_us_per_request"] for r in rows if r["target"] == target])
        for target in ["direct", "nginx", "pingora", "portcullis"]:
            mine = [r for r in rows if r["target"] == target]
            if not mine:
                continue
            base = cpu.get((scenario, "pingora"))
            own = cpu[(scenario, target)]
            ratio = f"{own / base:.2f}" if own and base else "–"
            rss = median([r["rss_kib"] for r in mine])
            lines.append(
                f"| {target} | {median([r['rps'] for r in mine]):.0f} "
                f"| {median([r['p50_ms'] for r in mine]):.2f} "
                f"| {median([r['p99_ms'] for r in mine]):.2f} "
                f"| {'–' if own is None else f'{own:.1f}'} | {ratio} "
                f"| {'–' if rss is None else f'{rss / 1024:.0f}'} |")
    unexpected = [r for r in records
                  if set(r["statuses"]) - {r["expected"]} or r["errors"]]
    if unexpected:
        lines.append("\nRuns with other answers or errors: " + "; ".join(
            f"{r['scenario']} / {r['target']} / round {r['round']}: {r['statuses']}, "
            f"{r['errors']} errors" for r in unexpected))
    return "\n".join(lines)


def held_connections(target, count):
    """RSS of the proxy with `count` idle keep-alive TLS connections, one request each."""
    import resource
    import ssl
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * count + 1000)), hard))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = int(target.url.rsplit(":", 1)[1])
    headers = "".join(f"{header}\r\n" for header in target.headers)
    request = f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()

    def connect():
        conn = context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                   server_hostname="localhost")
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1024:
            chunk = conn.recv(65536)
            if not chunk:
                sys.exit(f"load: {target.name} closed a connection")
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            sys.exit(f"load: {target.name} answered {data[:12]!r}")
        return conn

    for _ in range(200):
        connect().close()
    time.sleep(1)
    before = rss_kib(target.pids)
    held = [connect() for _ in range(count)]
    time.sleep(2)
    after = rss_kib(target.pids)
    for conn in held:
        conn.close()
    return before, after


def memory(targets, count=int(os.environ.get("BENCH_CONNECTIONS", "5000"))):
    lines = [f"| target | RSS before | RSS with {count} held | per connection |",
             "|---|---:|---:|---:|"]
    for target in targets:
        if target.name not in ("pingora", "portcullis"):
            continue
        before, after = held_connections(target, count)
        lines.append(f"| {target.name} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB "
                     f"| {(after - before) / count:.1f} KiB |")
    return "\n".join(lines)


# Portcullis's own phases, as callgrind names their (async) functions, for the
# breakdown of `instructions`.
PHASES = [
    ("request_filter: everything before the backend", r"ProxyHttp>::request_filter::\{\{closure\}\}$"),
    ("  locate: client, canonical target, strip", r"^portcullis::proxy::locate$"),
    ("  identify: the token (cached)", r"^portcullis::proxy::Gateway::identify::\{\{closure\}\}$"),
    ("  route: the policy rule", r"^portcullis::policy::rules::RuleSet::find$"),
    ("  rate limit", r"^portcullis::proxy::Gateway::limit::\{\{closure\}\}$"),
    ("  authorize", r"^portcullis::policy::authorize_rule$"),
    ("upstream_request_filter: forwarding and identity headers",
     r"ProxyHttp>::upstream_request_filter::\{\{closure\}\}$"),
    ("response_filter: HSTS and security headers",
     r"ProxyHttp>::response_filter::\{\{closure\}\}$"),
    ("logging: metrics, audit record", r"ProxyHttp>::logging::\{\{closure\}\}$"),
]


def callgrind_costs(path):
    """Per function symbol: (own instructions, {callee: instructions spent in it}) from
    a callgrind dump; inlined code counts for the function it was inlined into."""
    import collections
    import re
    names, own, callees = {}, collections.Counter(), collections.defaultdict(collections.Counter)
    function = callee = None
    in_call = False

    def name(text):
        match = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not match:
            return text
        if match.group(2):
            names[match.group(1)] = match.group(2)
        return names[match.group(1)]

    for line in path.read_text().splitlines():
        if line.startswith("fn="):
            function = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls="):
            in_call = True
        elif (line[:1].isdigit() or line[:1] in "+-*") and len(line.split()) > 1:
            cost = int(line.split()[1])
            if in_call:
                callees[function][callee] += cost
                in_call = False
            else:
                own[function] += cost
    return own, callees


def instructions(targets, requests=int(os.environ.get("BENCH_REQUESTS", "3000"))):
    """Instructions per request of each Rust proxy (all its threads), counted by
    callgrind over `requests` keep-alive requests on one connection, and where
    Portcullis spends its own."""
    import re
    lines = [f"| target | instructions/request | × pingora |", "|---|---:|---:|"]
    totals, phases = {}, []
    for target in targets:
        if target.name not in ("pingora", "portcullis"):
            continue
        pid = target.pids[0]
        args = [OHA, "--no-tui", "--output-format", "json", "--insecure", "-c", "1"]
        for header in target.headers:
            args += ["-H", header]
        subprocess.run([*args, "-n", "200", target.url + PATH], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True,
                       capture_output=True)
        done = subprocess.run([*args, "-n", str(requests), target.url + PATH], check=True,
                              capture_output=True, text=True, timeout=600)
        subprocess.run(["callgrind_control", "--instr=off", str(pid)], check=True,
                       capture_output=True)
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True,
                       capture_output=True)
        statuses = json.loads(done.stdout).get("statusCodeDistribution", {})
        if statuses != {"200": requests}:
            sys.exit(f"load: {target.name} answered {statuses}")
        own, callees = callgrind_costs(WORK / f"callgrind.{pid}.1")
        totals[target.name] = (sum(own.values()) + 0.0) / requests
        if target.name == "portcullis":
            for label, pattern in PHASES:
                spent = sum(own[f] + sum(callees[f].values())
                            for f in set(own) | set(callees) if re.search(pattern, f))
                phases.append((label, spent / requests))
    for name, total in totals.items():
        lines.append(f"| {name} | {total:,.0f} | {total / totals['pingora']:.2f} |")
    lines += ["", "| Portcullis phase | instructions/request |", "|---|---:|"]
    lines += [f"| {label} | {spent:,.0f} |" for label, spent in phases]
    return "\n".join(lines)


def main():
    if sys.argv[1:] == ["instructions"]:
        for stale in WORK.glob("callgrind.*"):
            stale.unlink()
        processes = []
        try:
            print(instructions(start_all(processes, wrap=[
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={WORK}/callgrind.%p"])))
        finally:
            stop_all(processes)
        return
    if sys.argv[1:] == ["report"]:
        print(report(json.loads((WORK / "results.json").read_text())))
        return
    if sys.argv[1:] == ["memory"]:
        processes = []
        try:
            print(memory(start_all(processes)))
        finally:
            stop_all(processes)
        return
    if not shutil.which("nginx"):
        sys.exit("load: nginx is missing; start with benches/load/run")
    processes = []
    try:
        targets = start_all(processes)
        records = []
        for number in range(ROUNDS):
            print(f"round {number + 1} of {ROUNDS}", flush=True)
            records += run_round(number, targets)
    finally:
        stop_all(processes)
    (WORK / "results.json").write_text(json.dumps(records, indent=1))
    print(report(records))


if __name__ == "__main__":
    main()
