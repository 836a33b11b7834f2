"""What an endpoint takes: its JSON body's fields and its query parameters, declared once and
used twice: to check a request (every problem is ``invalid_request`` naming the field, or
``malformed_json``; nothing is acted on before the whole request checked out) and to write the
OpenAPI document. Pure.

Bodies are strict: an unknown field is refused (a misspelt ``"acknowledge"`` must not pass for
an absent one), booleans are JSON booleans, strings have a length limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from gateway.api.errors import InvalidRequest, MalformedJson

#: The longest string any field takes (reasons are at most 500 characters: ``enroll.keys``).
MAX_STRING_CHARS = 1000
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer"}


@attrs.frozen
class Field:
    name: str
    kind: type
    required: bool = False
    description: str = ""
    #: Query parameters: the values allowed (None: any).
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, where: str) -> Any:
        if self.kind is int and isinstance(value, str):  # a query parameter
            try:
                value = int(value, 10)
            except ValueError:
                raise InvalidRequest(f"{where} {self.name!r} must be an integer") from None
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise InvalidRequest(f"{where} {self.name!r} must be {_JSON_TYPES[self.kind]}")
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise InvalidRequest(f"{where} {self.name!r} has at most {MAX_STRING_CHARS} characters")
        if self.choices is not None and value not in self.choices:
            raise InvalidRequest(f"{where} {self.name!r} must be one of {', '.join(self.choices)}")
        if isinstance(value, int) and not isinstance(value, bool) and (
                (self.minimum is not None and value < self.minimum)
                or (self.maximum is not None and value > self.maximum)):
            raise InvalidRequest(f"{where} {self.name!r} must be from {self.minimum} to "
                                 f"{self.maximum}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": _JSON_TYPES[self.kind]}
        if self.description:
            out["description"] = self.description
        if self.choices is not None:
            out["enum"] = list(self.choices)
        if self.kind is str:
            out["maxLength"] = MAX_STRING_CHARS
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@attrs.frozen
class Body:
    fields: tuple[Field, ...]

    def parse(self, raw: bytes) -> dict[str, Any]:
        """The checked fields of a JSON object body (an empty body is ``{}``)."""
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise MalformedJson("the body is not JSON") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the body must be a JSON object")
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r} (fields: "
                                 f"{', '.join(known) or 'none'})")
        out: dict[str, Any] = {}
        for field in self.fields:
            if field.name in data:
                out[field.name] = field.check(data[field.name], "field")
            elif field.required:
                raise InvalidRequest(f"field {field.name!r} is required")
        return out

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                               "properties": {f.name: f.schema() for f in self.fields}}
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        return out


def parse_query(fields: tuple[Field, ...], query: Mapping[str, str]) -> dict[str, Any]:
    """The checked query parameters; an unknown one is refused."""
    known = {f.name: f for f in fields}
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}")
    return {name: known[name].check(value, "query parameter") for name, value in query.items()}


ACKNOWLEDGE = Field("acknowledge", bool, description="true: \"I understand the impact of this "
                    "action and want to proceed\"")
REASON = Field("reason", str, description="why, for the audit log")
