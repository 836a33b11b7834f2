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
