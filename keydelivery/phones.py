"""Normalising the phone numbers that receive passphrases, so config mistakes surface at startup."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: (
        "unknown country code (write it as +32..., or 0... for a number in the default region)"
    ),
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}

_LENGTH_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong number of digits",
}

# Types that certainly cannot receive an SMS reliably; FIXED_LINE_OR_MOBILE and UNKNOWN are
# "cannot tell" (the numbering plan of e.g. the US does not distinguish them).
_CANNOT_TELL = frozenset({PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.UNKNOWN})

_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "a landline number",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "a VoIP number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (forwarding) number",
    PhoneNumberType.PAGER: "a pager number",
    PhoneNumberType.UAN: "a company (UAN) number",
    PhoneNumberType.VOICEMAIL: "a voicemail number",
}


class InvalidPhoneError(ValueError):
    """A configured phone number cannot be parsed or is not a valid number."""


@dataclass(frozen=True)
class PhoneNumber:
    """A phone number in E.164 form, with a warning when it may not receive SMS."""

    e164: str
    is_mobile: bool | None  # None: the numbering plan does not say (e.g. +1 numbers)
    warning: str | None


def normalise_phone(raw: str, default_region: str = "BE") -> PhoneNumber:
    """Parse `raw` (international, or national for `default_region`) into E.164 or raise."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhoneError(f"phone number {raw!r} is empty")
    try:
        number = phonenumbers.parse(raw, default_region)
    except NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, str(exc))
        raise InvalidPhoneError(f"phone number {raw!r} is invalid: {reason}") from None

    if number.country_code is None:  # parse() sets it on success; the type allows None
        raise InvalidPhoneError(f"phone number {raw!r} is invalid: no country code")
    region = phonenumbers.region_code_for_country_code(number.country_code)
    where = f"+{number.country_code} ({region})"
    length = phonenumbers.is_possible_number_with_reason(number)
    if length not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        reason = _LENGTH_REASONS.get(length, "impossible number")
        raise InvalidPhoneError(f"phone number {raw!r} is invalid for {where}: {reason}")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneError(
            f"phone number {raw!r} is not a valid number for {where}: "
            "no such prefix in that country's numbering plan"
        )

    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.MOBILE:
        return PhoneNumber(e164=e164, is_mobile=True, warning=None)
    if kind in _CANNOT_TELL:
        return PhoneNumber(
            e164=e164,
            is_mobile=None,
            warning=f"{e164}: cannot tell from the number whether it can receive SMS",
        )
    described = _TYPE_NAMES.get(kind, "a non-mobile number")
    return PhoneNumber(
        e164=e164,
        is_mobile=False,
        warning=f"{e164} looks like {described}, not a mobile number: SMS will likely fail",
    )
