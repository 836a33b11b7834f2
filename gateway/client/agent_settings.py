"""What the reference agent is told (``AgentSettings``, the server pin's form) and the errors
that say why it cannot go on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs


class AgentError(Exception):
    """The agent cannot go on (no credentials and no key to enroll with, every certificate
    refused, the server not trusted, ...). The message says what to fix."""


class ServerNotTrusted(AgentError):
    """The server failed authentication (CA file or public-key pin): nothing is sent to it and no
    other certificate is tried, since none would change that."""


class GatewayUnreachable(AgentError):
    """No connection to the gateway at all (refused, unresolvable, no answer in time)."""


class CertificateRevoked(AgentError):
    """The gateway refused the agent's certificates, at least one as revoked (TLS alert
    certificate_revoked): those are marked and never tried again; enrolling anew may help."""


class AgentStopped(AgentError):
    """Nothing the agent can do will work without someone's action: its certificates were
    revoked and its provisioning key was revoked too, or it has none. ``switch agent`` stops
    instead of retrying for ever."""


@attrs.frozen
class AgentSettings:
    directory: Path
    server_name: str
    gateway: tuple[str, int]
    enroll: tuple[str, int] | None = None
    ca_file: Path | None = None
    pin_sha256: str | None = None
    key_secret: str | None = attrs.field(default=None, repr=False)
    common_name: str | None = None
    path: str = "/"
    #: ``--renew-before``: overrides the window the enrollment port names (see
    #: ``gateway.client.enrollment.renewal_window``).
    renew_before: dt.timedelta | None = None
    key_type: str = "ec-p256"
    timeout_s: float = 20.0


def normalise_pin(pin: str) -> str:
    """A SHA-256 public-key pin as 64 lower-case hex digits (``:`` separators allowed)."""
    hexpin = pin.strip().lower().replace(":", "")
    if len(hexpin) != 64 or any(c not in "0123456789abcdef" for c in hexpin):
        raise AgentError(f"the pin must be the SHA-256 of the server's public key as 64 hex "
                         f"digits, not {pin!r}")
    return hexpin
