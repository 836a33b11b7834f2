"""Provisioning-key rules (seed 000), as pure functions over values.

No store, no clock: the authority applies these inside its transactions.
"""

from __future__ import annotations

import enum
import re

import attrs

from enroll.errors import ConfirmationMismatch, InvalidKeyName, ReasonRequired, WrongKeyState

#: At most this many keys per tenant may be active or suspended (suspended keys count because
#: they can be resumed); revoked keys do not count.
MAX_LIVE_KEYS = 3
MAX_NAME_CHARS = 64
MAX_REASON_CHARS = 500

_NAME_CHARS = re.compile(r"[A-Za-z0-9 -]*")


class KeyState(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class KeyAction(enum.StrEnum):
    SUSPEND = "suspend"
    REACTIVATE = "reactivate"
    REVOKE = "revoke"


_TRANSITIONS: dict[tuple[KeyState, KeyAction], KeyState] = {
    (KeyState.ACTIVE, KeyAction.SUSPEND): KeyState.SUSPENDED,
    (KeyState.SUSPENDED, KeyAction.REACTIVATE): KeyState.ACTIVE,
    (KeyState.ACTIVE, KeyAction.REVOKE): KeyState.REVOKED,
    (KeyState.SUSPENDED, KeyAction.REVOKE): KeyState.REVOKED,
}


@attrs.frozen
class KeyRecord:
    id: str
    tenant: str
    name: str
    state: KeyState
    created_at: int
    updated_at: int
    last_used_at: int | None
    certificates_issued: int
    profile: str | None
    state_reason: str | None

    @property
    def is_live(self) -> bool:
        """Counts towards the limit: active or suspended."""
        return self.state is not KeyState.REVOKED


def validate_key_name(name: str) -> str:
    """The name if it follows the rules, else InvalidKeyName naming the broken rule."""
    if not name:
        raise InvalidKeyName("a key name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidKeyName(f"a key name has at most {MAX_NAME_CHARS} characters, not {len(name)}")
    if not ("A" <= name[0] <= "Z" or "a" <= name[0] <= "z"):
        raise InvalidKeyName("a key name must start with a letter")
    if not _NAME_CHARS.fullmatch(name):
        raise InvalidKeyName("a key name may hold only letters, digits, spaces and '-'")
    if name != name.strip():
        raise InvalidKeyName("a key name must not end with a space")
    return name


def fold_name(name: str) -> str:
    """The form names are compared in: unique per tenant regardless of case."""
    return name.casefold()


def next_state(current: KeyState, action: KeyAction) -> KeyState:
    try:
        return _TRANSITIONS[(current, action)]
    except KeyError:
        allowed = sorted({s.value for (s, a) in _TRANSITIONS if a is action})
        article = "an" if current.value[0] in "aeiou" else "a"
        raise WrongKeyState(
            f"cannot {action.value} {article} {current.value} key (only from: {', '.join(allowed)})"
        ) from None


def require_reason(reason: str | None, action: KeyAction) -> str:
    text = (reason or "").strip()
    if not text:
        raise ReasonRequired(f"a reason is required to {action.value} a key (--reason)")
    if len(text) > MAX_REASON_CHARS:
        raise ReasonRequired(f"a reason has at most {MAX_REASON_CHARS} characters")
    return text


def check_revoke_confirmation(name: str, confirm: str | None) -> None:
    """Revoking needs the key name typed again, exactly (case-sensitive)."""
    if confirm != name:
        raise ConfirmationMismatch(
            f'to revoke, type the key name again exactly (case-sensitive): --confirm "{name}"'
        )
