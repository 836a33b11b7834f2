"""The import rules of pyproject.toml bite: ``lint-imports`` (run by ./scripts/test) passes on a
copy of the three packages and fails, naming the contract and the import, once a forbidden import
is added to the copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "enroll", "config")


def _contract(kind: str) -> str:
    """The name of the contract of this type in pyproject.toml (the checker reports by name)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [c["name"] for c in config["tool"]["importlinter"]["contracts"]
             if c["type"] == kind or c.get("id") == kind]
    assert len(names) == 1, names
    return str(names[0])


def _contract_count() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return len(config["tool"]["importlinter"]["contracts"])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The three packages and pyproject.toml, copied."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("lint-imports")
    command = str(executable) if executable.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is not installed (the test extra)"
    # PYTHONPATH puts the copy ahead of the installed project; a wide COLUMNS keeps each
    # contract's name on one line of the report.
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "250"}
    return subprocess.run([command, "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _add_import(root: Path, module_file: str, statement: str) -> None:
    path = root / module_file
    assert path.exists(), module_file
    path.write_text(path.read_text() + f"\n{statement}\n")


def test_the_tree_as_it_is_keeps_every_contract(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {_contract_count()} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module_file", "statement", "contract", "named"), [
    ("gateway/client/echo.py", "import gateway.serve", "client-tools",
     "gateway.client.echo -> gateway.serve"),
    ("gateway/client/est_client.py", "from enroll import pki as _authority_pki", "client-tools",
     "gateway.client.est_client -> enroll.pki"),
    ("gateway/client/agent.py", "import config.model", "client-tools",
     "gateway.client.agent -> config.model"),
    ("config/__init__.py", "import gateway", "layers", "config -> gateway"),
    ("config/model.py", "import enroll.pki", "layers", "config.model -> enroll.pki"),
    ("enroll/pki.py", "import gateway.tls", "layers", "enroll.pki -> gateway.tls"),
    # serve imports admin: admin importing serve closes a circle between siblings
    ("gateway/admin.py", "import gateway.serve", "acyclic_siblings",
     "No cycles are allowed in gateway.\n"),
    ("enroll/authority.py", "import sqlite3", "store-sql", "enroll.authority -> sqlite3"),
    # est_client is imported by the agent: a circle inside the gateway.client subpackage
    ("gateway/client/est_client.py", "import gateway.client.agent", "acyclic_siblings",
     "No cycles are allowed in gateway.client.\n"),
])
def test_a_forbidden_import_fails_the_check_naming_its_contract(
        tree: Path, module_file: str, statement: str, contract: str, named: str) -> None:
    _add_import(tree, module_file, statement)
    result = _lint_imports(tree)
    assert result.returncode != 0
    name = _contract(contract)
    assert f"{name} BROKEN" in result.stdout, result.stdout
    assert named in result.stdout
    # the other contracts still hold: the failure is the one import added
    assert f"Contracts: {_contract_count() - 1} kept, 1 broken." in result.stdout
