"""Unit tests for the leaf modules of keydelivery: passphrases, sealing, phones, templates."""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
from pathlib import Path

import pytest

from sluis.keydelivery.passphrase import PASSPHRASE_ALPHABET, PASSPHRASE_BITS, new_passphrase
from sluis.keydelivery.phones import InvalidPhoneError, normalise_phone
from sluis.keydelivery.sealing import (
    CREDENTIAL_NAME,
    KEY_SIZE,
    KeyFileError,
    SealError,
    Sealer,
    create_key_file,
    load_sealer,
)
from sluis.keydelivery.templates import (
    DEFAULT_ALERT_TEMPLATE,
    DEFAULT_EMAIL_TEMPLATE,
    DEFAULT_SMS_TEMPLATE,
    EMAIL_DISCLAIMER,
    MailTemplate,
    TemplateError,
    is_gsm7,
    render_alert,
    render_email,
    render_sms,
    sms_segments,
    validate_email_template,
    validate_sms_template,
)
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)

# --- passphrase --------------------------------------------------------------------------------


def test_passphrase_has_at_least_100_bits() -> None:
    assert PASSPHRASE_BITS >= 100
    # The constant must describe what new_passphrase actually produces.
    symbols = len(new_passphrase().replace("-", ""))
    assert PASSPHRASE_BITS == pytest.approx(symbols * math.log2(len(PASSPHRASE_ALPHABET)))


def test_passphrase_format() -> None:
    groups = re.escape(PASSPHRASE_ALPHABET)
    pattern = re.compile(rf"^[{groups}]{{4}}(-[{groups}]{{4}})+$")
    for _ in range(200):
        assert pattern.match(new_passphrase())


def test_passphrase_alphabet_has_no_look_alikes() -> None:
    assert PASSPHRASE_ALPHABET == PASSPHRASE_ALPHABET.upper()
    # Of each look-alike pair at most one member is in the alphabet.
    for pair in ("0O", "0Q", "OQ", "1I", "1L", "IL", "5S", "2Z", "8B", "UV"):
        assert sum(char in PASSPHRASE_ALPHABET for char in pair) <= 1, pair
    assert not set("0O1IL") & set(PASSPHRASE_ALPHABET)


def test_passphrases_are_unique_and_use_the_whole_alphabet() -> None:
    drawn = [new_passphrase() for _ in range(5000)]
    assert len(set(drawn)) == len(drawn)
    assert set("".join(drawn).replace("-", "")) == set(PASSPHRASE_ALPHABET)


# --- sealing -----------------------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    create_key_file(path)
    return path


def test_seal_round_trip(key_file: Path) -> None:
    sealer = Sealer.from_file(key_file)
    secret = new_passphrase().encode()
    sealed = sealer.seal(secret)
    assert secret not in sealed
    assert sealer.open(sealed) == secret
    # A random nonce per seal: equal plaintexts do not give equal ciphertexts.
    assert sealer.seal(secret) != sealed


def test_tampered_seal_is_refused(key_file: Path) -> None:
    sealer = Sealer.from_file(key_file)
    sealed = bytearray(sealer.seal(b"K7RF-2MXD"))
    sealed[-1] ^= 0x01
    with pytest.raises(SealError):
        sealer.open(bytes(sealed))
    with pytest.raises(SealError):
        sealer.open(b"short")


def test_wrong_key_is_refused(tmp_path: Path, key_file: Path) -> None:
    other = tmp_path / "other.key"
    create_key_file(other)
    sealed = Sealer.from_file(key_file).seal(b"secret")
    with pytest.raises(SealError):
        Sealer.from_file(other).open(sealed)


def test_created_key_file_has_mode_0600_and_right_length(key_file: Path) -> None:
    info = key_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == KEY_SIZE


def test_create_key_file_never_overwrites(key_file: Path) -> None:
    before = key_file.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_key_file(key_file)
    assert key_file.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_key_file_readable_by_others_is_refused(key_file: Path, mode: int) -> None:
    key_file.chmod(mode)
    with pytest.raises(KeyFileError, match=re.escape(str(key_file))):
        Sealer.from_file(key_file)


def test_key_file_mode_0400_is_accepted(key_file: Path) -> None:
    key_file.chmod(0o400)
    Sealer.from_file(key_file)


def test_key_file_of_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hex.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(KEY_SIZE).hex().encode() + b"\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match=rf"{re.escape(str(path))}.*{KEY_SIZE}"):
        Sealer.from_file(path)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing.key"):
        Sealer.from_file(tmp_path / "missing.key")


