"""The ``switch`` parser: it loads no server, no trio and no client tool, so that admin commands
start fast; those are imported by the commands that run them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("trio", "matplotlib", "gateway.serve", "gateway.workers", "gateway.client")


def test_building_the_parser_imports_neither_the_server_nor_trio_nor_matplotlib() -> None:
    code = (
        "import sys\n"
        "from gateway.cli.parser import build_parser\n"
        "args = build_parser().parse_args(['keys', 'list', 'demo'])\n"
        "assert args.func.__name__ == 'cmd_keys_list'\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_python_dash_m_gateway_cli_runs_main() -> None:
    """How the supervisor starts its workers; argparse's usage error exits 2."""
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "no-such-command"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_durations_on_the_command_line_take_a_unit_or_a_bare_number_of_seconds() -> None:
    """``--message-interval 0`` (the help's "0 sends none") once crashed with a traceback: the
    config's rule (a string needs a unit) applied to a command line, which has no numbers."""
    import pytest

    from gateway.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(["loadtest", "--message-interval", "0", "--hold", "1m30s",
                              "--timeout", "2.5"])
    assert (args.message_interval, args.hold, args.timeout) == (0.0, 90.0, 2.5)
    defaults = parser.parse_args(["loadtest"])
    assert (defaults.message_interval, defaults.hold, defaults.timeout) == (5.0, 10.0, 30.0)
    for bad in ("-1", "ten", "nan", "inf", "5 parsecs"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["loadtest", "--hold", bad])
        assert exit_info.value.code == 2
