"""Shared fixtures: configurations built from the model, an authority on a real SQLite file."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.model import Profile, ServerTLS, SwitchConfig, Tenant
from enroll.authority import Authority
from tests.support.est_service import Env, make_env

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def switch_config(tmp_path: Path) -> SwitchConfig:
    return SwitchConfig(
        path=tmp_path / "switch.toml",
        state_dir=tmp_path / "state",
        tls=ServerTLS(cert_file=tmp_path / "server.pem", key_file=tmp_path / "server.key"),
        profiles={"default": Profile("default"), "kiosk": Profile("kiosk", validity_s=86400,
                                                                  renew_before_s=3600)},
        tenants={
            "acme": Tenant("acme", ("acme.test",)),
            "other": Tenant("other", ("other.test",)),
        },
    )


@pytest.fixture
def authority(switch_config: SwitchConfig) -> Iterator[Authority]:
    auth = Authority.open(switch_config, clock=lambda: NOW)
    yield auth
    auth.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The EST service on a real SQLite store, with tenants acme and other enabled and a key."""
    yield from make_env(tmp_path)
