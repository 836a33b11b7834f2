"""Turning TLS 1.3 session tickets off, which pyOpenSSL cannot do.

Why: a TLS 1.3 server sends session tickets after the handshake even with ``OP_NO_TICKET`` and
the session cache off (OpenSSL then sends *stateful* tickets, two by default, naming sessions no
cache holds, so they can never resume anything). They cost every handshake a message and, worse,
arrive while the client starts writing: clients that read and write one TLS connection from two
threads (Python's ``websockets`` sync client, among others) race on that post-handshake message
and lose their first write, so the WebSocket upgrade never reaches the gateway (seen here about
once in a hundred connections under load; never with TLS 1.2 or without tickets).
``SSL_CTX_set_num_tickets(ctx, 0)`` is the switch, and neither pyOpenSSL nor cryptography's
bindings expose it.

How: cryptography links OpenSSL statically into its ``_rust`` extension and keeps its symbol
table. This module finds ``SSL_CTX_set_num_tickets`` and ``SSL_CTX_get_num_tickets`` there (ELF
only), places them with the extension's one exported symbol ``PyInit__rust`` (load address minus
its table value), calls the setter through ``ctypes`` and reads the value back with the getter.
Anything unexpected (another platform, a stripped build, a value that does not read back) leaves
the context as it was and ``disable_tls13_tickets`` returns False; the caller logs it once. The
symbols are resolved once per process.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi

_ANCHOR = "PyInit__rust"
_SHT_SYMTAB = 2
_SHT_DYNSYM = 11
#: ``SSL_CTX_new`` sets two tickets per handshake (ssl/ssl_lib.c).
_OPENSSL_DEFAULT_TICKETS = 2


def _elf_symbols(data: bytes, wanted: set[str]) -> dict[str, int]:
    """Values of the ``wanted`` symbols in a little-endian ELF64 file's symbol tables."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind not in (_SHT_SYMTAB, _SHT_DYNSYM) or entsize != 24:
            continue
        strings = sections[link][4]
        for entry in range(offset, offset + size, 24):
            name_at, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, entry)
            if not value:
                continue
            start = strings + name_at
            name = data[start:data.index(b"\0", start)].decode("ascii", "replace")
            if name in wanted:
                found[name] = value
    return found


@functools.cache
def _functions() -> tuple[Callable[[int, int], int], Callable[[int], int]] | None:
    try:
        from cryptography.hazmat.bindings import _rust

        path = Path(str(_rust.__file__))
        symbols = _elf_symbols(path.read_bytes(),
                               {_ANCHOR, "SSL_CTX_set_num_tickets", "SSL_CTX_get_num_tickets"})
        if len(symbols) != 3:
            return None
        library = ctypes.CDLL(str(path))
        anchor = ctypes.cast(getattr(library, _ANCHOR), ctypes.c_void_p).value
        if anchor is None:
            return None
        base = anchor - symbols[_ANCHOR]
        setter = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)(
            base + symbols["SSL_CTX_set_num_tickets"])
        getter = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(
            base + symbols["SSL_CTX_get_num_tickets"])
        # The getter must read OpenSSL's default (2) on a new context before the setter is used.
        probe = SSL.Context(SSL.TLS_SERVER_METHOD)
        if getter(int(_ffi.cast("uintptr_t", probe._context))) != _OPENSSL_DEFAULT_TICKETS:
            return None
        return setter, getter
    except (OSError, ValueError, AttributeError, struct.error, IndexError):
        return None


def disable_tls13_tickets(ctx: SSL.Context) -> bool:
    """Make ``ctx`` send no TLS 1.3 session tickets; True when done and read back."""
    functions = _functions()
    if functions is None:
        return False
    setter, getter = functions
    pointer = int(_ffi.cast("uintptr_t", ctx._context))
    return setter(pointer, 0) == 1 and getter(pointer) == 0
