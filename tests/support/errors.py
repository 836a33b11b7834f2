"""The error classes the ``enroll`` package defines, found by importing every module of it
(subpackages included), for the tests that hold every reason code to the tables at the edges."""

from __future__ import annotations

import importlib
import pkgutil

import enroll
from enroll.errors import EnrollError


def enroll_modules() -> list[str]:
    """Every module of ``enroll``, subpackages included."""
    return [m.name for m in pkgutil.walk_packages(enroll.__path__, prefix="enroll.")]


def all_error_classes() -> list[type[EnrollError]]:
    """Every ``EnrollError`` subclass defined anywhere in ``enroll``."""
    for name in enroll_modules():
        importlib.import_module(name)
    found: list[type[EnrollError]] = []
    pending = list(EnrollError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
