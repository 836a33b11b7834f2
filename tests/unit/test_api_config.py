"""``[api]`` and ``[[webhooks]]`` in the configuration: defaults, values, and every mistake
reported with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.load import load_config
from config.model import WEBHOOK_EVENTS, ApiSettings
from config.reload import restart_needed
from tests.unit.test_config_load import GOOD, _by_key, _load, pkidir  # noqa: F401 - fixture

SECRET = "0123456789abcdef0123456789abcdef"


def _secret(tmp_path: Path, text: str = SECRET) -> Path:
    path = tmp_path / "hook.secret"
    path.write_text(text + "\n")
    return path


@pytest.mark.usefixtures("pkidir")
def test_api_defaults_to_loopback_9444_and_reads_its_bounds(tmp_path: Path) -> None:
    path = tmp_path / "switch.toml"
    path.write_text(GOOD)
    assert load_config(path).api == ApiSettings()
    assert (ApiSettings().listen.host, ApiSettings().listen.port) == ("127.0.0.1", 9444)
    path.write_text(GOOD + '[api]\nlisten = "0.0.0.0:8444"\nrequest_timeout = "3s"\n'
                    'idle_timeout = "1m"\nmax_body_size = "8KiB"\nmax_header_size = "4KiB"\n')
    api = load_config(path).api
    assert (api.listen.host, api.listen.port, api.request_timeout_s, api.idle_timeout_s,
            api.max_body_bytes, api.max_header_bytes) == ("0.0.0.0", 8444, 3.0, 60.0, 8192, 4096)


@pytest.mark.usefixtures("pkidir")
def test_webhooks_load_with_their_secret_events_and_name(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    path = tmp_path / "switch.toml"
    path.write_text(GOOD + f'[[webhooks]]\nurl = "https://hooks.example/switch"\nsecret_file = '
                    f'"{secret}"\nevents = ["request.pending", "key.revoked"]\n'
                    f'[[webhooks]]\nurl = "http://127.0.0.1:8081/x"\nsecret_file = "{secret}"\n'
                    'events = ["*"]\nname = "local"\ntimeout = "2s"\n')
    first, second = load_config(path).webhooks
    assert (first.name, first.url, first.secret_file, first.events, first.timeout_s) == (
        "webhook-0", "https://hooks.example/switch", secret, ("request.pending", "key.revoked"), 5.0)
    assert (second.name, second.events, second.timeout_s) == ("local", WEBHOOK_EVENTS, 2.0)


@pytest.mark.usefixtures("pkidir")
def test_webhook_mistakes_are_each_reported_with_their_key(tmp_path: Path) -> None:
    short = tmp_path / "short.secret"
    short.write_text("too short")
    good = _secret(tmp_path)
    problems = _by_key(_load(tmp_path, GOOD + (
        f'[[webhooks]]\nurl = "http://hooks.example/x"\nsecret_file = "{good}"\nevents = ["key.revoked"]\n'
        f'[[webhooks]]\nurl = "ftp://x/"\nsecret_file = "{short}"\nevents = ["key.exploded"]\n'
        f'[[webhooks]]\nurl = "https://a.example/"\nsecret_file = "{good}"\nevents = []\n'
        f'name = "dup"\n'
        f'[[webhooks]]\nurl = "https://b.example/"\nsecret_file = "{tmp_path}/missing"\n'
        f'events = ["key.revoked"]\nname = "dup"\nbogus = 1\n'
        '[api]\nrequest_timeout = "0s"\n')))
    assert "loopback" in problems["webhooks[0].url"] or "this host" in problems["webhooks[0].url"]
    assert "https://" in problems["webhooks[1].url"]
    assert "at least 16 bytes" in problems["webhooks[1].secret_file"]
    assert "unknown event" in problems["webhooks[1].events[0]"]
    assert "at least one event" in problems["webhooks[2].events"]
    assert "missing" in problems["webhooks[3].secret_file"]
    assert problems["webhooks[3].bogus"] == "unknown key"
    assert "more than 0" in problems["api.request_timeout"]


@pytest.mark.usefixtures("pkidir")
def test_api_and_webhooks_are_read_at_start_only(tmp_path: Path) -> None:
    path = tmp_path / "switch.toml"
    path.write_text(GOOD)
    before = load_config(path)
    path.write_text(GOOD + '[api]\nlisten = "127.0.0.1:9555"\nmax_body_size = 1024\n')
    assert restart_needed(before, load_config(path)) == ("api.listen", "api")


@pytest.mark.usefixtures("pkidir")
@pytest.mark.parametrize("scheme", ["http://localhost:1/", "http://[::1]:1/"])
def test_plain_http_webhooks_may_go_to_this_host(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "switch.toml"
    path.write_text(GOOD + f'[[webhooks]]\nurl = "{scheme}"\nsecret_file = '
                    f'"{_secret(tmp_path)}"\nevents = ["key.created"]\n')
    assert load_config(path).webhooks[0].url == scheme


@pytest.mark.usefixtures("pkidir")
def test_the_console_and_its_session_lifetimes_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "switch.toml"
    path.write_text(GOOD)
    api = load_config(path).api
    assert (api.console, api.session_idle_timeout_s, api.session_lifetime_s) == \
        (True, 1800.0, 28800.0)
    path.write_text(GOOD + '[api]\nconsole = false\nsession_idle_timeout = "10m"\n'
                    'session_lifetime = "1h"\n')
    api = load_config(path).api
    assert (api.console, api.session_idle_timeout_s, api.session_lifetime_s) == \
        (False, 600.0, 3600.0)
    problems = _by_key(_load(tmp_path, GOOD + '[api]\nconsole = "yes"\n'
                             'session_idle_timeout = "2h"\nsession_lifetime = "30s"\n'))
    assert "true or false" in problems["api.console"]
    assert "at least 1m" in problems["api.session_lifetime"]
    assert "not be longer than session_lifetime" in problems["api.session_idle_timeout"]
