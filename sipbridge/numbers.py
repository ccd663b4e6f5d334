"""Phone number validation and normalisation to E.164 (phonenumbers)."""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from sipbridge.errors import NumberError

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country calling code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


def validate_country_code(country_code: str, field: str = "country_code") -> str:
    cc = country_code.strip(" ").upper()
    if len(cc) != 2 or not cc.isascii() or cc not in phonenumbers.SUPPORTED_REGIONS:
        raise NumberError(field, f"{country_code!r} is not an ISO 3166-1 alpha-2 country code")
    return cc


# Characters a number may contain: ASCII digits, one leading '+', and the usual visual
# separators. Anything else is refused, not normalised: phonenumbers would silently read
# fullwidth or Arabic-Indic digits and vanity letters ('1-800-FLOWERS') as digits, and
# drop extensions, so the number dialled would not be the one the client sent.
_NUMBER_CHARS = frozenset("0123456789+ -.()/")
MAX_NUMBER_CHARS = 64


def check_number_chars(raw: str, field: str) -> None:
    if len(raw) > MAX_NUMBER_CHARS:
        raise NumberError(field, f"longer than {MAX_NUMBER_CHARS} characters")
    for i, c in enumerate(raw):
        if c not in _NUMBER_CHARS:
            kind = "a non-ASCII digit" if c.isdigit() else "not allowed"
            raise NumberError(
                field,
                f"{raw[:MAX_NUMBER_CHARS]!r} is not a phone number: character "
                f"{c!r} (U+{ord(c):04X}) at position {i} is {kind} (ASCII digits 0-9, a "
                "leading '+', spaces and - . ( ) / only)",
            )
    if "+" in raw[1:]:
        raise NumberError(field, f"{raw!r} is not a phone number: '+' only at the start")


def to_e164(number: str, country_code: str | None = None, field: str = "to_number") -> str:
    """Normalise ``number`` to E.164 ('+' and digits).

    A number without a leading '+' needs ``country_code`` (ISO 3166-1 alpha-2) to be read
    as a national number; an E.164 number is checked against the numbering plan. Only
    ASCII digits, a leading '+' and separators are accepted (:func:`check_number_chars`).
    """
    if not isinstance(number, str) or not number.strip(" "):
        raise NumberError(field, "is required")
    raw = number.strip(" ")
    check_number_chars(raw, field)
    region = validate_country_code(country_code) if country_code else None
    if not raw.startswith("+") and region is None:
        raise NumberError(
            field,
            f"{raw!r} is not in E.164 form (+<country><number>); give country_code "
            "for a national number",
        )
    try:
        parsed = phonenumbers.parse(raw, region)
    except NumberParseException as e:
        raise NumberError(field, f"{raw!r}: {_PARSE_ERRORS.get(e.error_type, str(e))}") from None
    if not phonenumbers.is_valid_number(parsed):
        where = f" for {region}" if region and not raw.startswith("+") else ""
        raise NumberError(field, f"{raw!r} is not a valid phone number{where}")
    return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
