"""What a serving process reads from its configuration files, built whole before it is swapped
in (``Loaded``: the server certificate, organisation CAs and CRLs, the enroll port's TLS context,
the EST service), how a reload reads the configuration again (``ConfigReader``), and what a reload
reports (``ReloadResult``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
from cryptography import x509
from OpenSSL import SSL

from config.errors import ConfigError, Problem
from config.load import load_config
from config.model import SwitchConfig
from config.tls_material import PrivateKey, describe_ssl_error, load_server_credentials
from enroll.est_service import EstService
from enroll.issuance import Issuance
from enroll.ratelimit import Limiter
from gateway.tenant_tls import OrganisationMaterial, load_organisation_material
from gateway.tls_context import server_context


@attrs.frozen
class Loaded:
    """Everything read from the config files, built completely before it is swapped in."""

    config: SwitchConfig
    generation: int
    chain: list[x509.Certificate]
    key: PrivateKey
    organisation: Mapping[str, OrganisationMaterial]
    enroll_context: SSL.Context
    est: EstService


def load_all(config: SwitchConfig, issuance: Issuance, generation: int,
             limiter: Limiter | None = None) -> Loaded:
    """Read the server certificate or keystore and the organisation CAs and CRLs named by
    ``config`` and build the TLS context from them. Raises ``ConfigError`` listing every problem
    with its file and key, whatever failed: a file that no longer reads, a CRL no CA signed, or a
    certificate and key OpenSSL refuses (``SSL.Error``, e.g. "ee key too small")."""
    chain, key = load_server_credentials(config.tls, config_file=config.path)
    problems: list[Problem] = []
    organisation: dict[str, OrganisationMaterial] = {}
    for name, tenant in config.tenants.items():
        try:
            organisation |= load_organisation_material(attrs.evolve(config, tenants={name: tenant}))
        except (ValueError, SSL.Error) as exc:
            in_main = tenant.source in (None, config.path)
            problems.append(Problem(config.path if in_main else tenant.source or config.path,
                                    f"tenants.{name}" if in_main else "", _reason(exc)))
    tls_key = "tls.keystore" if config.tls.keystore is not None else "tls.cert_file"
    try:
        enroll_context = server_context(chain, key, client_auth="any", ciphers=config.tls.ciphers)
    except SSL.Error as exc:
        problems.append(Problem(config.path, tls_key, "OpenSSL refuses to serve with this "
                                f"certificate and key: {describe_ssl_error(exc)}"))
    if problems:
        raise ConfigError(problems)
    return Loaded(config, generation, chain, key, organisation, enroll_context,
                  EstService(config, issuance, limiter))


def _reason(exc: Exception) -> str:
    return describe_ssl_error(exc) if isinstance(exc, SSL.Error) else str(exc)


#: Reads the configuration for a reload: the configuration and the generation it becomes (None:
#: the next one).
ConfigReader = Callable[[Path], tuple[SwitchConfig, int | None]]


def read_from_disk(path: Path) -> tuple[SwitchConfig, int | None]:
    return load_config(path), None


@attrs.frozen
class ReloadResult:
    generation: int
    ok: bool
    at: str
    errors: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
