"""Logging: structlog, configured once when the ``switch`` command starts (``configure``).

Theory of operation: every event is one line on stderr, in one of three formats:

* ``logfmt`` (the default): ``timestamp=2026-11-26T04:37:27.123456Z level=info event=est_request
  conn_id=6 status=200 ...`` -- the timestamp (UTC, ISO 8601), level and event first, then the
  other keys sorted; a value is written bare when it can be, else quoted with JSON's escapes, so a
  newline is ``\\n`` and an event never spans two lines. None values are left out.
* ``json``: one JSON object per line, for log shippers.
* ``console``: structlog's human renderer, for a developer's terminal; only when asked.

Secrets: an exception is rendered as plain traceback text, never with the frames' local
variables (structlog's default renderer, with ``rich`` installed, prints every frame's locals: the
EST handler's frames hold the request's ``Authorization`` and ``X-Switch-Pkcs12-Password``
headers). As a second line of defence, the value of any key whose name says it holds a secret
(``authorization``, ``password``, ``secret``, ``token``, ``cookie``) is replaced by ``[redacted]``.

Speed: this runs for every request. Events below INFO are dropped by the bound logger before any
processor runs; loggers are cached on first use; the chain is five plain functions, and the
secret-key check is one dict lookup per key; the timestamp's date and time are formatted once per
second and short string values' logfmt text is remembered (bounded), so a line costs about half
what structlog's stock processors did.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["logfmt", "json", "console"]
FORMATS: tuple[LogFormat, ...] = ("logfmt", "json", "console")
#: Where the CLI passes the format on to the worker processes it starts.
FORMAT_ENV = "SWITCH_LOG_FORMAT"
REDACTED = "[redacted]"
_FIRST = ("timestamp", "level", "event")
_SECRET_KEY = re.compile(r"authori[sz]ation|password|passwd|secret|token|cookie", re.IGNORECASE)
_secret_keys: dict[str, bool] = {}
#: A value that needs no quotes in logfmt: printable, no space, quote, equals sign or backslash.
_BARE = re.compile(r'[^\s"=\\]+')


def _is_secret_key(key: str) -> bool:
    known = _secret_keys.get(key)
    if known is None:
        known = _secret_keys[key] = _SECRET_KEY.search(key) is not None
        if len(_secret_keys) > 10_000:  # keys come from code, not peers; bound it anyway
            _secret_keys.clear()
    return known


def redact_secrets(_: object, __: str, event_dict: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    known = _secret_keys
    for key in event_dict:
        secret = known.get(key)
        if secret or (secret is None and _is_secret_key(key)):
            event_dict[key] = REDACTED
    return event_dict


#: Rendered logfmt text of short string values seen before (tenants, reasons, addresses repeat
#: from line to line); bounded, cleared when full.
_rendered: dict[str, str] = {}
_RENDERED_MAX = 10_000
_RENDERED_MAX_LEN = 64


def _logfmt_text(text: str) -> str:
    if _BARE.fullmatch(text) and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


def _logfmt_value(value: object) -> str:
    if type(value) is str:
        text = _rendered.get(value)
        if text is None:
            text = _logfmt_text(value)
            if len(value) <= _RENDERED_MAX_LEN:
                if len(_rendered) >= _RENDERED_MAX:
                    _rendered.clear()
                _rendered[value] = text
        return text
    if type(value) is int:
        return str(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _logfmt_text(str(value))


def render_logfmt(_: object, __: str, event_dict: MutableMapping[str, Any]) -> str:
    parts = [f"{key}={_logfmt_value(event_dict[key])}" for key in _FIRST
             if event_dict.get(key) is not None]
    parts += [f"{key}={_logfmt_value(value)}" for key, value in sorted(event_dict.items())
              if value is not None and key not in _FIRST]
    return " ".join(parts)


_stamp_second = -1
_stamp_prefix = ""


def add_timestamp(_: object, __: str, event_dict: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """``timestamp``: now, UTC, ISO 8601 with microseconds and ``Z`` (the date and time part is
    formatted once per second)."""
    global _stamp_second, _stamp_prefix  # noqa: PLW0603 - a one-entry cache
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    event_dict["timestamp"] = f"{_stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"
    return event_dict


def format_exc_info(logger: Any, method: str, event_dict: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """structlog's ``format_exc_info`` (the traceback as text, without locals), only for an
    event that has ``exc_info``."""
    if "exc_info" not in event_dict:
        return event_dict
    return structlog.processors.format_exc_info(logger, method, event_dict)


def processors(log_format: LogFormat) -> list[Any]:
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
        redact_secrets,
    ]
    if log_format == "console":
        # plain_traceback: the traceback text only, no locals (unlike rich's default).
        return [*chain, structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback)]
    chain.append(format_exc_info)  # exc_info -> text, without locals
    if log_format == "json":
        return [*chain, structlog.processors.JSONRenderer()]
    return [*chain, render_logfmt]


def configure(log_format: LogFormat = "logfmt", *, file: TextIO | None = None) -> None:
    """Configure structlog for this process; call once, before the first event is logged."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(FORMATS)})")
    structlog.configure(
        processors=processors(log_format),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=file or sys.stderr),
        cache_logger_on_first_use=True,
    )
