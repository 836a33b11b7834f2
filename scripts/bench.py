"""Switch's benchmarks against nginx, in one run: ``./scripts/bench [--quick] [--only a,c]``.

Sections (DESIGN.md "Budgets", issue 5): (a) server CPU per full mTLS handshake and handshakes
per second, Switch's gateway vs nginx ``ssl_verify_client on``, one worker each and all cores
each; (b) idle relayed sessions held and server memory per session, Switch vs nginx; (c) EST
certificates per second vs a bare ``cryptography`` CSR-to-certificate loop (and ``openssl speed``
for context); (d) ``switch keys revoke`` to the last of 1,000 dependent sessions closed; (c) and
(d) also with a PostgreSQL store and three Switch processes as hosts (``benchlib/several.py``); (e) relay
throughput on one session per core, vs nginx ``proxy_pass``; (f) 50,000 relayed sessions on this
host (``--fleet N``), (g) a reconnection storm after a restart and (h) one revocation closing
10,000 of them, in one run of the fleet (``benchlib/fleet.py``); (i) ``gateway.lightlock.LightLock``
against trio's locks on the relay's write path (CPU per write, memory). Prints a markdown table with the
machine it ran on and writes it to ``--out``.

The run's servers write their logs into a temporary directory that goes with the run; when a
section fails or misses its budget (or with ``--keep-logs``) the logs (``*.log`` files only: no
keys, no secrets, which Switch never logs) are copied first to ``--logs`` (default: beside
``--out``, ``<out>-logs/``), so the miss can be explained afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.benchlib import env  # noqa: E402
from scripts.benchlib.sections import SECTIONS, Options, Row  # noqa: E402

#: Sections run together: the storm (g) and the revocation (h) happen on the fleet of (f).
ALIASES = {"g": "f", "h": "f"}


def render(rows: list[Row], machine: dict[str, str], elapsed: float, quick: bool) -> str:
    lines = [
        "| measure | Switch | reference | ratio | budget | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}×"
        lines.append(f"| {r.measure} | {r.switch} | {r.reference} | {ratio} | {r.budget} | {met} |")
    notes = [f"- {r.measure.split(' ', 1)[0]} {r.note}" for r in rows if r.note]
    head = [f"Run {'(--quick) ' if quick else ''}on: " + "; ".join(f"{k}: {v}" for k, v in machine.items()),
            f"Took {elapsed / 60:.1f} minutes.", ""]
    return "\n".join(head + lines + ["", "Notes:", *notes]) + "\n"


def keep_logs(work: Path, target: Path) -> int:
    """Copy every ``*.log`` under ``work`` to ``target`` (same relative paths, replacing an earlier
    copy); returns how many were copied."""
    if target.exists():
        shutil.rmtree(target)
    copied = 0
    for log in sorted(work.rglob("*.log")):
        if log.is_file():
            dest = target / log.relative_to(work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, dest)
            copied += 1
    return copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,c")
    parser.add_argument("--out", default="bench-results.md", help="where to write the table")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--fleet", type=int, default=0, metavar="N",
                        help="sessions of sections f, g, h (default 50,000; --quick 1,500)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' logs even when every section met its budget")
    parser.add_argument("--logs", default="", metavar="DIR",
                        help="where kept logs go (default: <out>-logs beside --out)")
    args = parser.parse_args()
    wanted: list[str] = []
    for name in (s.strip() for s in args.only.split(",")):
        name = ALIASES.get(name, name)
        if name and name not in wanted:
            wanted.append(name)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}, g, h")
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="switch-bench-") as tmp:
        work = Path(tmp)
        deploy = env.Deployment.create(work / "deploy")
        opts = Options(quick=args.quick, work=work, fleet=args.fleet)
        for name in wanted:
            print(f"== section {name}: {SECTIONS[name].__name__}", file=sys.stderr, flush=True)
            try:
                rows.extend(SECTIONS[name](deploy, opts))
            except Exception as exc:  # noqa: BLE001 - one broken section must not hide the rest
                traceback.print_exc()
                rows.append(Row(f"({name}) {SECTIONS[name].__name__}", "failed", "", None, "", False,
                                f"{type(exc).__name__}: {exc}"))
        missed = [r for r in rows if r.switch == "failed" or r.met is False]
        if missed or args.keep_logs:
            out = Path(args.out)
            target = Path(args.logs) if args.logs else out.with_name(out.stem + "-logs")
            copied = keep_logs(work, target)
            print(f"kept {copied} logs in {target}"
                  + (f" ({len(missed)} rows failed or missed their budget)" if missed else ""),
                  file=sys.stderr)
    text = render(rows, env.machine(), time.monotonic() - started, args.quick)
    Path(args.out).write_text(text)
    print(text)
    return 0 if all(r.switch != "failed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
