"""The EST service, request in and reply out, on a real SQLite store (no sockets)."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from enroll import est_wire, pki
from enroll.csr import CsrRequest
from enroll.errors import WrongKeyState
from enroll.est_service import RENEW_BEFORE_HEADER, EstReply, EstRequest
from enroll.policy import identity_uri, key_id_of
from tests.support.est_service import NOW, Env, csr


def issued(reply: EstReply) -> x509.Certificate:
    assert reply.status == 200, reply
    from cryptography.hazmat.primitives.serialization import pkcs7

    [cert] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(reply.body.split())))
    return cert


def test_enrollment_issues_a_client_certificate_from_the_profile(env: Env) -> None:
    body, key = csr()
    reply = env.call("simpleenroll", body)
    cert = issued(reply)
    assert reply.content_type == "application/pkcs7-mime; smime-type=certs-only"
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=agent-1,OU=acme"
    assert key_id_of(cert) == env.authority.get_key("acme", "Fleet").id
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity_uri("acme", "agent-1")]
    assert (cert.not_valid_after_utc - NOW) == dt.timedelta(days=30)
    [record] = env.issuance.list_certificates("acme")
    assert record.serial == format(cert.serial_number, "x") and record.key_id == key_id_of(cert)
    used = env.authority.get_key("acme", "Fleet")
    assert used.certificates_issued == 1 and used.last_used_at == int(NOW.timestamp())


def test_csr_asking_for_ca_true_extra_sans_and_ekus_gets_none_of_them(env: Env) -> None:
    body, _ = csr(extensions=True, extra_subject=True)
    cert = issued(env.call("simpleenroll", body))
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == []
    assert sans.get_values_for_type(x509.RFC822Name) == []
    assert "Evil Corp" not in cert.subject.rfc4514_string()


def test_csr_with_a_broken_signature_is_refused_and_nothing_is_stored(env: Env) -> None:
    body, _ = csr()
    der = bytearray(base64.b64decode(body))
    der[-5] ^= 0xFF  # inside the signature
    reply = env.call("simpleenroll", base64.encodebytes(bytes(der)))
    assert (reply.status, reply.result) == (400, "bad_csr_signature")
    assert env.issuance.list_certificates("acme") == []
    key = env.authority.get_key("acme", "Fleet")
    assert key.certificates_issued == 0 and key.last_used_at is None  # a refusal changes nothing


@pytest.mark.parametrize(("body", "reason"), [
    (b"%%% not base64 %%%", "bad_base64"),
    (base64.encodebytes(b"not a CSR at all"), "bad_csr"),
    (b"", "bad_base64"),
])
def test_malformed_bodies_are_refused_with_a_reason(env: Env, body: bytes, reason: str) -> None:
    reply = env.call("simpleenroll", body)
    assert (reply.status, reply.result) == (400, reason)


def test_rsa_1024_and_wrong_subjects_are_refused(env: Env) -> None:
    body, _ = csr(key=pki.generate_key("rsa-1024"))
    assert env.call("simpleenroll", body).result == "key_type_not_allowed"
    body, _ = csr(cn="bad name with spaces")
    assert env.call("simpleenroll", body).result == "subject_not_allowed"


def test_wrong_content_type_is_415(env: Env) -> None:
    body, _ = csr()
    reply = env.call("simpleenroll", body, content_type=b"text/plain")
    assert (reply.status, reply.result) == (415, "unsupported_media_type")


def test_bearer_works_like_basic(env: Env) -> None:
    body, _ = csr()
    issued(env.call("simpleenroll", body, auth=f"Bearer {env.secret}"))


def test_wrong_key_is_401_and_brute_force_gets_429(env: Env) -> None:
    body, _ = csr()
    wrong = "Bearer swk_0123456789abcdef_" + "A" * 43
    for _ in range(5):
        reply = env.call("simpleenroll", body, auth=wrong)
        assert (reply.status, reply.result) == (401, "bad_credentials")
        assert ("WWW-Authenticate", 'Basic realm="switch-est"') in reply.headers
    locked = env.call("simpleenroll", body, auth=wrong)
    assert (locked.status, locked.result) == (429, "rate_limited")
    assert any(h == "Retry-After" and int(v) > 0 for h, v in locked.headers)
    # even the right key is refused from that source while it is locked out ...
    assert env.call("simpleenroll", body).status == 429
    # ... but another source is not affected
    issued(env.call("simpleenroll", body, source="10.0.0.2"))


def test_suspended_key_can_neither_enroll_nor_renew_but_its_certificate_stays_valid(env: Env) -> None:
    body, key = csr()
    cert = issued(env.call("simpleenroll", body))
    env.authority.suspend_key("acme", "Fleet", reason="pause", actor="t")
    assert (env.call("simpleenroll", body).status, env.call("simpleenroll", body).result) == \
        (403, "key_suspended")
    renewal, _ = csr(key=key)
    reply = env.call("simplereenroll", renewal, auth=None, chain=[cert])
    assert (reply.status, reply.result) == (403, "key_suspended")
    [record] = env.issuance.list_certificates("acme")
    assert record.state == "valid"
    refusals = [e for e in env.authority.audit_entries("acme") if e.action == "enrollment.refused"]
    assert refusals and refusals[-1].reason == "key_suspended"
    env.authority.reactivate_key("acme", "Fleet", actor="t")
    issued(env.call("simplereenroll", renewal, auth=None, chain=[cert]))


def test_revoked_key_fails_for_enrollment_and_renewal(env: Env) -> None:
    body, key = csr()
    cert = issued(env.call("simpleenroll", body))
    env.authority.revoke_key("acme", "Fleet", reason="leak", confirm="Fleet", actor="t")
    assert env.call("simpleenroll", body).result == "key_revoked"
    renewal, _ = csr(key=key)
    assert env.call("simplereenroll", renewal, auth=None, chain=[cert]).result == "key_revoked"


def test_renewal_needs_same_subject_a_valid_unrevoked_certificate_from_this_tenant(env: Env) -> None:
    body, key = csr("agent-1")
    cert = issued(env.call("simpleenroll", body))
    other, _ = csr("agent-2", key=key)
    assert env.call("simplereenroll", other, auth=None, chain=[cert]).result == "subject_not_allowed"
    same, _ = csr("agent-1", key=key)
    late = NOW + dt.timedelta(days=31)
    assert env.call("simplereenroll", same, auth=None, chain=[cert], now=late).result == \
        "certificate_expired"
    assert env.call("simplereenroll", same, auth=None, chain=[cert], sni="other.test").result == \
        "certificate_untrusted"
    stranger_key = pki.generate_key()
    stranger_ca = pki.make_ca(pki.name("acme"), stranger_key, now=NOW, validity=dt.timedelta(days=9))
    forged = pki.make_leaf(cert.subject, key.public_key(), (stranger_ca, stranger_key), now=NOW,
                           validity=dt.timedelta(days=1))
    assert env.call("simplereenroll", same, auth=None, chain=[forged]).result == \
        "certificate_untrusted"
    env.issuance.revoke_certificate(format(cert.serial_number, "x"), reason="lost", actor="t")
    assert env.call("simplereenroll", same, auth=None, chain=[cert]).result == "certificate_revoked"


def test_disabled_service_refuses_enrollment_and_cacerts(env: Env) -> None:
    env.authority.disable_service("acme", actor="t")
    body, _ = csr()
    assert env.call("simpleenroll", body).result == "service_disabled"
    assert env.call("cacerts", auth=None).result == "service_disabled"


def test_tenant_from_label_and_sni(env: Env) -> None:
    body, _ = csr()
    assert env.call("simpleenroll", body, label="other").result == "tenant_mismatch"
    assert env.call("simpleenroll", body, label="nosuch").result == "unknown_tenant"
    assert env.call("simpleenroll", body, sni=None).result == "unknown_tenant"
    issued(env.call("simpleenroll", body, sni=None, label="acme"))
    # a key of tenant acme does not work for tenant other
    assert env.call("simpleenroll", body, sni="other.test").result == "bad_credentials"


def test_manual_approval_answers_202_then_the_certificate_once_approved(env: Env) -> None:
    env.authority.generate_key("acme", "Manual", actor="t", profile="manual")
    _, secret = env.authority.generate_key("other", "Manual", actor="t", profile="manual")
    env.secret = secret
    body, _ = csr()
    first = env.call("simpleenroll", body, sni="other.test")
    assert (first.status, first.result) == (202, "pending")
    assert ("Retry-After", "60") in first.headers
    assert env.call("simpleenroll", body, sni="other.test").status == 202
    [pending] = env.issuance.list_requests("other", "pending")
    assert env.issuance.list_certificates("other") == []
    env.issuance.approve(pending.id, actor="admin")
    cert = issued(env.call("simpleenroll", body, sni="other.test"))
    again = issued(env.call("simpleenroll", body, sni="other.test"))
    assert again == cert and len(env.issuance.list_certificates("other")) == 1
    body2, _ = csr("agent-2")
    assert env.call("simpleenroll", body2, sni="other.test").status == 202
    [pending2] = env.issuance.list_requests("other", "pending")
    env.issuance.reject(pending2.id, reason="unknown device", actor="admin")
    assert env.call("simpleenroll", body2, sni="other.test").result == "request_rejected"
    actions = [e.action for e in env.authority.audit_entries("other")]
    assert "request.approved" in actions and "request.rejected" in actions


def test_serverkeygen_returns_key_and_certificate_as_multipart(env: Env) -> None:
    body, _ = csr("kiosk-1")
    reply = env.call("serverkeygen", body)
    assert reply.status == 200 and reply.content_type and reply.content_type.startswith("multipart/mixed")
    assert b"application/pkcs8" in reply.body and b"smime-type=certs-only" in reply.body


def test_serverkeygen_pkcs12_with_a_given_password(env: Env) -> None:
    body, _ = csr("kiosk-2")
    reply = env.call("serverkeygen-pkcs12", body, headers={"x-switch-pkcs12-password": b"hunter22"})
    assert reply.status == 200 and reply.content_type == "application/pkcs12"
    assert not any(h.lower() == "x-switch-pkcs12-password" for h, _ in reply.headers)
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(b"".join(reply.body.split())),
                                                    b"hunter22")
    assert key is not None and cert is not None and cert.public_key() == key.public_key()


def test_serverkeygen_pkcs12_random_password_is_returned_once_and_empty_is_refused(env: Env) -> None:
    body, _ = csr("kiosk-3")
    reply = env.call("serverkeygen-pkcs12", body)
    password = dict(reply.headers)["x-switch-pkcs12-password"]
    assert len(password) >= 20
    key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(b"".join(reply.body.split())),
                                                 password.encode())
    assert key is not None
    empty = env.call("serverkeygen-pkcs12", body, headers={"x-switch-pkcs12-password": b""})
    assert (empty.status, empty.result) == (400, "empty_password")


def test_many_enrollments_get_distinct_serials(env: Env) -> None:
    serials = {issued(env.call("simpleenroll", csr(f"agent-{i}")[0])).serial_number for i in range(40)}
    assert len(serials) == 40


def test_cacerts_and_csrattrs(env: Env) -> None:
    reply = env.call("cacerts", auth=None)
    assert reply.status == 200 and reply.content_type == "application/pkcs7-mime"
    attrs_reply = env.call("csrattrs", auth=None)
    assert attrs_reply.status == 200 and attrs_reply.content_type == "application/csrattrs"
    der = base64.b64decode(b"".join(attrs_reply.body.split()))
    # The default profile's EC curves as the value of one id-ecPublicKey attribute (RFC 7030
    # 4.5.2), then RSA once, as a bare OID.
    assert der == est_wire.csrattrs([("1.2.840.10045.2.1", ["1.2.840.10045.3.1.7", "1.3.132.0.34"]),
                                     "1.2.840.113549.1.1.1"])


@pytest.mark.parametrize(("path", "status"), [
    ("/.well-known/est/nope", 404), ("/other", 404), ("/.well-known/est/a/b/simpleenroll", 404),
])
def test_unknown_paths_are_404(env: Env, path: str, status: int) -> None:
    reply = env.service.handle(EstRequest("GET", path, {}, b"", "acme.test", None, "1.1.1.1"), NOW, 1.0)
    assert reply.status == status


def test_wrong_method_is_405(env: Env) -> None:
    reply = env.service.handle(
        EstRequest("GET", "/.well-known/est/simpleenroll", {}, b"", "acme.test", None, "1"), NOW, 1.0)
    assert reply.status == 405


# ------------------------------------------------------------- server-side keys and approvals

def _manual_key(env: Env) -> None:
    """Make the calls use a key of tenant ``other`` whose profile asks for manual approval."""
    _, env.secret = env.authority.generate_key("other", "Manual", actor="t", profile="manual")


def test_serverkeygen_under_manual_approval_waits_and_one_approval_yields_one_key_pair(
        env: Env) -> None:
    _manual_key(env)
    body, _ = csr("kiosk-9")
    first = env.call("serverkeygen", body, sni="other.test")
    assert (first.status, first.result) == (202, "pending")
    assert ("Retry-After", "60") in first.headers
    # The same request (same key, same CN), whatever the CSR's key or the reply's format.
    assert env.call("serverkeygen", csr("kiosk-9")[0], sni="other.test").status == 202
    assert env.call("serverkeygen-pkcs12", body, sni="other.test").status == 202
    [pending] = env.issuance.list_requests("other")
    assert (pending.state, pending.operation, pending.subject) == ("pending", "serverkeygen",
                                                                   "kiosk-9")
    assert env.issuance.list_certificates("other") == []
    env.issuance.approve(pending.id, actor="admin")

    reply = env.call("serverkeygen", body, sni="other.test")
    assert reply.status == 200 and b"application/pkcs8" in reply.body
    [record] = env.issuance.list_certificates("other")
    assert record.subject == "CN=kiosk-9,OU=other" and record.serial == reply.serial
    [issued_request] = env.issuance.list_requests("other")
    assert (issued_request.state, issued_request.certificate_serial) == ("issued", record.serial)

    # The key pair was sent once: asking again is a new request for a new approval.
    again = env.call("serverkeygen", body, sni="other.test")
    assert (again.status, again.result) == (202, "pending")
    requests = env.issuance.list_requests("other")
    assert sorted(r.state for r in requests) == ["issued", "pending"]
    assert len(env.issuance.list_certificates("other")) == 1
    [new] = env.issuance.list_requests("other", "pending")
    env.issuance.reject(new.id, reason="one is enough", actor="admin")
    assert env.call("serverkeygen-pkcs12", body, sni="other.test").result == "request_rejected"
    assert len(env.issuance.list_certificates("other")) == 1


def test_serverkeygen_approval_covers_the_key_and_cn_only(env: Env) -> None:
    _manual_key(env)
    env.call("serverkeygen", csr("kiosk-1")[0], sni="other.test")
    [pending] = env.issuance.list_requests("other")
    env.issuance.approve(pending.id, actor="admin")
    other_cn = env.call("serverkeygen", csr("kiosk-2")[0], sni="other.test")
    assert other_cn.status == 202  # another CN is another request
    # simpleenroll with the same CN is another request too (it brings its own key)
    assert env.call("simpleenroll", csr("kiosk-1")[0], sni="other.test").status == 202
    assert env.issuance.list_certificates("other") == []


def test_serverkeygen_authenticated_by_a_certificate_must_ask_for_its_cn(env: Env) -> None:
    body, _ = csr("laptop-0042")
    cert = issued(env.call("simpleenroll", body))
    ceo, _ = csr("ceo-laptop")
    for op in ("serverkeygen", "serverkeygen-pkcs12"):
        reply = env.call(op, ceo, auth=None, chain=[cert])
        assert (reply.status, reply.result) == (400, "subject_not_allowed"), op
    assert len(env.issuance.list_certificates("acme")) == 1
    late = env.call("serverkeygen", body, auth=None, chain=[cert], now=NOW + dt.timedelta(days=31))
    assert late.result == "certificate_expired"
    same = env.call("serverkeygen", body, auth=None, chain=[cert])
    assert same.status == 200
    [_, record] = env.issuance.list_certificates("acme")
    assert record.subject == "CN=laptop-0042,OU=acme"


def test_serverkeygen_with_a_certificate_is_a_renewal_and_is_not_held_for_approval(env: Env) -> None:
    _manual_key(env)
    body, _ = csr("kiosk-5")
    env.call("simpleenroll", body, sni="other.test")
    [pending] = env.issuance.list_requests("other")
    env.issuance.approve(pending.id, actor="admin")
    cert = issued(env.call("simpleenroll", body, sni="other.test"))
    reply = env.call("serverkeygen", body, auth=None, chain=[cert], sni="other.test")
    assert reply.status == 200
    assert len(env.issuance.list_certificates("other")) == 2


@pytest.mark.parametrize(("password", "reason"), [(b"", "empty_password"),
                                                  (b"p" * 1025, "bad_password")])
@pytest.mark.parametrize("manual", [False, True], ids=["auto", "manual"])
def test_a_refused_pkcs12_password_stores_nothing(env: Env, password: bytes, reason: str,
                                                  manual: bool) -> None:
    sni = "acme.test"
    if manual:
        _manual_key(env)
        sni = "other.test"
    body, _ = csr("kiosk-7")
    reply = env.call("serverkeygen-pkcs12", body, sni=sni,
                     headers={"x-switch-pkcs12-password": password})
    assert (reply.status, reply.result) == (400, reason)
    for tenant in ("acme", "other"):
        assert env.issuance.list_certificates(tenant) == []
        assert env.issuance.list_requests(tenant) == []
    assert all(k.certificates_issued == 0 for k in env.authority.list_keys("acme"))
    ok = env.call("serverkeygen-pkcs12", body, sni=sni,
                  headers={"x-switch-pkcs12-password": b"p" * 1024})
    assert ok.status == (202 if manual else 200)


def test_an_approved_request_repeated_after_its_certificate_was_revoked_is_refused(env: Env) -> None:
    _manual_key(env)
    body, key = csr("agent-3")
    env.call("simpleenroll", body, sni="other.test")
    [pending] = env.issuance.list_requests("other")
    env.issuance.approve(pending.id, actor="admin")
    cert = issued(env.call("simpleenroll", body, sni="other.test"))
    env.issuance.revoke_certificate(format(cert.serial_number, "x"), reason="stolen", actor="admin")
    again = env.call("simpleenroll", csr("agent-3", key=key)[0], sni="other.test")
    assert (again.status, again.result) == (403, "certificate_revoked")
    # A new key pair is a new request, for the admin to decide.
    fresh = env.call("simpleenroll", csr("agent-3")[0], sni="other.test")
    assert (fresh.status, fresh.result) == (202, "pending")


def test_an_approved_request_repeated_after_its_certificate_expired_is_refused(env: Env) -> None:
    _manual_key(env)
    body, _ = csr("agent-4")
    env.call("simpleenroll", body, sni="other.test")
    [pending] = env.issuance.list_requests("other")
    env.issuance.approve(pending.id, actor="admin")
    issued(env.call("simpleenroll", body, sni="other.test"))
    late = env.call("simpleenroll", body, sni="other.test", now=NOW + dt.timedelta(days=31))
    assert (late.status, late.result) == (403, "certificate_expired")


def test_one_approval_issues_once_even_when_two_processes_race(env: Env) -> None:
    _manual_key(env)
    env.call("serverkeygen", csr("kiosk-8")[0], sni="other.test")
    [pending] = env.issuance.list_requests("other")
    env.issuance.approve(pending.id, actor="admin")
    key = env.authority.get_key("other", "Manual")
    profile = env.service.config.profiles["manual"]
    request = CsrRequest(pki.generate_key().public_key(), "ec-p256", "kiosk-8")
    env.issuance.issue("other", request, profile=profile, key=key, now=NOW, pending_id=pending.id)
    with pytest.raises(WrongKeyState):  # the loser of the race: rolled back, nothing stored
        env.issuance.issue("other", request, profile=profile, key=key, now=NOW,
                           pending_id=pending.id)
    assert len(env.issuance.list_certificates("other")) == 1


def test_a_key_suspended_after_authentication_issues_nothing(env: Env) -> None:
    """The key is authenticated, then suspended (by another process) before the certificate is
    recorded: the issuing transaction re-checks its state and stores nothing."""
    key = env.authority.get_key("acme", "Fleet")
    env.authority.suspend_key("acme", "Fleet", reason="paused", actor="admin")
    request = CsrRequest(pki.generate_key().public_key(), "ec-p256", "agent-9")
    with pytest.raises(WrongKeyState, match="suspended"):
        env.issuance.issue("acme", request, profile=env.service.config.profiles["default"],
                           key=key, now=NOW)
    assert env.issuance.list_certificates("acme") == []
    after = env.authority.get_key("acme", "Fleet")
    assert after.certificates_issued == 0 and after.last_used_at is None


# ------------------------------------------------------------- the renew-before window (Switch)

def _window(reply: EstReply) -> str | None:
    """The ``Switch-Renew-Before`` header of a reply, None without one."""
    values = [v for h, v in reply.headers if h.lower() == RENEW_BEFORE_HEADER.lower()]
    assert len(values) <= 1, reply.headers
    return values[0] if values else None


def test_every_reply_with_a_certificate_names_the_profiles_renew_before_window(env: Env) -> None:
    week = str(7 * 86400)  # the default profile's renew_before
    body, key = csr("laptop-1")
    first = env.call("simpleenroll", body)
    assert _window(first) == week
    cert = issued(first)
    renewal = env.call("simplereenroll", csr("laptop-1", key=key)[0], auth=None, chain=[cert])
    assert renewal.status == 200 and _window(renewal) == week
    for op in ("serverkeygen", "serverkeygen-pkcs12"):
        by_key = env.call(op, csr("kiosk-1")[0])
        by_cert = env.call(op, body, auth=None, chain=[cert])
        assert (by_key.status, by_cert.status) == (200, 200), op
        assert _window(by_key) == _window(by_cert) == week, op
    # Refusals and certificate authority chains carry no window.
    assert _window(env.call("simpleenroll", body, auth="Bearer swk_wrong")) is None
    assert _window(env.call("cacerts", auth=None)) is None


def test_the_window_is_the_issuing_keys_own_profile_when_it_has_one(env: Env) -> None:
    _, env.secret = env.authority.generate_key("other", "Kiosks", actor="t", profile="kiosk")
    body, key = csr("kiosk-1")
    first = env.call("simpleenroll", body, sni="other.test")
    assert _window(first) == "3600"
    cert = issued(first)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=1)  # the kiosk profile issued it
    # Renewals find the key (and so its profile) through the certificate's record.
    renewal = env.call("simplereenroll", csr("kiosk-1", key=key)[0], auth=None, chain=[cert],
                       sni="other.test")
    assert renewal.status == 200 and _window(renewal) == "3600"
    for op in ("serverkeygen", "serverkeygen-pkcs12"):
        for reply in (env.call(op, body, sni="other.test"),
                      env.call(op, body, auth=None, chain=[cert], sni="other.test")):
            assert reply.status == 200 and _window(reply) == "3600", op
    # The tenant's other keys keep the tenant's profile.
    _, env.secret = env.authority.generate_key("other", "Laptops", actor="t")
    assert _window(env.call("simpleenroll", csr("laptop-1")[0], sni="other.test")) == \
        str(7 * 86400)


def test_an_approved_request_repeated_gets_the_window_again_and_a_pending_one_none(
        env: Env) -> None:
    _, env.secret = env.authority.generate_key("other", "Gated", actor="t", profile="gated")
    body, _ = csr("agent-5")
    pending = env.call("simpleenroll", body, sni="other.test")
    assert pending.status == 202 and _window(pending) is None
    [request] = env.issuance.list_requests("other")
    env.issuance.approve(request.id, actor="admin")
    first = env.call("simpleenroll", body, sni="other.test")
    again = env.call("simpleenroll", body, sni="other.test")
    assert issued(again) == issued(first)
    assert _window(first) == _window(again) == str(2 * 86400)
