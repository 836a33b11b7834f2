"""How the reference agent gets its certificates: a first one over EST with the provisioning key,
renewals with ``simplereenroll`` once the renew-before window opens, and the choice of which
certificates to try.

The renew-before window is ``--renew-before`` when given, else the one the enrollment port named
with the certificate (``Switch-Renew-Before``: the issuing profile's ``renew_before``), else a
third of the certificate's lifetime (step-ca's default: ``step ca renew --daemon`` renews after
two thirds); never more than half the lifetime, so that a certificate cut short by its issuer's
expiry is not renewed as soon as it is issued. Key pairs are made here and never leave the
machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import attrs
import structlog
from cryptography import x509

from gateway.client import pki
from gateway.client.agent_settings import AgentError, AgentSettings, AgentStopped, normalise_pin
from gateway.client.credentials import Credential, CredentialStore
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr

log = structlog.get_logger("switch.agent")

#: Refusals of a first enrollment that no retry can change: the provisioning key is revoked.
STOPPING_REFUSALS = frozenset({"key_revoked"})

#: Without ``--renew-before`` or a window from the server (a certificate from before Switch told
#: it, another EST server): renew when this share of the lifetime is left, as step-ca does.
FALLBACK_RENEW_SHARE = 1 / 3


def renewal_window(credential: Credential, override: dt.timedelta | None
                   ) -> tuple[dt.timedelta, str]:
    """How long before expiry to renew, and where that came from: ``override``
    (``--renew-before``: ``command_line``), else the window the enrollment port named with the
    certificate (``server``), else a third of its lifetime (``lifetime``). At most half the
    lifetime."""
    cert = credential.cert
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if override is not None:
        window, source = override, "command_line"
    elif credential.renew_before is not None:
        window, source = credential.renew_before, "server"
    else:
        window, source = lifetime * FALLBACK_RENEW_SHARE, "lifetime"
    return min(window, lifetime / 2), source


def whole_seconds(window: dt.timedelta | None) -> int | None:
    return None if window is None else int(window.total_seconds())


def explain_est_error(exc: EstClientError) -> str:
    """What an EST failure means for the agent, in words an operator can act on."""
    if exc.status == 202:
        return (f"enrollment is waiting for an administrator's approval (ask again in "
                f"{exc.retry_after or 60}s)")
    if exc.status == 0:
        return f"the enrollment port could not be used: {exc.reason}"
    return f"the enrollment port refused: {exc.status} {exc.reason}"


@attrs.define(eq=False)
class Enrollment:
    """Enrollment and renewal for one agent, over its ``CredentialStore``."""

    settings: AgentSettings
    store: CredentialStore
    clock: Callable[[], dt.datetime]

    def renewal_window(self, credential: Credential) -> tuple[dt.timedelta, str]:
        return renewal_window(credential, self.settings.renew_before)

    def renewal_time(self, credential: Credential) -> dt.datetime:
        """When the renew-before window opens (``renewal_window`` before expiry)."""
        return credential.cert.not_valid_after_utc - self.renewal_window(credential)[0]

    def renewal_due(self, credential: Credential) -> bool:
        return self.clock() >= self.renewal_time(credential)

    def est(self, client_cert: Credential | None = None) -> EstClient:
        if self.settings.enroll is None:
            raise AgentError("no enrollment address (--enroll)")
        host, port = self.settings.enroll
        pin = normalise_pin(self.settings.pin_sha256) if self.settings.pin_sha256 else None
        return EstClient(EstServer(host, port, self.settings.server_name, self.settings.ca_file, pin),
                         timeout_s=self.settings.timeout_s,
                         client_cert=(client_cert.cert_file, client_cert.key_file) if client_cert else None)

    async def enroll(self, common_name: str | None = None) -> Credential:
        """A first certificate, with the provisioning key."""
        common_name = common_name or self.settings.common_name
        if not self.settings.key_secret or not common_name:
            raise AgentError("no usable certificate: a provisioning key (--key-file) and a name "
                             "(--name) are needed to enroll")
        key = pki.generate_key(self.settings.key_type)
        async with self.est() as est:
            try:
                issued = await est.simpleenroll_issued(make_csr(common_name, key),
                                                       self.settings.key_secret)
            except EstClientError as exc:
                if exc.reason in STOPPING_REFUSALS:
                    raise AgentStopped(
                        f"the enrollment port refused the provisioning key: {exc.status} "
                        f"{exc.reason}; this agent cannot enroll again (ask the tenant's "
                        "security admin for a new key)") from exc
                raise
        cert = issued.certificate
        log.info("enrolled", serial=format(cert.serial_number, "x"),
                 not_after=cert.not_valid_after_utc.isoformat(),
                 renew_before_s=whole_seconds(issued.renew_before))
        return self.store.save("provisioned", issued, key)

    async def renew(self, credential: Credential) -> Credential:
        """A new key and certificate for the same subject, authenticated by the current one."""
        current = credential.cert
        names = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        key = pki.generate_key(self.settings.key_type)
        async with self.est(credential) as est:
            issued = await est.simplereenroll_issued(make_csr(str(names[0].value), key))
        cert = issued.certificate
        log.info("renewed", credential=credential.name, old_serial=format(current.serial_number, "x"),
                 serial=format(cert.serial_number, "x"), not_after=cert.not_valid_after_utc.isoformat(),
                 renew_before_s=whole_seconds(issued.renew_before))
        return self.store.save(credential.name, issued, key)

    async def ensure_credentials(self) -> list[Credential]:
        """The certificates to try: each renewed first if its window is open (a failed renewal
        keeps the current one); expired ones left out. With none left, enroll with the
        provisioning key when there is one, else say why nothing can connect."""
        out: list[Credential] = []
        for credential in self.store.credentials():
            if self.settings.enroll is not None and self.renewal_due(credential) \
                    and credential.usable_at(self.clock()):
                try:
                    credential = await self.renew(credential)
                except EstClientError as exc:
                    log.warning("renewal_failed", credential=credential.name, status=exc.status,
                                reason=exc.reason)
            out.append(credential)
        now = self.clock()
        usable = [c for c in out if c.usable_at(now)]
        if usable:
            return usable
        revoked = [c for c in self.store.credentials(revoked=True)
                   if CredentialStore.is_revoked(c.cert_file, c.cert)]
        if self.settings.key_secret and self.settings.enroll is not None:
            if out or revoked:
                log.warning("no_usable_certificate", reenroll=True,
                            certificates=[f"{c.name}: {pki.validity_problem(c.cert, now)}" for c in out]
                            + [f"{c.name}: revoked" for c in revoked])
            names = [c.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                     for c in (*out, *revoked) if c.name == "provisioned"]
            fallback = str(names[0][0].value) if names and names[0] else None
            return [await self.enroll(self.settings.common_name or fallback)]
        if revoked:
            raise AgentStopped("every certificate this agent could use was revoked ("
                               + ", ".join(c.name for c in revoked) + ") and it has no "
                               "provisioning key and enrollment address to enroll again")
        if out:
            raise AgentError("no usable certificate: " + "; ".join(
                f"{c.name}: {pki.validity_problem(c.cert, now)}" for c in out)
                + " (a provisioning key and --enroll would get a new one)")
        raise AgentError(f"no certificate in {self.store.certs_dir} and no provisioning key "
                         "(--key-file) and enrollment address (--enroll) to get one")
