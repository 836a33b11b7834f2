"""The reference agent's credentials on disk: its certificates with their keys, the renew-before
window the enrollment port named with each, and the name of the one that last worked.

The layout of the agent's directory::

    certs/NAME.pem    the certificate (chain)
    certs/NAME.key    its private key, mode 0600
    certs/NAME.json   mode 0644: the renew-before window the enrollment port named with this
                      certificate, bound to it by its serial (a Switch extension, optional)
    certs/NAME.revoked  the serial of this certificate when the gateway refused it as revoked
                      (TLS alert certificate_revoked): it is not tried again
    preferred         the name of the certificate that last worked

Every file is written whole to a temporary name and renamed, so a crash leaves the old file or
the new one; a pair left mismatched by a crash between two renames is skipped when read.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import attrs
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.client import pki
from gateway.client.est_client import Issued

log = structlog.get_logger("switch.agent")

PREFERRED = "preferred"
#: ``certs/NAME.json``: per-certificate state (the server's renew-before window), bound to the
#: certificate by its serial, so that a file left from another certificate is never applied.
STATE_SUFFIX = ".json"
#: ``certs/NAME.revoked``: the serial of a certificate the gateway said is revoked.
REVOKED_SUFFIX = ".revoked"


@attrs.frozen
class Credential:
    name: str
    cert_file: Path
    key_file: Path
    cert: x509.Certificate = attrs.field(eq=False, repr=False)
    #: The renew-before window the enrollment port named with this certificate, if it did.
    renew_before: dt.timedelta | None = None

    def certificate(self) -> x509.Certificate:
        return self.cert

    def usable_at(self, now: dt.datetime) -> bool:
        return pki.validity_problem(self.cert, now) is None


@attrs.define(eq=False)
class CredentialStore:
    """The agent's directory (see the module's layout)."""

    directory: Path

    @property
    def certs_dir(self) -> Path:
        return self.directory / "certs"

    def credentials(self, *, revoked: bool = False) -> list[Credential]:
        """Every certificate with its key, the preferred one first, then by name; one marked
        revoked (``mark_revoked``) only when ``revoked`` is true. A pair that does not load (or
        whose key is not the certificate's) is left out with a warning; a key file others may
        read is tightened to 0600."""
        found: list[Credential] = []
        for cert_file in sorted(self.certs_dir.glob("*.pem")):
            key_file = cert_file.with_suffix(".key")
            if not key_file.exists():
                continue
            try:
                cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
                key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("credential_unreadable", credential=cert_file.stem, error=str(exc))
                continue
            if key.public_key() != cert.public_key():
                log.warning("credential_key_mismatch", credential=cert_file.stem)
                continue
            if not revoked and self.is_revoked(cert_file, cert):
                continue
            if key_file.stat().st_mode & 0o077:
                log.warning("key_file_tightened", file=str(key_file))
                key_file.chmod(0o600)
            found.append(Credential(cert_file.stem, cert_file, key_file, cert,
                                    self._stored_window(cert_file, cert)))
        preferred = self.preferred()
        return sorted(found, key=lambda c: c.name != preferred)

    def mark_revoked(self, credential: Credential) -> None:
        """Note that the gateway refused ``credential`` as revoked, so that it is not tried
        again (written atomically; bound to the certificate by its serial, so a new certificate
        saved under the same name is tried)."""
        target = credential.cert_file.with_suffix(REVOKED_SUFFIX)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(format(credential.cert.serial_number, "x") + "\n")
        tmp.replace(target)

    @staticmethod
    def is_revoked(cert_file: Path, cert: x509.Certificate) -> bool:
        try:
            marked = cert_file.with_suffix(REVOKED_SUFFIX).read_text().strip()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("credential_state_unreadable", credential=cert_file.stem, error=str(exc))
            return False
        return marked == format(cert.serial_number, "x")

    def preferred(self) -> str | None:
        try:
            return (self.directory / PREFERRED).read_text().strip() or None
        except FileNotFoundError:
            return None

    def remember(self, credential: Credential) -> None:
        """Write ``preferred`` atomically (a crash leaves the old name or the new one)."""
        target = self.directory / PREFERRED
        tmp = target.with_name(f".{PREFERRED}.tmp")
        tmp.write_text(credential.name + "\n")
        tmp.replace(target)

    @staticmethod
    def _stored_window(cert_file: Path, cert: x509.Certificate) -> dt.timedelta | None:
        """The window in ``NAME.json`` when it was stored for this very certificate (same
        serial); else ``None`` (no file: an older agent or a server that did not say)."""
        state_file = cert_file.with_suffix(STATE_SUFFIX)
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("credential_state_unreadable", credential=cert_file.stem, error=str(exc))
            return None
        if not isinstance(state, dict) or state.get("serial") != format(cert.serial_number, "x"):
            return None  # another certificate's: a crash between the renames of save()
        seconds = state.get("renew_before_s")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            log.warning("credential_state_unreadable", credential=cert_file.stem,
                        error=f"renew_before_s is not a number of seconds: {seconds!r}")
            return None
        return dt.timedelta(seconds=seconds)

    def save(self, name: str, issued: Issued, key: pki.PrivateKey) -> Credential:
        """Store a new certificate and its key as ``name`` (replacing what had that name)."""
        cert = issued.certificate
        self.certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file, cert_file = self.certs_dir / f"{name}.key", self.certs_dir / f"{name}.pem"
        state_file = cert_file.with_suffix(STATE_SUFFIX)
        # Every file is complete before any is replaced; a crash between the renames leaves a
        # pair whose key is not the certificate's, which credentials() skips, or a state file
        # of the previous certificate, which its serial keeps from being applied.
        new_key = key_file.with_name(f"{key_file.name}.new")
        pki.write_private(new_key, pki.key_pem(key))
        tmp = cert_file.with_name(f".{cert_file.name}.tmp")
        tmp.write_bytes(pki.cert_pem(cert))
        tmp_state = state_file.with_name(f".{state_file.name}.tmp")
        if issued.renew_before is not None:
            tmp_state.write_text(json.dumps({
                "serial": format(cert.serial_number, "x"),
                "renew_before_s": int(issued.renew_before.total_seconds())}) + "\n")
            tmp_state.chmod(0o644)  # not a secret
        new_key.replace(key_file)
        tmp.replace(cert_file)
        cert_file.with_suffix(REVOKED_SUFFIX).unlink(missing_ok=True)  # another certificate's
        if issued.renew_before is not None:
            tmp_state.replace(state_file)
        else:
            state_file.unlink(missing_ok=True)
        return Credential(name, cert_file, key_file, cert, issued.renew_before)
