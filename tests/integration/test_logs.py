"""Logging as `switch` configures it: one line per event, UTC timestamps, no secrets, even in the
traceback of a crashed request handler."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway import logs
from tests.support.est import HOST, enable_with_key, make_deployment

SECRET_PASSWORD = "hunter2-do-not-log-me"

#: `switch` itself, with the EST service's handler replaced by one that crashes: the frames of the
#: traceback then hold the request and its headers as local variables.
CRASHING_SWITCH = """
import sys
from enroll.est_service import EstService

def crash(self, request, now, monotonic):
    secret_headers = dict(request.headers)
    raise RuntimeError("the EST handler crashed")

EstService.handle = crash
from gateway.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _render(event_dict: dict[str, object]) -> str:
    return logs.render_logfmt(None, "info", dict(event_dict))


def test_logfmt_is_one_line_with_timestamp_level_event_first_and_the_rest_sorted() -> None:
    line = _render({"zeta": 1, "event": "est_request", "level": "info", "alpha": "a b",
                    "timestamp": "2026-11-26T04:37:27.123456Z", "none": None, "ok": True,
                    "exception": 'Traceback:\n  File "x"\nValueError: "bad"'})
    assert line == ('timestamp=2026-11-26T04:37:27.123456Z level=info event=est_request '
                    'alpha="a b" exception="Traceback:\\n  File \\"x\\"\\nValueError: \\"bad\\"" '
                    "ok=true zeta=1")


@pytest.mark.parametrize(("value", "rendered"), [
    ("plain", "plain"), ("", '""'), ("a=b", '"a=b"'), ("tab\there", '"tab\\there"'),
    ("back\\slash", '"back\\\\slash"'), ("127.0.0.1:9443", "127.0.0.1:9443"), (1.5, "1.5"),
    ("bell\x07", '"bell\\u0007"'), ("é", "é"),
])
def test_logfmt_values_are_bare_only_when_unambiguous(value: object, rendered: str) -> None:
    assert _render({"event": "e", "k": value}) == f"event=e k={rendered}"


def test_keys_that_name_secrets_are_redacted() -> None:
    event = logs.redact_secrets(None, "info", {"event": "e", "authorization": "Basic x",
                                               "pkcs12_password": "p", "key_secret": "s",
                                               "key_id": "pk_1", "serial": "ab"})
    assert event == {"event": "e", "authorization": "[redacted]", "pkcs12_password": "[redacted]",
                     "key_secret": "[redacted]", "key_id": "pk_1", "serial": "ab"}


@pytest.mark.parametrize("log_format", ["logfmt", "json", "console"])
async def test_a_crashed_request_handler_logs_its_traceback_without_the_requests_secrets(
        tmp_path: Path, log_format: str) -> None:
    directory = tmp_path / "d"
    config = make_deployment(directory)
    key_secret = enable_with_key(config)
    log = tmp_path / "serve.log"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CRASHING_SWITCH, "-c", str(config.path), "--log-format", log_format,
         "serve", "--workers", "1"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(60):
            while not (match := re.search(r"127\.0\.0\.1:(\d+).{0,20}listener.{0,4}enroll|"
                                          r"listener.{0,4}enroll.{0,20}127\.0\.0\.1:(\d+)",
                                          log.read_text())):
                assert proc.returncode is None, log.read_text()
                await trio.sleep(0.05)
            port = match.group(1) or match.group(2)
            reply = await trio.run_process(
                ["curl", "-sS", "--cacert", str(directory / "pki/dev-root-ca.pem"), "--resolve",
                 f"{HOST}:{port}:127.0.0.1", "-u", f"agent:{key_secret}",
                 "-H", f"X-Switch-Pkcs12-Password: {SECRET_PASSWORD}",
                 "-H", "Content-Type: application/pkcs10", "--data-binary", "AAAA",
                 "-w", "|%{http_code}",
                 f"https://{HOST}:{port}/.well-known/est/serverkeygen-pkcs12"],
                capture_stdout=True, check=False)
            assert reply.stdout.endswith(b"internal_error\n|500"), reply
            while "est_request_failed" not in log.read_text():  # noqa: ASYNC110
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    text = log.read_text()
    assert "RuntimeError: the EST handler crashed" in text.replace("\\n", "\n")
    basic = base64.b64encode(f"agent:{key_secret}".encode()).decode()
    # swk_<16 hex>_<43 random>: not rsplit("_"), the random part may itself contain "_" (and its
    # tail after one, a character or two, is then found in any log by chance).
    random_part = key_secret[len("swk_") + 16 + 1:]
    assert len(random_part) == 43
    for secret in (key_secret, random_part, SECRET_PASSWORD, basic):
        assert secret not in text
    lines = text.splitlines()
    if log_format == "logfmt":
        assert all(re.match(r"timestamp=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z level=\w+ event=\w+",
                            line) for line in lines), text
        [crash] = [line for line in lines if "event=est_request_failed" in line]
        assert "level=error" in crash and 'exception="Traceback' in crash
    elif log_format == "json":
        events = [json.loads(line) for line in lines]
        [crash] = [e for e in events if e["event"] == "est_request_failed"]
        assert crash["level"] == "error" and crash["timestamp"].endswith("Z")
        assert crash["exception"].startswith("Traceback")


def test_the_timestamp_is_now_in_utc_with_microseconds() -> None:
    import datetime as dt
    before = dt.datetime.now(dt.UTC)
    stamp = logs.add_timestamp(None, "info", {})["timestamp"]
    after = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before.replace(microsecond=0) <= dt.datetime.fromisoformat(stamp) <= after


def test_a_value_seen_before_renders_as_it_did_the_first_time() -> None:
    for value in ("needs quoting\n", "bare", "needs quoting\n", "bare"):
        assert _render({"event": "e", "k": value}) == (
            'event=e k="needs quoting\\n"' if value != "bare" else "event=e k=bare")
