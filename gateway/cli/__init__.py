"""The ``switch`` command line: ``main`` parses the command, runs it and turns a refusal into
its exit code.

A thin shell over ``config`` (loading, checks, init) and ``enroll`` (keys, service toggle,
issuers, certificates, requests, audit). Its modules, by audience: ``parser`` (the commands and
their options); ``admin_commands`` (the security admin's, acting through ``admin_backend`` and
printed by ``admin_views``); ``server`` (init, config check, serve, reload); ``tools`` (agent,
echo, loadtest); ``operator_commands`` (``operators``: on the store only, the bootstrap path);
``remote_backend`` (the admin commands through a server's API: ``--server``); ``output``
(JSON, tables, times); ``common`` (the config, the local actor); ``exits``
(the one table from reason code to exit code).

Every command takes ``-c/--config`` (default ``$SWITCH_CONFIG`` or ``./switch.toml``); list
commands take ``--json``. The ``keys``, ``service``, ``ca``, ``certs``, ``requests`` and ``audit``
commands take ``--server URL`` (or ``$SWITCH_SERVER``) with ``--token-file`` (or
``$SWITCH_TOKEN_FILE``) and ``--ca-file`` to act through a server's admin API instead of the
store, with the same output and exit codes. Refusals print one line on stderr that starts with the stable reason
code and exit non-zero, with the code ``exits.EXIT_CODES`` gives that reason:

====  =====================================================================
exit  meaning
====  =====================================================================
0     done
1     refused by a rule (limit reached, wrong state, name taken, missing reason,
      confirmation mismatch, ...), a check failed (``config check``, ``audit verify``),
      or ``reload`` found no server or no confirmation (``not_running``, ``reload_unconfirmed``),
      or ``serve`` could not open a port (``listen_failed``)
2     usage error (unknown command or option)
3     not found (unknown tenant, key or certificate)
4     the store could not be opened or written, or the server (``--server``) reached
5     the configuration does not load (``config_invalid``; ``config_missing`` when there is
      no file; ``reload_refused`` when the running server refused it)
====  =====================================================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from enroll.errors import EnrollError
from gateway.cli.common import default_config, local_actor
from gateway.cli.exits import EXIT_OK, CliExit, exit_code
from gateway.cli.parser import build_parser
from gateway.logs import FORMAT_ENV, FORMATS
from gateway.logs import configure as configure_logging


def _fail(reason: str, message: str) -> NoReturn:
    print(f"switch: {reason}: {message}", file=sys.stderr)
    raise SystemExit(exit_code(reason))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = default_config()
    args.actor = local_actor()
    log_format = getattr(args, "log_format", None) or os.environ.get(FORMAT_ENV) or "logfmt"
    if log_format not in FORMATS:
        _fail("usage", f"${FORMAT_ENV} must be one of {', '.join(FORMATS)}")
    os.environ[FORMAT_ENV] = log_format  # the worker processes of `serve --workers` inherit it
    configure_logging(log_format)
    try:
        code: int = args.func(args)
    except CliExit as exc:
        _fail(exc.reason, exc.detail)
    except EnrollError as exc:
        _fail(exc.reason, exc.message)
    except BrokenPipeError:
        return EXIT_OK
    return code


if __name__ == "__main__":
    raise SystemExit(main())
