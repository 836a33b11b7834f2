"""Source addresses to connect from: ``[gateway] upstream_source_addresses`` (Switch's upstream
connections, nginx's ``proxy_bind``) checked when the configuration loads, with file and key;
``switch loadtest --source-address`` checked before a run, and its agents spread over them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.load import load_config
from gateway.client.loadtest_settings import LoadSettings, check_source_addresses
from gateway.relay.upstream import source_address
from tests.support.pki import write_ca, write_server

CONFIG = """
state_dir = "state"
[tls]
cert_file = "pki/server.pem"
key_file = "pki/server.key"
[gateway]
{line}
[tenants.acme]
hostnames = ["acme.example"]
upstream = "ws://127.0.0.1:9/"
"""


def _load(tmp_path: Path, line: str) -> tuple[str, ...]:
    d = tmp_path / "pki"
    if not d.exists():
        d.mkdir()
        write_server(d, write_ca(d, "root")[:2])
    path = tmp_path / "switch.toml"
    path.write_text(CONFIG.format(line=line))
    return load_config(path).gateway.upstream_source_addresses


def test_no_upstream_source_addresses_lets_the_kernel_choose(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == ()
    assert source_address(()) is None


def test_upstream_source_addresses_load_and_are_taken_in_turn(tmp_path: Path) -> None:
    loaded = _load(tmp_path, 'upstream_source_addresses = ["127.0.0.2", " 127.0.0.3"]')
    assert loaded == ("127.0.0.2", "127.0.0.3")
    assert Counter(source_address(loaded) for _ in range(10)) == {"127.0.0.2": 5, "127.0.0.3": 5}


def test_bad_upstream_source_addresses_are_errors_with_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, 'upstream_source_addresses = ["127.0.0.2", "localhost", 3, '
                        '"127.0.0.2", "192.0.2.1", "::1"]')
    problems = {p.key: p.message for p in caught.value.problems}
    assert {p.file for p in caught.value.problems} == {tmp_path / "switch.toml"}
    assert problems["gateway.upstream_source_addresses[1]"] == "'localhost' is not an IP address"
    assert problems["gateway.upstream_source_addresses[2]"] == "expected a string, got an integer"
    assert problems["gateway.upstream_source_addresses[3]"] == "127.0.0.2 is listed twice"
    assert problems["gateway.upstream_source_addresses[4]"].startswith(
        "192.0.2.1 is not an address of this host")  # TEST-NET-1: never local
    assert problems["gateway.upstream_source_addresses"].startswith("mixes IPv4 and IPv6")
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, 'upstream_source_addresses = "127.0.0.2"')
    assert [p.key for p in caught.value.problems] == ["gateway.upstream_source_addresses"]


def test_loadtest_source_addresses_are_checked() -> None:
    gateway = [("127.0.0.1", 4000)]
    assert check_source_addresses(["127.0.0.2", "127.0.0.3"], gateway) == ("127.0.0.2", "127.0.0.3")
    assert check_source_addresses(["127.0.0.2"], [("localhost", 4000)]) == ("127.0.0.2",)
    for given, why in ((["nope"], "'nope' is not an IP address"),
                       (["::1"], "source address ::1 is IPv6, the gateway 127.0.0.1 IPv4"),
                       (["192.0.2.1"], "192.0.2.1 is not an address of this host"),
                       (["127.0.0.2", "127.0.0.2"], "127.0.0.2 is given twice")):
        with pytest.raises(ValueError, match=why):
            check_source_addresses(given, gateway)


def test_loadtest_agents_are_spread_evenly_over_the_source_addresses() -> None:
    settings = LoadSettings(agents=9, gateway=("127.0.0.1", 1), enroll=("127.0.0.1", 9),
                            server_name="demo.switch.test", key_secret="swk_x", processes=2,
                            source_addresses=("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    spread = Counter(settings.source_for(worker, index)
                     for worker, share in enumerate(settings.shares()) for index in range(share))
    assert spread == {"127.0.0.2": 3, "127.0.0.3": 3, "127.0.0.4": 3}
    assert LoadSettings(agents=1, gateway=("127.0.0.1", 1), enroll=("127.0.0.1", 9),
                        server_name="x", key_secret="swk_x").source_for(0, 0) is None
    assert settings.public()["source_addresses"] == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
