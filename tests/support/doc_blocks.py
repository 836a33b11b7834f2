"""Running a shell block of the docs as an operator would: in a copy of the source tree (a fresh
clone: no ``dev/``, nothing generated), with the ports the block names swapped for free ones.

The copy's ``.venv`` stands for the one ``./scripts/serve`` would create: its ``bin/`` links to
the interpreter and ``switch`` of the environment running the tests (installing a new one for
each run would take minutes and the network), and its install stamp is fresh, so
``scripts/_venv.sh`` installs nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sh_block(document: Path, heading: str, index: int = 0) -> str:
    """The ``index``-th ```` ```sh ```` block of the section under ``heading``."""
    section = document.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert len(blocks) > index, f"no sh block {index} under {heading!r} in {document}"
    return str(blocks[index])


def fresh_clone(directory: Path) -> Path:
    """The source tree's files (tracked, and new ones not ignored) copied into ``directory``,
    with a ``.venv`` that links to the running environment."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    bin_dir = directory / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    real_bin = Path(sys.executable).parent
    for name in ("python", "python3", "switch"):
        (bin_dir / name).symlink_to(real_bin / name)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    (directory / ".venv" / ".switch-installed").touch()
    return directory


def run_block(script: str, cwd: Path, *, timeout_s: float,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` run by ``bash`` with ``-euo pipefail`` (any failing command fails it) in a
    session of its own, every process of which (the servers it left in the background too) is
    killed when it ends. Its output goes to files: a background process keeps a pipe open."""
    out, err = cwd.parent / "block.out", cwd.parent / "block.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd,
                                env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr,
                                text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    note = f"\n[killed after {timeout_s}s]" if code == -1 else ""
    return subprocess.CompletedProcess(proc.args, code, out.read_text(), err.read_text() + note)
