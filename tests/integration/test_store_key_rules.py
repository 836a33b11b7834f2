"""Store rules added for issue 15, on both engines: a CN held by a live certificate of another
provisioning key is refused when asked (``unique_subject``), also when two writers race; the
live keys that name a profile of their own are listed for configuration checks."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pytest

from enroll import issuers, pki, secrets
from enroll.errors import SubjectTaken
from enroll.keys import KeyAction
from enroll.store import CertificateRecord, Store

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
TS = int(NOW.timestamp())
SUBJECT = "CN=agent-7,OU=acme"


def _enable(store: Store) -> None:
    store.set_service("acme", True, actor="t", ts=TS, make_issuer=lambda seq: issuers.make_issuer(
        "acme", seq, key_type="ec-p256", validity_s=365 * 86400, now=NOW))


def _key(store: Store, name: str, *, tenant: str = "acme", profile: str | None = None) -> str:
    key_id = secrets.new_key_id()
    store.create_key(tenant, key_id=key_id, name=name, secret_hash=b"h" * 32, profile=profile,
                     actor="t", ts=TS)
    return key_id


def _record(store: Store, key_id: str | None, *, subject: str = SUBJECT, ts: int = TS,
            days: int = 30) -> CertificateRecord:
    issuer = store.current_issuer("acme")
    assert issuer is not None
    cert = pki.make_leaf(pki.name("agent-7"), pki.generate_key().public_key(),
                         (issuer.certificate(), store.load_issuer_key(issuer)),
                         now=NOW, validity=dt.timedelta(days=days))
    return CertificateRecord(
        format(cert.serial_number, "x"), issuer.id, "acme", key_id, subject, TS,
        int(cert.not_valid_after_utc.timestamp()), pki.sha256_fingerprint(cert),
        pki.cert_pem(cert).decode(), "valid", None, None, ts)


def test_a_subject_another_keys_live_certificate_holds_is_refused_when_unique(store: Store) -> None:
    _enable(store)
    first, second = _key(store, "First"), _key(store, "Second")
    store.record_certificate(_record(store, first), unique_subject=True)
    with pytest.raises(SubjectTaken, match="another provisioning key"):
        store.record_certificate(_record(store, second), unique_subject=True)
    store.record_certificate(_record(store, second, subject="CN=agent-8,OU=acme"),
                             unique_subject=True)
    store.record_certificate(_record(store, first), unique_subject=True)  # the holder renews
    store.record_certificate(_record(store, second))  # not asked: shared
    assert len(store.list_certificates("acme")) == 4
    assert store.find_key("acme", "Second").certificates_issued == 2  # type: ignore[union-attr]


def test_an_expired_or_revoked_certificate_or_a_revoked_key_holds_no_subject(store: Store) -> None:
    _enable(store)
    first, second = _key(store, "First"), _key(store, "Second")
    held = _record(store, first, days=1)
    store.record_certificate(held)
    store.record_certificate(_record(store, second, ts=held.not_after), unique_subject=True)
    store.revoke_certificate(store.list_certificates("acme", key_id=second)[0].serial,
                             tenant="acme", reason="lost", actor="t", ts=TS)
    store.record_certificate(_record(store, first), unique_subject=True)
    with pytest.raises(SubjectTaken):
        store.record_certificate(_record(store, second), unique_subject=True)
    store.transition_key("acme", "First", KeyAction.REVOKE, reason="leak", confirm="First",
                         actor="t", ts=TS)
    store.record_certificate(_record(store, second), unique_subject=True)
    # A certificate issued through no key holds its subject against every key.
    third = _key(store, "Third")
    store.record_certificate(_record(store, None, subject="CN=agent-9,OU=acme"))
    with pytest.raises(SubjectTaken):
        store.record_certificate(_record(store, third, subject="CN=agent-9,OU=acme"),
                                 unique_subject=True)


def test_two_keys_racing_for_one_subject_on_two_connections_one_wins(
        open_stores: Callable[[], Store]) -> None:
    """The second writer waits for the first's commit and then sees its certificate (without a
    lock on the subject it would check before that commit and record a second holder)."""
    first_store, second_store = open_stores(), open_stores()
    _enable(first_store)
    first, second = _key(first_store, "First"), _key(first_store, "Second")
    mine, theirs = _record(first_store, first), _record(first_store, second)
    outcome: list[BaseException | None] = []

    def race() -> None:
        try:
            second_store.record_certificate(theirs, unique_subject=True)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            outcome.append(exc)

    with first_store.transaction():
        first_store.record_certificate(mine, unique_subject=True)
        racer = threading.Thread(target=race)
        racer.start()
        time.sleep(0.3)  # the racer reaches its check while this unit is still open
    racer.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], SubjectTaken), outcome
    assert [r.key_id for r in first_store.list_certificates("acme")] == [first]


def test_the_live_keys_naming_a_profile_are_listed_across_tenants(store: Store) -> None:
    _key(store, "Plain")
    kiosks = _key(store, "Kiosks", profile="kiosk")
    _key(store, "Old", profile="gone")
    store.transition_key("acme", "Old", KeyAction.REVOKE, reason="r", confirm="Old", actor="t",
                         ts=TS)
    paused = _key(store, "Paused", tenant="other", profile="kiosk")
    store.transition_key("other", "Paused", KeyAction.SUSPEND, reason="r", confirm=None,
                         actor="t", ts=TS)
    listed = store.keys_with_profiles()
    assert [(k.tenant, k.id, k.profile) for k in listed] == [
        ("acme", kiosks, "kiosk"), ("other", paused, "kiosk")]
