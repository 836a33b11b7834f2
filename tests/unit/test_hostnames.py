"""One tenant lookup by name: ``config.hostnames.host_key`` and ``SwitchConfig.tenant_for_name``,
used by the SNI callback, the ``Host`` check and EST."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from config.hostnames import host_key
from config.model import ServerTLS, SwitchConfig, Tenant

ACME = Tenant("acme", ("agents.acme.example", "acme.example"))
OTHER = Tenant("other", ("other.example",))
CONFIG = SwitchConfig(Path("/s/switch.toml"), Path("/s/state"), ServerTLS(),
                      tenants={"acme": ACME, "other": OTHER})


@pytest.mark.parametrize(("name", "key"), [
    ("agents.acme.example", "agents.acme.example"),
    ("AGENTS.Acme.EXAMPLE", "agents.acme.example"),  # case
    ("agents.acme.example.", "agents.acme.example"),  # the DNS root's dot
    (b"agents.acme.example", "agents.acme.example"),  # SNI arrives as bytes
    (" acme.example ", "acme.example"),
    ("10.1.2.3", "10.1.2.3"),
    ("[::1]", "::1"),  # brackets of an IPv6 literal
    ("[FE80::1]", "fe80::1"),
    ("::1", "::1"),
])
def test_names_are_folded_to_the_form_tenants_hostnames_are_written_in(
        name: str | bytes, key: str) -> None:
    assert host_key(name) == key
    assert host_key(name, port_allowed=True) == key


@pytest.mark.parametrize(("name", "key"), [
    ("acme.example:4000", "acme.example"),
    ("ACME.example.:443", "acme.example"),
    (b"acme.example:4000", "acme.example"),
    ("[::1]:4000", "::1"),
])
def test_a_port_is_dropped_only_where_one_may_be_written(name: str | bytes, key: str) -> None:
    assert host_key(name, port_allowed=True) == key
    assert host_key(name) is None  # an SNI name with a port is not a host name


@pytest.mark.parametrize("name", [
    None, "", b"", " ", ".", "..", "acme..example", "acme.example..", ".acme.example",
    "acme.example:", "acme.example:http", "acme.example:123456", ":4000", "[::1", "[::1]x",
    "[::1]:", "[acme.example]", "acme example", "acme.example/x", "user@acme.example",
    "acme.example:4000:1", "ácme.example", b"\xffacme.example", "acme.example\r\nx",
    "a" * 254,
])
def test_empty_or_malformed_names_name_no_tenant(name: str | bytes | None) -> None:
    assert host_key(name, port_allowed=True) is None
    assert CONFIG.tenant_for_name(name, port_allowed=True) is None


def test_a_tenant_is_found_by_any_of_its_names_in_any_spelling() -> None:
    assert CONFIG.tenant_for_name("agents.acme.example") is ACME
    assert CONFIG.tenant_for_name(b"ACME.example.") is ACME
    assert CONFIG.tenant_for_name("Other.Example:4000", port_allowed=True) is OTHER
    assert CONFIG.tenant_for_name("other.example:4000") is None
    assert CONFIG.tenant_for_name("nobody.example") is None
    assert CONFIG.tenant_for_name("example") is None  # no suffix matching


def test_the_default_tenant_answers_only_for_names_no_tenant_claims() -> None:
    with_default = attrs.evolve(CONFIG, default_tenant="other")
    assert with_default.tenant_for_hostname("agents.acme.example") is ACME
    assert with_default.tenant_for_hostname("nobody.example") is OTHER
    assert with_default.tenant_for_hostname(None) is OTHER
    assert with_default.tenant_for_hostname("garbage name") is OTHER
    assert with_default.tenant_for_name("nobody.example") is None
    assert CONFIG.tenant_for_hostname("nobody.example") is None  # no default: refuse


def test_the_lookup_table_is_rebuilt_with_each_new_configuration() -> None:
    moved = attrs.evolve(CONFIG, tenants={"other": attrs.evolve(OTHER, hostnames=(
        "other.example", "acme.example"))})
    assert moved.tenant_for_name("acme.example") is moved.tenants["other"]
    assert moved.tenant_for_name("agents.acme.example") is None
    assert CONFIG.tenant_for_name("acme.example") is ACME  # the old one is untouched