def test_load_sealer_prefers_the_systemd_credential(tmp_path: Path, key_file: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    create_key_file(credentials / CREDENTIAL_NAME)
    (credentials / CREDENTIAL_NAME).chmod(0o400)
    from_credential = load_sealer(key_file, str(credentials)).seal(b"x")
    assert Sealer.from_file(credentials / CREDENTIAL_NAME).open(from_credential) == b"x"
    with pytest.raises(SealError):
        Sealer.from_file(key_file).open(from_credential)


def test_load_sealer_falls_back_to_the_key_file(tmp_path: Path, key_file: Path) -> None:
    sealed = Sealer.from_file(key_file).seal(b"x")
    assert load_sealer(key_file, None).open(sealed) == b"x"
    # A credentials directory without our credential: the key file still counts.
    empty = tmp_path / "empty-credentials"
    empty.mkdir()
    assert load_sealer(key_file, str(empty)).open(sealed) == b"x"


def test_sealer_repr_hides_the_key(key_file: Path) -> None:
    assert key_file.read_bytes().hex() not in repr(Sealer.from_file(key_file))


# --- phones ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["+32 470 12 34 56", "0470 12 34 56", "0470/12.34.56", "+32470123456", "0032470123456"]
)
def test_belgian_mobile_is_normalised(raw: str) -> None:
    phone = normalise_phone(raw)
    assert phone.e164 == "+32470123456"
    assert phone.is_mobile is True
    assert phone.warning is None


def test_dutch_mobile() -> None:
    phone = normalise_phone("+31 6 12345678")
    assert (phone.e164, phone.is_mobile, phone.warning) == ("+31612345678", True, None)
    assert normalise_phone("06 12345678", default_region="NL").e164 == "+31612345678"


def test_belgian_landline_gets_a_warning() -> None:
    phone = normalise_phone("+32 89 12 34 56")
    assert phone.e164 == "+3289123456"
    assert phone.is_mobile is False
    assert phone.warning and "landline" in phone.warning and "+3289123456" in phone.warning


def test_number_of_unknown_type_is_flagged_but_accepted() -> None:
    phone = normalise_phone("+1 202 555 0123")
    assert phone.is_mobile is None
    assert phone.warning


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("garbage", "not a phone number"),
        ("", "empty"),
        ("+32 470", "too short"),
        ("+32 470 12 34 56 78 90", "too long"),
        ("+32 2 123 45 67", "not a valid number for +32"),
        ("+999 1234567", "country code"),
    ],
)
def test_invalid_numbers_are_refused_with_the_input_and_why(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPhoneError) as caught:
        normalise_phone(raw)
    assert repr(raw) in str(caught.value)
    assert reason in str(caught.value)


# --- templates ---------------------------------------------------------------------------------

EXPIRES = datetime.date(2026, 12, 28)


def _default_sms() -> str:
    return render_sms(
        DEFAULT_SMS_TEMPLATE,
        passphrase=new_passphrase(),
        file="inburgeraars_genk_2026.csv.age",
        tenant="Stad Genk",
        expires=EXPIRES,
    )


def test_default_sms_is_gsm7_and_fits_two_segments() -> None:
    text = _default_sms()
    assert is_gsm7(text)
    assert 1 <= sms_segments(text) <= 2
    assert "28-12-2026" in text
    assert "inburgeraars_genk_2026.csv.age" in text and "Stad Genk" in text


def test_rendered_sms_carries_the_passphrase() -> None:
    text = render_sms(
        DEFAULT_SMS_TEMPLATE, passphrase="K7RF-2MXD", file="f", tenant="t", expires="01-01-2027"
    )
    assert "K7RF-2MXD" in text and "01-01-2027" in text


def test_aware_expiry_is_shown_in_belgian_time() -> None:
    late = datetime.datetime(2026, 12, 28, 23, 30, tzinfo=datetime.timezone.utc)
    text = render_sms("{passphrase} {expires}", passphrase="P", file="f", tenant="t", expires=late)
    assert text == "P 29-12-2026"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("code {passphrase} voor {filename}", "{filename}"),
        ("voor {file} tot {expires}", "{passphrase}"),
        ("{passphrase} {file.__class__}", "{file.__class__}"),
        ("{passphrase} {0}", "{0}"),
        ("{passphrase:>40}", "format"),
        ("{passphrase", "malformed"),
    ],
)
def test_bad_sms_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        validate_sms_template(template)
    with pytest.raises(TemplateError):
        render_sms(template, passphrase="P", file="f", tenant="t", expires=EXPIRES)


