"""The shell blocks a new operator runs first, run as they are written, top to bottom, in a fresh
copy of the source tree: the README's "First ten minutes" and the load test's quick start. Only
the ports change (free ones for 4000, 9443, 9090 and 8080), and the listen addresses of the dev
config `switch init` writes, which `./scripts/serve` would otherwise write itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.doc_blocks import REPO, fresh_clone, run_block, sh_block
from tests.support.processes import free_ports

DEFAULT_PORTS = ("4000", "9443", "9090", "8080", "9444")


def _prepare(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A fresh clone with its dev deployment (what `./scripts/serve` makes first), listening on
    free loopback ports; the ports by their default."""
    clone = fresh_clone(tmp_path / "clone")
    ports = dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True))
    subprocess.run([sys.executable, "-m", "gateway.cli", "init", str(clone / "dev")], check=True,
                   capture_output=True)
    config = clone / "dev" / "switch.toml"
    text = re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)",
                  lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}", config.read_text())
    assert all(f":{port}" in text for port in ports.values())
    config.write_text(text)
    return clone, ports


def _with_ports(block: str, ports: dict[str, int]) -> str:
    return re.sub(r":(4000|9443|9090|8080|9444)\b", lambda m: f":{ports[m.group(1)]}", block)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not {"dev", ".venv", "__pycache__"} & set(p.relative_to(root).parts)}


@pytest.mark.slow
def test_the_readme_first_ten_minutes_run_top_to_bottom_on_a_fresh_clone(tmp_path: Path) -> None:
    clone, ports = _prepare(tmp_path)
    block = sh_block(REPO / "README.md", "## First ten minutes")
    assert "switch serve &" not in block  # ./scripts/serve serves already
    before = _files(clone)
    result = run_block(_with_ports(block, ports), clone, timeout_s=240,
                       env={"SWITCH_CONFIG": "", "SWITCH_PROVISIONING_KEY": "",
                            "SWITCH_SERVER": "", "SWITCH_TOKEN_FILE": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "OK (1 tenant(s)" in out  # config check
    # One agent enrolled, connected and relayed a message through the echo upstream ...
    assert "hello, upstream" in out.splitlines()
    assert (clone / "dev" / "laptop-0042").is_dir()
    # ... before the key was revoked, and everything was audited in one intact chain.
    assert out.index("hello, upstream") < out.index("revoked")
    # An operator acts through the admin API: the key list, the revoked key in it.
    laptops = [line for line in out.splitlines() if line.startswith("Laptops ")]
    assert len(laptops) == 2 and "active" in laptops[0] and "revoked" in laptops[1], out
    assert "Traceback" not in result.stderr
    assert _files(clone) == before  # nothing left in the working tree (no secret, no state)


@pytest.mark.slow
def test_the_load_test_quick_start_leaves_no_provisioning_key_behind(tmp_path: Path) -> None:
    clone, ports = _prepare(tmp_path)
    block = sh_block(REPO / "docs" / "loadtest.md", "## Quick start")
    block = _with_ports(block, ports).replace("--agents 1000", "--agents 4") \
        .replace("--hold 30s", "--hold 1s")
    before = _files(clone)
    scratch = tmp_path / "tmp"  # where `mktemp -d` makes the key's directory
    scratch.mkdir()
    result = run_block(block, clone, timeout_s=240, env={
        "SWITCH_CONFIG": "", "SWITCH_PROVISIONING_KEY": "", "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _files(clone) - before == {"lt.json"}  # the report only: no key file
    assert b"swk_" not in (clone / "lt.json").read_bytes()
    assert list(scratch.iterdir()) == []  # the key's directory is gone with it
