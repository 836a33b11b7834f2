"""One error family in ``enroll``, two tables at its edges: every reason code has an HTTP status
(``enroll.est_status``) and an exit code (``gateway.cli.exits``), and the tables agree with what
docs/enrollment.md and docs/operations.md promise."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from enroll.errors import EnrollError, error_classes
from enroll.est_status import DEFAULT_STATUS, STATUS_BY_REASON, http_status
from gateway.cli.exits import EXIT_CODES, EXIT_REFUSED, exit_code
from tests.support.errors import all_error_classes as _all_error_classes
from tests.support.errors import enroll_modules as _enroll_modules

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_exception_raised_in_enroll_is_an_enroll_error() -> None:
    strays = []
    for name in _enroll_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == name and issubclass(cls, BaseException)
                    and not issubclass(cls, EnrollError)):
                strays.append(f"{name}.{cls.__name__}")
    assert strays == []


def test_each_reason_code_is_one_class() -> None:
    classes = _all_error_classes()
    reasons = [cls.reason for cls in classes]
    assert len(reasons) == len(set(reasons)), sorted(reasons)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*[a-z0-9]", r) for r in reasons), reasons
    assert error_classes() == {cls.reason: cls for cls in classes}


def test_every_reason_code_has_an_http_status_and_an_exit_code() -> None:
    reasons = {cls.reason for cls in _all_error_classes()}
    assert sorted(reasons - STATUS_BY_REASON.keys()) == []
    assert sorted(reasons - EXIT_CODES.keys()) == []
    # Nothing in the HTTP table that no error can carry.
    assert sorted(STATUS_BY_REASON.keys() - reasons) == []


def test_a_reason_missing_from_a_table_still_gets_a_refusal() -> None:
    unlisted = EnrollError("the base class's code is in neither table")
    assert unlisted.reason not in STATUS_BY_REASON and unlisted.reason not in EXIT_CODES
    assert http_status(unlisted) == DEFAULT_STATUS == 400
    assert exit_code(unlisted.reason) == EXIT_REFUSED == 1


def _doc_table(path: Path, heading: str) -> list[list[str]]:
    section = path.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # without the header


def test_the_http_statuses_are_those_docs_enrollment_md_lists() -> None:
    listed = {}
    for status, reasons, _ in _doc_table(DOCS / "enrollment.md", "## Refusals"):
        for reason in re.findall(r"`([a-z0-9_]+)`", reasons):
            listed[reason] = int(status)
    # Answered by the listener itself, before or after the EST service: not enroll's.
    assert {r for r in listed if r not in STATUS_BY_REASON} == {
        "request_timeout", "shutting_down", "bad_request", "request_header_too_large"}
    assert {r: STATUS_BY_REASON[r] for r in listed if r in STATUS_BY_REASON} == \
        {r: s for r, s in listed.items() if r in STATUS_BY_REASON}
    # Every refusal a client can meet is documented; of the 503s, those a request can meet.
    assert sorted(r for r, s in STATUS_BY_REASON.items() if s != 503 and r not in listed) == []


@pytest.mark.parametrize("row", range(6))
def test_the_exit_codes_are_those_docs_operations_md_lists(row: int) -> None:
    code, _, reasons = _doc_table(DOCS / "operations.md", "## Exit codes and refusals")[row]
    named = [r for r in re.findall(r"`([a-z_]+)`", reasons) if r not in ("serve", "reload")]
    assert code == "0" or named
    for reason in named:
        assert exit_code(reason) == int(code), reason
