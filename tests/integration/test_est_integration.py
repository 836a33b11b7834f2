"""EST enrollment against a real Switch on loopback, with curl and openssl as the client."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from enroll.authority import Authority
from enroll.issuance import Issuance
from enroll.issuers import load_issuer_key
from enroll.policy import key_id_of
from gateway import serve
from tests.support.est import (
    RunningSwitch,
    documented_script,
    enable_with_key,
    make_deployment,
    openssl_csr,
    pkcs7_to_pem,
    start,
)


async def _run(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)


async def test_enroll_with_curl_and_openssl_then_verify_against_cacerts(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    secret = enable_with_key(config)
    work = tmp_path / "agent"
    work.mkdir()
    key, csr = openssl_csr(work, "agent-1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, tmp_path / "d")
            cacerts = await _run(switch.curl(switch.url("cacerts")))
            assert cacerts.returncode == 0, cacerts.stderr
            ca_pem = pkcs7_to_pem(cacerts.stdout, work, "cacerts")

            enrolled = await _run(switch.curl(
                "-u", f"agent:{secret}", "-H", "Content-Type: application/pkcs10",
                "--data-binary", f"@{csr}", "-w", "\n%{http_code} %{content_type}",
                switch.url("simpleenroll")))
            body, _, status = enrolled.stdout.rpartition(b"\n")
            assert status.startswith(b"200 application/pkcs7-mime"), enrolled.stdout
            cert_pem = pkcs7_to_pem(body, work, "agent-1")
            verified = await _run(["openssl", "verify", "-CAfile", str(ca_pem), "-purpose",
                                   "sslclient", str(cert_pem)])
            assert verified.returncode == 0 and b"OK" in verified.stdout, verified

            cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
            assert cert.subject.rfc4514_string() == "CN=agent-1,OU=demo"
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]

            # Re-enroll with the certificate just issued (TLS client auth), same subject.
            _, csr2 = openssl_csr(work, "agent-1", stem="agent-1-renewal")
            renewed = await _run(switch.curl(
                "--cert", str(cert_pem), "--key", str(key), "-H", "Content-Type: application/pkcs10",
                "--data-binary", f"@{csr2}", "-w", "\n%{http_code}", switch.url("simplereenroll")))
            body2, _, status2 = renewed.stdout.rpartition(b"\n")
            assert status2 == b"200", renewed.stdout
            new_cert = x509.load_pem_x509_certificate(pkcs7_to_pem(body2, work, "renewed").read_bytes())
            assert new_cert.serial_number != cert.serial_number
            assert new_cert.subject == cert.subject
            nursery.cancel_scope.cancel()

    authority = Authority.open(config)
    records = Issuance(authority).list_certificates("demo")
    authority.close()
    assert {r.serial for r in records} == {format(cert.serial_number, "x"),
                                           format(new_cert.serial_number, "x")}
    key_ids = {key_id_of(cert), key_id_of(new_cert)}
    assert len(key_ids) == 1 and None not in key_ids


async def test_refusals_have_statuses_and_reasons_and_store_nothing(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    secret = enable_with_key(config)
    work = tmp_path / "agent"
    work.mkdir()
    _, csr = openssl_csr(work, "agent-2")
    garbage = work / "garbage.b64"
    garbage.write_bytes(b"this is not base64!!\n")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, tmp_path / "d")

            async def post(*args: str, op: str = "simpleenroll") -> bytes:
                result = await _run(switch.curl(*args, "-H", "Content-Type: application/pkcs10",
                                                "-w", "|%{http_code}", switch.url(op)))
                return result.stdout

            assert (await post("--data-binary", f"@{csr}")).endswith(b"credentials_required\n|401")
            wrong = await post("-u", "a:swk_0000000000000000_" + "A" * 43, "--data-binary", f"@{csr}")
            assert wrong.endswith(b"bad_credentials\n|401")
            bad = await post("-u", f"a:{secret}", "--data-binary", f"@{garbage}")
            assert bad.endswith(b"bad_base64\n|400")
            big = work / "big.b64"
            big.write_bytes(b"A" * 200_000)
            assert (await post("-u", f"a:{secret}", "--data-binary", f"@{big}")).endswith(b"|413")
            no_cert = await post("--data-binary", f"@{csr}", op="simplereenroll")
            assert no_cert.endswith(b"certificate_required\n|401")
            unknown = await _run(switch.curl("-w", "|%{http_code}", switch.url("cacerts", "nosuch")))
            assert unknown.stdout.endswith(b"unknown_tenant\n|404")
            nursery.cancel_scope.cancel()
    authority = Authority.open(config)
    assert Issuance(authority).list_certificates("demo") == []
    authority.close()


async def test_the_enrollment_guide_runs_verbatim_with_curl_openssl_and_base64(tmp_path: Path) -> None:
    """Every sh block of docs/enrollment.md, in order, in bash with ``set -euo pipefail``,
    against a real server: only the port and the key secret are substituted."""
    directory = tmp_path / "d"
    config = make_deployment(directory)
    secret = enable_with_key(config)
    work = tmp_path / "author"
    work.mkdir()
    shutil.copy(directory / "pki" / "dev-root-ca.pem", work / "ca.pem")  # as the guide says
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, directory)
            (work / "guide.sh").write_text(documented_script(switch.enroll_port, secret))
            result = await trio.run_process(["bash", "guide.sh"], cwd=work, capture_stdout=True,
                                            capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr.decode()
            nursery.cancel_scope.cancel()
    tenant_ca = work / "tenant-ca.pem"
    agent = x509.load_pem_x509_certificate((work / "agent.pem").read_bytes())
    renewed = x509.load_pem_x509_certificate((work / "next.pem").read_bytes())
    assert agent.subject.rfc4514_string() == renewed.subject.rfc4514_string() == \
        "CN=laptop-0042,OU=demo"
    assert agent.serial_number != renewed.serial_number
    for pem in ("agent.pem", "next.pem"):
        verified = await _run(["openssl", "verify", "-CAfile", str(tenant_ca), str(work / pem)])
        assert verified.returncode == 0, verified
    # The PKCS#12 opened with the one-time password from the reply's header (the guide's last step).
    bundle = (work / "agent-p12.pem").read_text()
    assert "PRIVATE KEY" in bundle and bundle.count("BEGIN CERTIFICATE") == 2
    authority = Authority.open(config)
    assert len(Issuance(authority).list_certificates("demo")) == 3
    authority.close()


def _der_length(data: bytes, at: int) -> tuple[int, int]:
    """(content length, header length) of the DER TLV at ``at``."""
    first = data[at + 1]
    if first < 0x80:
        return first, 2
    n = first & 0x7F
    return int.from_bytes(data[at + 2:at + 2 + n], "big"), 2 + n


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + \
        n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def lax_boolean_copy(cert: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> bytes:
    """``cert`` with its first extension's critical flag encoded as BOOLEAN 0x01 instead of DER's
    0xFF, signed again by its issuer: OpenSSL reads it (any non-zero octet is TRUE), the strict
    DER parser of cryptography refuses it."""
    der = cert.public_bytes(serialization.Encoding.DER)
    outer, outer_header = _der_length(der, 0)
    tbs_len, tbs_header = _der_length(der, outer_header)
    tbs_end = outer_header + tbs_header + tbs_len
    tbs = der[outer_header:tbs_end]
    assert b"\x01\x01\xff" in tbs
    tbs = tbs.replace(b"\x01\x01\xff", b"\x01\x01\x01", 1)
    sig_alg_len, sig_alg_header = _der_length(der, tbs_end)
    sig_alg = der[tbs_end:tbs_end + sig_alg_header + sig_alg_len]
    signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + sig_alg + _tlv(0x03, b"\x00" + signature))


async def test_a_client_certificate_openssl_accepts_but_cryptography_refuses_is_a_refusal_not_a_crash(
        tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    secret = enable_with_key(config)
    work = tmp_path / "agent"
    work.mkdir()
    key, csr = openssl_csr(work, "agent-7")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = await start(nursery, config, tmp_path / "d")
            enrolled = await _run(switch.curl("-u", f"agent:{secret}", "-H",
                                              "Content-Type: application/pkcs10", "--data-binary",
                                              f"@{csr}", switch.url("simpleenroll")))
            cert = x509.load_pem_x509_certificate(
                pkcs7_to_pem(enrolled.stdout, work, "agent-7").read_bytes())
            authority = Authority.open(config)
            issuer_key = load_issuer_key(authority.current_issuer("demo"))
            authority.close()
            assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
            lax = lax_boolean_copy(cert, issuer_key)
            with pytest.raises(ValueError):
                x509.load_der_x509_certificate(lax)
            lax_pem = work / "lax.pem"
            lax_pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(lax)
                                + b"-----END CERTIFICATE-----\n")
            as_client = ("--cert", str(lax_pem), "--key", str(key), "-w", "|%{http_code}")

            # Operations that do not use the client certificate do not look at it ...
            cacerts = await _run(switch.curl(*as_client, switch.url("cacerts")))
            assert cacerts.stdout.endswith(b"|200"), cacerts
            _, csr2 = openssl_csr(work, "agent-8")
            again = await _run(switch.curl(*as_client, "-u", f"agent:{secret}", "-H",
                                           "Content-Type: application/pkcs10", "--data-binary",
                                           f"@{csr2}", switch.url("simpleenroll")))
            assert again.stdout.endswith(b"|200"), again
            # ... and those that do refuse it with a reason, never a 500.
            for op in ("simplereenroll", "serverkeygen"):
                refused = await _run(switch.curl(*as_client, "-H", "Content-Type: application/pkcs10",
                                                 "--data-binary", f"@{csr}", switch.url(op)))
                assert refused.stdout == b"403 certificate_untrusted\n|403", (op, refused)
            nursery.cancel_scope.cancel()


async def test_a_reload_keeps_the_wrong_key_lockout(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "d")
    secret = enable_with_key(config)
    work = tmp_path / "agent"
    work.mkdir()
    _, csr = openssl_csr(work, "agent-9")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            switch = serve.Switch(config)
            listeners = await nursery.start(switch.run)
            running = RunningSwitch(config, listeners["enroll"][0].socket.getsockname()[1],
                                    tmp_path / "d")

            async def enroll(key: str) -> bytes:
                done = await _run(running.curl("-u", f"agent:{key}", "-H",
                                               "Content-Type: application/pkcs10", "--data-binary",
                                               f"@{csr}", "-w", "|%{http_code}",
                                               running.url("simpleenroll")))
                return done.stdout

            wrong = "swk_0000000000000000_" + "A" * 43
            for _ in range(5):
                assert (await enroll(wrong)).endswith(b"bad_credentials\n|401")
            assert (await enroll(secret)).endswith(b"rate_limited\n|429")
            result = await switch.reload()
            assert result.ok and result.generation == 2, result
            # The new configuration's EST service counts the same failures: still locked out.
            after = await enroll(secret)
            assert after.endswith(b"rate_limited\n|429"), after
            nursery.cancel_scope.cancel()
