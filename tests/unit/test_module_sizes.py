"""The layout's size rule bites (docs/architecture.md): no module of the product or its scripts
over ``SOURCE_LIMIT`` lines and no test module over ``TEST_LIMIT``, each opening with a docstring
that says what it owns; the checker itself fails on a module that breaks either rule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: One job per module: the product's packages and the project's scripts.
SOURCE_TREES = ("gateway", "enroll", "config", "scripts")
SOURCE_LIMIT = 450
#: Test modules hold one subject's scenarios, which read better together than split by count.
TEST_TREES = ("tests",)
TEST_LIMIT = 600


def modules(root: Path, trees: tuple[str, ...]) -> list[Path]:
    return sorted(path for tree in trees for path in (root / tree).rglob("*.py")
                  if "__pycache__" not in path.parts)


def oversized(paths: list[Path], limit: int) -> list[str]:
    """Each module over ``limit`` lines, with its count."""
    found = []
    for path in paths:
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            found.append(f"{path.name}: {count} lines (at most {limit})")
    return found


def undocumented(paths: list[Path]) -> list[str]:
    """Each non-empty module that does not open with a docstring."""
    found = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        if source.strip() and not ast.get_docstring(ast.parse(source)):
            found.append(path.name)
    return found


def test_no_product_or_script_module_is_over_the_limit() -> None:
    assert oversized(modules(ROOT, SOURCE_TREES), SOURCE_LIMIT) == []


def test_no_test_module_is_over_the_limit() -> None:
    assert oversized(modules(ROOT, TEST_TREES), TEST_LIMIT) == []


def test_every_product_module_says_what_it_owns() -> None:
    assert undocumented(modules(ROOT, SOURCE_TREES)) == []


def test_the_checker_names_a_module_that_grew_too_long_or_lost_its_docstring(
        tmp_path: Path) -> None:
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "fine.py").write_text('"""Owns one thing."""\n' + "x = 1\n" * 10)
    (package / "long.py").write_text('"""Owns too much."""\n' + "x = 1\n" * SOURCE_LIMIT)
    (package / "bare.py").write_text("x = 1\n")
    paths = modules(tmp_path, ("gateway",))
    assert oversized(paths, SOURCE_LIMIT) == [f"long.py: {SOURCE_LIMIT + 1} lines (at most 450)"]
    assert undocumented(paths) == ["bare.py"]
