"""The one normalisation of a host name before a tenant is looked up by it (SNI, ``Host``, EST).

A tenant's ``hostnames`` are stored lower-case without a trailing dot (``config.load``). A name a
peer sends is brought to the same form here, and anything that is not a host name becomes
``None``, which names no tenant (the caller refuses or falls back to the default tenant):

- ASCII only (SNI arrives as bytes, a ``Host`` header too); surrounding spaces are dropped;
- case is folded, and one trailing dot (the DNS root) is dropped;
- ``host:port`` and ``[v6-address]:port`` lose the port when ``port_allowed`` (a ``Host``
  header); an SNI name never carries one, so there a port makes the name malformed;
- an IPv6 literal loses its brackets;
- empty names, empty labels, and characters no host name holds (spaces, ``/``, ``@``, ...)
  are malformed.
"""

from __future__ import annotations

import re

#: Labels of letters, digits, ``-`` and ``_`` (looser than a DNS name: the lookup, not this
#: check, decides whether a tenant claims it), 253 characters at most.
_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_-]+(\.[a-z0-9_-]+)*\Z")
#: An IPv6 literal (hex digits, colons, an embedded IPv4 address), without its brackets.
_IPV6 = re.compile(r"[0-9a-f]*:[0-9a-f:.]*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def host_key(name: str | bytes | None, *, port_allowed: bool = False) -> str | None:
    """``name`` as tenants' ``hostnames`` are written (lower case, no trailing dot, no port, no
    brackets), or None when it is empty or not a host name (see the module docstring)."""
    if name is None:
        return None
    if isinstance(name, bytes | bytearray):
        try:
            name = bytes(name).decode("ascii")
        except UnicodeDecodeError:
            return None
    elif not name.isascii():
        return None
    text = name.strip().lower()
    host, port = _split_port(text)
    if port is not None and not (port_allowed and _PORT.match(port)):
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
        return host if _IPV6.match(host) else None
    if host.count(":") > 1:  # an IPv6 literal without brackets: no port can follow it
        return host if _IPV6.match(host) else None
    if host.endswith("."):
        host = host[:-1]
    return host if _NAME.match(host) else None


def _split_port(text: str) -> tuple[str, str | None]:
    """(host, port or None): the port follows the last ``:`` after a ``]``, or the only ``:``."""
    if text.startswith("["):
        end = text.find("]")
        if end != -1 and text[end + 1:end + 2] == ":":
            return text[:end + 1], text[end + 2:]
        return text, None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None
