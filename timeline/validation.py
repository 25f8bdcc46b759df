"""Malformed input, refused the same way everywhere: a clear 4xx before any work is done.

Python and the databases each have limits that a hostile request can reach, and each reached
limit would otherwise be a 500: JSON nested past the interpreter's recursion limit, integers
past its digit limit, lone UTF-16 surrogates that no database can store, text made only of
invisible characters. The checks here run on the raw input, before a form, a query, admission
control or a rate-limit quota sees it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from django.core.exceptions import ValidationError

# No request of ours nests deeper than an object in an object; clients send flat objects.
MAX_JSON_DEPTH = 16
# The largest valid body is a 4096-character password written as JSON \u escapes (6 bytes each).
MAX_JSON_BYTES = 64 * 1024
MAX_ID = 2**63 - 1  # ids are 64-bit database keys
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_SURROGATES = re.compile("[\ud800-\udfff]")
# Characters that draw nothing but are not in a "space" or "format" category: Hangul fillers,
# the blank Braille pattern, the Mongolian vowel separator.
_BLANK_LETTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0\u180e")
# Controls, format characters (zero-width space and joiners, bidi marks) and separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


class BadInput(ValueError):
    """Input refused before it reached any code that could fail on it."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (strings are skipped correctly)."""
    if text.count("[") + text.count("{") <= 1:
        return text.count("[") + text.count("{")
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(raw: bytes | str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON document, or BadInput: too large (413), not UTF-8 or not JSON, or nested too deep."""
    if len(raw) > max_bytes:
        raise BadInput(f"The body is larger than {max_bytes} bytes.", status=413, code="too_large")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadInput("The body is not UTF-8.", code="bad_json") from None
    if json_depth(text) > max_depth:
        raise BadInput(f"The JSON nests deeper than {max_depth} levels.", code="bad_json")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("The body is not valid JSON.", code="bad_json") from None


def parse_int(raw: str, *, low: int, high: int = MAX_ID) -> int:
    """A whole number written in ASCII digits within [low, high], or ValueError (never a huge int)."""
    if not _INTEGER.fullmatch(raw):
        raise ValueError("not a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise ValueError("out of range")
    return value


def validate_unicode(value: str) -> None:
    """Refuse lone UTF-16 surrogates (from JSON's "\\ud800"): no database can store them."""
    if _SURROGATES.search(value):
        raise ValidationError("Contains invalid characters (a lone UTF-16 surrogate).", code="invalid_unicode")


def is_blank(text: str) -> bool:
    """True if the text draws nothing: only spaces, controls, zero-width and other invisible marks."""
    return all(unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _BLANK_LETTERS for char in text)


class NotOnlyWhitespacePasswordValidator:
    """A password validator (AUTH_PASSWORD_VALIDATORS): spaces alone are no secret."""

    def validate(self, password: str, user=None) -> None:
        if not password.strip():
            raise ValidationError("The password cannot be only spaces.", code="password_blank")

    def get_help_text(self) -> str:
        return "Your password cannot be only spaces."
