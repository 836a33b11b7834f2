"""Commands for whoever runs the server: ``init``, ``config check``, ``serve`` and ``reload``.

The server itself (trio, ``gateway.serve``, the worker supervisor) is imported by ``serve`` and
``reload`` only, when they run."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from config.check import check_config, format_problems
from config.errors import ConfigError, Problem
from config.load import load_config
from config.model import SwitchConfig
from gateway.cli.common import config_invalid, config_missing, load, now
from gateway.cli.exits import EXIT_OK, EXIT_REFUSED, CliExit
from gateway.cli.store_commands import check_store, hold_state_dir

if TYPE_CHECKING:
    from gateway.listening import ListenError


def cmd_init(args: argparse.Namespace) -> int:
    from enroll.bootstrap import init_deployment

    try:
        path = init_deployment(Path(args.directory), now=now(), keystore=args.keystore)
    except FileExistsError as exc:
        raise CliExit("deployment_exists", str(exc)) from exc
    print(f"Created a Switch deployment in {path.parent}")
    print(f"  config:      {path}")
    print(f"  dev PKI:     {path.parent / 'pki'} (for development only)")
    print(f"  state:       {path.parent / 'state'}")
    print("Next: switch -c", path, "config check")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.config)
    missing = config_missing(path)
    if missing is not None:
        raise missing
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems = list(exc.problems)
        if exc.partial is not None:  # the checks that can still run on what did load
            flagged = {(p.file, p.key) for p in problems}
            problems += [p for p in check_config(exc.partial, now())
                         if (p.file, p.key) not in flagged and p not in problems]
        print(format_problems(problems), file=sys.stderr)
        failed = sum(1 for p in problems if p.is_error)
        print(f"{path}: {failed} error(s), {len(problems) - failed} warning(s); the "
              "configuration does not load", file=sys.stderr)
        return EXIT_REFUSED
    problems = check_config(cfg, now()) + _key_profile_problems(cfg)
    if problems:
        print(format_problems(problems), file=sys.stderr)
    errors = [p for p in problems if p.severity == "error"]
    warnings = len(problems) - len(errors)
    if errors:
        print(f"{path}: {len(errors)} error(s), {warnings} warning(s)", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{path}: OK ({len(cfg.tenants)} tenant(s), {warnings} warning(s))")
    return EXIT_OK


def _key_profile_problems(cfg: SwitchConfig) -> list[Problem]:
    """The live provisioning keys that name a profile ``cfg`` does not define (errors), when the
    store can be read; a warning when it cannot. A SQLite store that does not exist yet is not
    created: a deployment that never served has no keys."""
    from enroll.authority import stored_key_profile_problems
    from enroll.errors import StoreError

    if cfg.store.url is None and not (cfg.state_dir / "switch.db").exists():
        return []
    try:
        return stored_key_profile_problems(cfg)
    except StoreError as exc:
        return [Problem(cfg.path, "store", f"the store could not be read ({exc.message}): the "
                        "profiles that provisioning keys name were not checked", "warning")]


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from gateway import serve
    from gateway.listening import ListenError
    from gateway.workers import GENERATION_ENV, SNAPSHOT_ENV

    # Until the server's own signal handling is in place, a SIGHUP (reload) must not kill the
    # process (Python's default); the config is read after this point anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    if workers < 1:
        raise CliExit("usage", "--workers must be at least 1")
    try:
        if args.worker is not None and os.environ.get(SNAPSHOT_ENV):
            # A worker runs the supervisor's snapshot, never the files on disk (config.snapshot).
            from config.snapshot import load_snapshot

            cfg = load_snapshot(Path(args.config), Path(os.environ[SNAPSHOT_ENV]))
            generation = int(os.environ.get(GENERATION_ENV, "1"))
            trio.run(functools.partial(serve.main, cfg, worker=args.worker, generation=generation))
            return EXIT_OK
        cfg = load(args)
        if args.worker is not None:
            trio.run(functools.partial(serve.main, cfg, worker=args.worker))
            return EXIT_OK
        # One serving Switch per state directory, and never one without its store: checked
        # before anything in the state directory is touched (gateway.runlock, enroll.store).
        lock = hold_state_dir(cfg)
        try:
            check_store(cfg, create=args.create_store)
            if workers == 1:
                trio.run(functools.partial(serve.main, cfg))
                return EXIT_OK
            from gateway.workers import Supervisor

            return trio.run(Supervisor(cfg, workers).run)
        finally:
            lock.release()
    except ConfigError as exc:  # a file changed since the check above, or OpenSSL refused it
        raise config_invalid(args.config, exc) from exc
    except (ListenError, BaseExceptionGroup) as exc:  # a port in use: one line, no traceback
        failed = _listen_error(exc)
        if failed is None:
            raise
        raise CliExit("listen_failed", str(failed)) from None


def _listen_error(exc: BaseException) -> ListenError | None:
    """The ``ListenError`` that ``exc`` is or holds (in nested exception groups), else None."""
    from gateway.listening import ListenError

    if isinstance(exc, ListenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _listen_error(inner)
            if found is not None:
                return found
    return None


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the running ``switch serve`` (its pid is in the state directory) to reload, then
    wait for and print the result it records."""
    import signal
    import time

    from gateway.runfiles import PID_FILE, RELOAD_STATUS_GLOB

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:  # checked here first: a config that does not load is never sent
        raise config_invalid(args.config, exc, "; nothing was signalled and the running config "
                             "stays in force") from exc
    pid_file = cfg.state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise CliExit("not_running", f"no running Switch for this config ({pid_file})") from exc

    def statuses() -> dict[Path, int]:
        out = {}
        for path in cfg.state_dir.glob(RELOAD_STATUS_GLOB):
            with contextlib.suppress(OSError):
                out[path] = path.stat().st_mtime_ns
        return out

    # One status file per serving process (each worker, or the single server): wait for all.
    before = statuses()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise CliExit("not_running", f"process {pid} from {pid_file} is gone") from exc
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        current = statuses()
        changed = [p for p, mtime in current.items() if before.get(p) != mtime]
        if changed and all(current.get(p) != mtime for p, mtime in before.items()):
            results = []
            for path in sorted(changed):
                with contextlib.suppress(OSError, ValueError):
                    results.append(json.loads(path.read_text()))
            if len(results) < len(changed):
                time.sleep(0.05)  # a file being replaced: read again
                continue
            failed = [r for r in results if not r["ok"]]
            if failed:
                errors = "\n".join(dict.fromkeys(e for r in failed for e in r["errors"]))
                raise CliExit("reload_refused", "the configuration does not load in the server; "
                              f"the running config stays in force:\n{errors}")
            generations = sorted({r["generation"] for r in results})
            print("reloaded: config generation " + ", ".join(map(str, generations))
                  + (f" ({len(results)} processes)" if len(results) > 1 else ""))
            for key in dict.fromkeys(k for r in results for k in r["restart_needed"]):
                print(f"  {key} changed: it is read at start only, restart to apply it")
            return EXIT_OK
        time.sleep(0.05)
    raise CliExit("reload_unconfirmed", f"signalled process {pid}, not every process reported a "
                  f"result within {args.wait}s")
