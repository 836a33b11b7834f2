"""The bench's section (c): certificates issued through EST, with SQLite and one Switch process,
with PostgreSQL and three Switch processes as hosts, against a bare ``cryptography`` loop."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import re
import subprocess
import time
from collections.abc import Callable

from scripts.benchlib import env
from scripts.benchlib.rows import Options, Row
from scripts.benchlib.rows import ratio as _ratio

# --- (c) EST issuance -------------------------------------------------------------------------


def _bare_issue_loop(seconds: float) -> float:
    """Certificates per second from CSRs with `cryptography` alone: parse, verify the
    signature, build a leaf much like Switch's profile, sign with ECDSA P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    csrs = []
    for i in range(200):
        key = ec.generate_private_key(ec.SECP256R1())
        csrs.append(x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"agent-{i}")])).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER))
    now = dt.datetime.now(dt.UTC)
    done, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        csr = x509.load_der_x509_csr(csrs[done % len(csrs)])
        assert csr.is_signature_valid
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(cn))]))
                .issuer_name(ca_name).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:switch:demo:{cn}")]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert.public_bytes(serialization.Encoding.DER)
        done += 1
    return done / (time.perf_counter() - start)


#: Requests in flight over all generator processes: the same for every row of (c). Enough to keep
#: two workers busy (docs/performance.md, (c)): 16 kept one worker at its most but left two
#: workers waiting on the generator, a fifth to a quarter of the two cores idle.
IN_FLIGHT = 64
GENERATORS = 2


