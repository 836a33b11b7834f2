"""Configuration snapshots: what a supervisor's workers run, whatever happens to the files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from config import snapshot
from config.errors import ConfigError
from tests.support.est import make_deployment


def test_a_snapshot_holds_every_file_the_config_names_and_ignores_later_edits(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    tenants = tmp_path / "d/tenants.d"
    tenants.mkdir()
    (tenants / "beta.toml").write_text('hostnames = ["beta.example"]\n'
                                       'organisation_cas = ["../pki/demo-org-ca.pem"]\n'
                                       'upstream = "wss://beta.example/"\n'
                                       'upstream_ca = "../pki/dev-root-ca.pem"\n')
    config.path.write_text('tenants_dir = "tenants.d"\n' + config.path.read_text())
    taken, directory = snapshot.take_snapshot(config.path, config.state_dir, 1)
    assert set(taken.tenants) == {"demo", "beta"}
    assert taken.path == config.path and taken.tenants["beta"].source == tenants / "beta.toml"
    assert taken.tls.key_file is not None and taken.tls.key_file.is_relative_to(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(taken.tls.key_file.stat().st_mode) == 0o600

    config.path.write_text(config.path.read_text() + "\nnonsense = [\n")
    (tenants / "beta.toml").unlink()
    (tmp_path / "d/pki/demo-org-ca.pem").write_text("gone")
    again = snapshot.load_snapshot(config.path, directory)
    assert set(again.tenants) == {"demo", "beta"}
    assert again.tenants["demo"].organisation_cas[0].is_relative_to(directory)
    upstream_ca = again.tenants["beta"].upstream_ca
    assert upstream_ca is not None and upstream_ca.is_relative_to(directory)


def test_a_config_that_does_not_load_leaves_no_snapshot(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    config.path.write_text("bogus = 1\n" + config.path.read_text())
    with pytest.raises(ConfigError):
        snapshot.take_snapshot(config.path, config.state_dir, 1)
    root = snapshot.snapshots_dir(config.state_dir)
    assert not root.exists() or not any(root.iterdir())


def test_workers_reload_from_the_current_snapshot_or_get_its_problems(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    _, first = snapshot.take_snapshot(config.path, config.state_dir, 1)
    snapshot.write_current(config.state_dir, snapshot.Current(1, first.name, True))
    loaded, generation = snapshot.load_current(config.path, config.state_dir)
    assert generation == 1 and loaded.tenants.keys() == config.tenants.keys()
    config.path.write_text("bogus = 1\n" + config.path.read_text())
    with pytest.raises(ConfigError) as info:
        snapshot.take_snapshot(config.path, config.state_dir, 2)
    snapshot.write_current(config.state_dir, snapshot.Current(
        1, first.name, False, tuple(info.value.problems)))
    with pytest.raises(ConfigError) as refused:
        snapshot.load_current(config.path, config.state_dir)
    assert [p.key for p in refused.value.problems] == ["bogus"]


def test_a_file_missing_from_a_snapshot_is_a_problem_not_read_from_disk(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    _, directory = snapshot.take_snapshot(config.path, config.state_dir, 1)
    manifest = directory / snapshot.MANIFEST
    manifest.write_text(manifest.read_text().replace(str(tmp_path / "d/pki/server.key"), "/elsewhere"))
    with pytest.raises(ConfigError) as info:
        snapshot.load_snapshot(config.path, directory)
    [problem] = info.value.problems
    assert problem.key == "tls.key_file" and "not in the configuration snapshot" in problem.message


def test_a_snapshot_holds_the_pinned_client_certificates(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    config.path.write_text(config.path.read_text().replace(
        'organisation_certs = []', 'organisation_certs = ["pki/demo-agent.pem"]'))
    _, directory = snapshot.take_snapshot(config.path, config.state_dir, 1)
    (tmp_path / "d/pki/demo-agent.pem").unlink()
    again = snapshot.load_snapshot(config.path, directory)
    [pinned] = again.tenants["demo"].organisation_certs
    assert pinned.is_relative_to(directory)