def test_literal_braces_are_allowed() -> None:
    validate_sms_template("{{code}}: {passphrase}")


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 0),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters count double: 160 septets
        ("€" * 81, 2),
        # 306 septets fit two parts of 153 only if an escape pair were split; it is not.
        ("aa" + "€" * 152, 3),
        ("ë" * 70, 1),  # ë is not GSM-7: UCS-2
        ("ë" * 71, 2),
        ("ë" * 134, 2),
        ("ë" * 135, 3),
        ("😀" * 35, 1),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, 2),
    ],
)
def test_sms_segments(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def test_gsm7_detection() -> None:
    assert is_gsm7("Café à Genk_2026 [€]")
    assert not is_gsm7("Zoë")
    assert not is_gsm7("naïef")


def test_default_email_has_disclaimer_and_connection_details_but_no_passphrase() -> None:
    subject, body = render_email(
        file="inburgeraars_genk_2026.csv.age",
        tenant="Stad Genk",
        expires=EXPIRES,
        host="sftp.integratie-inburgering.be",
        port=2222,
    )
    assert "inburgeraars_genk_2026.csv.age" in subject
    assert EMAIL_DISCLAIMER in body
    assert "verwijder deze e-mail dan onmiddellijk" in body
    assert "sftp.integratie-inburgering.be" in body and "2222" in body
    assert "28-12-2026" in body and "Stad Genk" in body
    assert "{" not in body


def test_email_template_may_never_contain_the_passphrase() -> None:
    for template in (
        MailTemplate(subject="{passphrase}", body="b"),
        MailTemplate(subject="s", body="wachtwoord: {passphrase}"),
    ):
        with pytest.raises(TemplateError, match="never by e-mail"):
            validate_email_template(template)
        with pytest.raises(TemplateError, match="never by e-mail"):
            render_email(template, file="f", tenant="t", expires=EXPIRES, host="h", port=22)


def test_custom_email_template_gets_the_disclaimer_added() -> None:
    _, body = render_email(
        MailTemplate(subject="Bestand {file}", body="Haal {file} op via {host}:{port}."),
        file="f.age",
        tenant="t",
        expires=EXPIRES,
        host="h",
        port=22,
    )
    assert body.startswith("Haal f.age op via h:22.")
    assert body.rstrip().endswith(EMAIL_DISCLAIMER)


def test_subject_cannot_be_split_by_a_newline_in_a_file_name() -> None:
    subject, _ = render_email(
        file="evil\r\nBcc: someone@example.org", tenant="t", expires=EXPIRES, host="h", port=22
    )
    assert "\n" not in subject and "\r" not in subject


def test_alert_names_file_tenant_phone_and_reason() -> None:
    subject, body = render_alert(
        file="inburgeraars_genk_2026.csv.age",
        tenant="Stad Genk",
        phone="+3289123456",
        reason="Twilio error 21614: 'To' number is not a valid mobile number",
        expires=EXPIRES,
    )
    assert "inburgeraars_genk_2026.csv.age" in subject and "Stad Genk" in subject
    assert "+3289123456" in body and "21614" in body and "28-12-2026" in body
    with pytest.raises(TemplateError):
        render_alert(
            MailTemplate(subject="s", body="{passphrase}"),
            file="f", tenant="t", phone="p", reason="r", expires=EXPIRES,
        )


def test_default_templates_validate() -> None:
    validate_sms_template(DEFAULT_SMS_TEMPLATE)
    validate_email_template(DEFAULT_EMAIL_TEMPLATE)
    render_alert(
        DEFAULT_ALERT_TEMPLATE, file="f", tenant="t", phone="p", reason="r", expires=EXPIRES
    )


def test_an_sms_claim_never_shows_its_passphrase() -> None:
    from sluis.keydelivery.outbox import Claim, Job

    job = Job(id=1, delivery_id="d-1", kind="sms", target="+32470123456", state="sending", attempts=1,
              next_attempt_at="", provider_id=None, provider_status=None, polls=0, redacted=0,
              redact_attempts=0, last_error=None, payload={})
    secret = new_passphrase()
    claim = Claim(job=job, passphrase=secret, attempt=1)
    assert claim.passphrase == secret and secret not in repr(claim) and secret not in str(claim)


def test_backoff_doubles_up_to_the_cap_within_its_jitter_and_honours_retry_after() -> None:
    from sluis.config.settings import SmsSettings
    from sluis.keydelivery.outbox import backoff_seconds

    sms = SmsSettings(retry_initial=10, retry_max=60)
    assert [backoff_seconds(sms, n, None, 0.5) for n in (1, 2, 3, 4, 9)] == [10, 20, 40, 60, 60]
    assert backoff_seconds(sms, 1, None, 0.0) == pytest.approx(8)
    assert backoff_seconds(sms, 1, None, 1.0) == pytest.approx(12)
    assert backoff_seconds(sms, 1, 30.0, 0.5) == 30 and backoff_seconds(sms, 3, 30.0, 0.5) == 40