def _issue(deploy: env.Deployment, enroll_ports: list[int], requests: list[bytes], quick: bool,
           cpu: Callable[[], float]) -> dict[str, float]:
    """``GENERATORS`` load generator processes (``est_load``: prepared requests on keep-alive
    connections, replies not parsed), spread over the enrollment ports, ``IN_FLIGHT`` requests in
    flight in all, released together; certificates issued, failures, wall time, the servers' CPU
    (``cpu``) and the generators' own CPU over the run."""
    from scripts.benchlib import est_load

    processes = max(GENERATORS, len(enroll_ports))
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    specs = [{"port": enroll_ports[i % len(enroll_ports)],
              "ca": str(deploy.pki / "dev-root-ca.pem"), "host": env.HOST}
             for i in range(processes)]
    # IN_FLIGHT connections in all, however many processes share them.
    threads = [IN_FLIGHT // processes + (i < IN_FLIGHT % processes) for i in range(processes)]
    procs = [ctx.Process(target=est_load.run,
                         args=(specs[i], requests[i::processes], threads[i], go, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(3 if quick else 5)  # interpreters up, connections open
    idle0, cpu0, t0 = _idle(), cpu(), time.monotonic()
    go.set()
    outcomes = [results.get(timeout=600) for _ in procs]
    wall = max(end for _, _, end, _ in outcomes) - t0
    used, idle1 = cpu() - cpu0, _idle()
    for p in procs:
        p.join(timeout=30)
    issued = sum(n - f for n, f, _, _ in outcomes)
    return {"issued": issued, "failures": sum(f for _, f, _, _ in outcomes), "wall": wall,
            "cpu": used, "generator_cpu": sum(g for _, _, _, g in outcomes),
            "idle": (idle1[0] - idle0[0]) / max(idle1[1] - idle0[1], 1)}


def _idle() -> tuple[int, int]:
    """The machine's idle and total CPU time so far (``/proc/stat``, in ticks; idle counts
    iowait): over a run, the share of the cores nothing used, the bench's processes or any other."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return (0, 0)
    return (ticks[3] + ticks[4], sum(ticks))


def _on_postgres(deploy: env.Deployment, opts: Options, requests: list[bytes],
                 hosts: int) -> dict[str, float]:
    """``_issue`` against ``hosts`` Switch processes (one worker each) sharing one PostgreSQL
    store, the requests spread over their enrollment ports; PostgreSQL's CPU over the run too.
    Each run has a PostgreSQL and a copy of the deployment of its own, so that both start from
    the same empty database."""
    from scripts.benchlib import several

    with env.echo(deploy, opts.work), several.several(deploy, opts.work, hosts) as on:
        pg_cpu0 = on.postgres_cpu()
        run = _issue(deploy, [h.enroll for h in on.hosts], requests, opts.quick, on.switch_cpu)
        run["postgres_cpu"] = on.postgres_cpu() - pg_cpu0
    return run


def _postgres_row(one: dict[str, float], many: dict[str, float], failure: str, sqlite_rate: float,
                  cores: int) -> Row:
    """N hosts on one PostgreSQL against one host on it: certificates per second, and where the
    CPU went per certificate (Switch, PostgreSQL, the generator) in each run."""
    from scripts.benchlib import several

    measure = (f"(c) certificates per second through EST, {several.HOSTS} Switch hosts on one "
               "PostgreSQL, against 1 host on it")
    if failure:
        return Row(measure, "failed", "", None, "", False, failure)

    def figures(run: dict[str, float]) -> str:
        n, wall = max(run["issued"], 1), max(run["wall"], 1e-9)
        busy = (run["cpu"] + run["postgres_cpu"] + run["generator_cpu"]) / wall / cores
        return (f"{run['issued']:.0f} issued, {run['failures']:.0f} failed; per certificate "
                f"{run['cpu'] * 1000 / n:.2f} ms of Switch's CPU, "
                f"{run['postgres_cpu'] * 1000 / n:.2f} ms of PostgreSQL's, "
                f"{run['generator_cpu'] * 1000 / n:.2f} ms of the generator's "
                f"({busy:.0%} of the {cores} cores busy)")

    one_rate, many_rate = one["issued"] / one["wall"], many["issued"] / many["wall"]
    return Row(measure, f"{many_rate:.0f}/s", f"{one_rate:.0f}/s (1 host, same PostgreSQL setup)",
               _ratio(many_rate, one_rate), "", None,
               f"the same {IN_FLIGHT} requests in flight, spread over the hosts' enrollment ports; "
               f"{several.HOSTS} hosts: {figures(many)}; 1 host: {figures(one)}; SQLite, 1 host "
               f"(above): {sqlite_rate:.0f}/s. Everything on the same cores (PostgreSQL without "
               "fsync, as in the tests)")


def est(deploy: env.Deployment, opts: Options) -> list[Row]:
    from cryptography.hazmat.primitives import serialization

    from enroll import pki
    from gateway.client.est_client import make_csr
    from scripts.benchlib import est_load, several

    total = 1000 if opts.quick else 4000
    csrs = [make_csr(f"est-{i}", pki.generate_key("ec-p256")).public_bytes(serialization.Encoding.DER)
            for i in range(total)]
    path = "/.well-known/est/simpleenroll"
    requests = [est_load.prepared(env.HOST, path, deploy.secret, der) for der in csrs]
    with env.echo(deploy, opts.work), env.switch(deploy, 1, opts.work) as sw:
        lite = _issue(deploy, [deploy.enroll], requests, opts.quick, sw.cpu)
    with env.echo(deploy, opts.work), env.switch(deploy, 2, opts.work, tag="-est") as sw:
        two = _issue(deploy, [deploy.enroll], requests, opts.quick, sw.cpu)
    try:
        pg_one = _on_postgres(deploy, opts, requests, 1)
        pg_many = _on_postgres(deploy, opts, requests, several.HOSTS)
    except Exception as exc:  # noqa: BLE001 - the SQLite rows stand on their own
        pg_one = pg_many = {}
        pg_failure = f"{type(exc).__name__}: {exc}"
    else:
        pg_failure = ""
    issued, failures, cpu = lite["issued"], lite["failures"], lite["cpu"]
    rate = issued / lite["wall"]
    bare = _bare_issue_loop(3 if opts.quick else 8)
    speed = subprocess.run(["openssl", "speed", "-seconds", "2", "ecdsap256"], capture_output=True,
                           text=True).stdout
    match = re.search(r"256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)", speed)
    sign_rate = float(match.group(1)) if match else 0.0
    ratio = _ratio(rate, bare)
    per_core = issued / cpu if cpu else 0.0
    core_ratio = _ratio(per_core, bare)
    two_rate = two["issued"] / two["wall"]
    scaling = _ratio(two_rate, rate)
    cores = os.cpu_count() or 1

    def ms(run: dict[str, float], what: str) -> float:
        return run[what] * 1000 / max(run["issued"], 1)

    # What the machine could give two workers at most: every core busy with the servers' and
    # the generator's CPU per certificate as measured.
    ceiling = cores / ((two["cpu"] + two["generator_cpu"]) / max(two["issued"], 1))
    return [
        Row("(c) certificates issued per core-second of server CPU through EST",
            f"{per_core:.0f}/s", f"{bare:.0f}/s (bare loop, 1 core)", core_ratio,
            "≥ 0.25× the bare loop", core_ratio is not None and core_ratio >= 0.25,
            "the same run as the row below, per second of Switch's CPU: what a core "
            "of Switch issues while the load generator has the other"),
        Row("(c) certificates issued per second through EST (keep-alive, 1 Switch process)",
            f"{rate:.0f}/s", f"{bare:.0f}/s (bare `cryptography` CSR→certificate loop, 1 core)",
            ratio, "≥ 0.5× the bare loop", ratio is not None and ratio >= 0.5,
            f"{issued:.0f} issued, {failures:.0f} failed, {IN_FLIGHT} in flight; Switch CPU "
            f"{ms(lite, 'cpu'):.2f} ms per certificate, the generator's {ms(lite, 'generator_cpu'):.2f} ms "
            f"(`benchlib/est_load.py`: prepared requests on keep-alive connections, replies not "
            f"parsed); every certificate committed (fsync) before it is sent; "
            f"`openssl speed ecdsap256`: {sign_rate:.0f} signs/s"),
        Row("(c) the same with `switch serve --workers 2`, against 1 worker",
            f"{two_rate:.0f}/s", f"{rate:.0f}/s (1 worker, above)", scaling, "≥ 1.7×",
            scaling is not None and scaling >= 1.7,
            f"{two['issued']:.0f} issued, {two['failures']:.0f} failed, the same {IN_FLIGHT} in "
            f"flight; Switch CPU {ms(two, 'cpu'):.2f} ms per certificate "
            f"({two['cpu'] / max(two['wall'], 1e-9) / cores:.0%} of the {cores} cores), the "
            f"generator's {ms(two, 'generator_cpu'):.2f} ms "
            f"({two['generator_cpu'] / max(two['wall'], 1e-9) / cores:.0%}), on the same cores "
            f"({two['idle']:.0%} of them idle over the run; one worker's run: {lite['idle']:.0%}); "
            f"with those costs the {cores} cores allow at most {ceiling:.0f}/s "
            f"({ceiling / max(rate, 1e-9):.2f}× one worker's rate)"),
        _postgres_row(pg_one, pg_many, pg_failure, rate, cores),
    ]
