"""X25519 and mlkem768x25519 keys, the writer's recipients, and the armor reader, in isolation.

The CCTV vectors (test_age_vectors.py) check decryption; the real age binary
(test_age_binary.py) checks X25519 both ways. This file checks what neither covers: key
encodings against the examples in the spec, our writer's hybrid stanzas, argument checks and
armor edge cases beyond the vectors.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest

from sluis.server.formats.age import (
    CHUNK_SIZE,
    AgeArmorError,
    AgeHeaderError,
    AgeNoMatchError,
    AgeReader,
    AgeWriter,
    HybridIdentity,
    HybridRecipient,
    X25519Identity,
    X25519Recipient,
    parse_identity,
    parse_recipient,
)
from sluis.server.formats.age import bech32
from sluis.server.formats.age.armor import BEGIN_LINE, END_LINE, MAX_WHITESPACE

# The examples in the spec (C2SP age, "The X25519 recipient type" and "The MLKEM768-X25519 ...").
SPEC_X25519_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_X25519_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
# The spec's 1,959-character age1pq1 recipient, by its ends and its SHA-256.
SPEC_PQ_RECIPIENT_START = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrqtzdxz95paef6caq5aapdmwjj"
SPEC_PQ_RECIPIENT_END = "gfr3gf8xnmppcgmaykvh5sh6g7vk9790rf8ws0axmr2t7z8aae5fq2029uvcn2ghgt4fu4wgwdc0k0cz52qkvwmuzj8p8k5jgf3xzk5zmrkavjekjrpeq408xz3zxazwkc6tyfmhayrkfpjhwtz5mp8j8guqe43k2q6m2kte03vrw27y3wmqyu5etmt9dnkwcnnpmu9gz9dekfhdevf42ucshphnrk38ra6hx8w5f8q5ru0xdhrjxmwqf6cused7zc5xvq43r0zscjglpwlptpwydhqw64xz7ptjdyeyzpq2zkxtmzg29gzjpvzva4d3l0cenn9xs297wf4y4ukwrunf57xj6pm7nvrkwvtrt8hwcmgv8x7ajw7258ugf9wvkmk4052ekg87tw5vnx8nq2swyzv77v8yqlwsenvamr0zssknwts8rrhfuwj7ykysnq9jxy0uv3kuyt22djszjdtvpz6d0s0kwh8ryynddzud92emeyvvyqktd0jtj7rvvg5gch25v8smlvny3kvn5gagyz475ze2y6q466xqmz2n3hs77lddeqyta2nch5k2u5yacuk9ywnwfdzvyejnucz724hj77hrrmakm7pr3kxsrxq22ejexlud9fy2kdqmkg5yncz7jm5wv2qjk5w5kvcpqsry2yqffh2la52dxfjkjq5rzhjzeyn6dupn0qwtyv7s4lwg3xdarsdlwe2y3tujy480y7z39q259fzx6jhd2j0f5hagqpcpees7hzc2yrk5cy788uk3s7qvp5cpepx24gvws3m2g433exgwppnkjscec8qu4y9z9r7vccexjcjaen42245lmgmxmuavg9alej92322gvvyy2t6267v09ch64y0m53jff0vjj96s0ypk60hr3jw4myd6m5hpn3xjstx7tl2szhpr5qe8jj08ydjc4wy2rch2fhuy3pdfjax5awe9j99ly5hkntzz9fe5zatgjvzdd0kgtxs25njnajyf6ssekp7gelxquusn4pt25czh3scj68kq79wdn5tgm6yvm9nzavrg043x3msnygf8dweknw5jmqd0uvny6ttsn09508k0c55zfnegrm9efhxpfqdkmhh6gjtqmwze9pyyzk3tlhl53k2ykx3qheyty7saeq0d3fzv49zc0k"
SPEC_PQ_RECIPIENT_SHA256 = "a091dd7e0ee9d62b75173dcc98441a0424baa941e66a8776e570a4ae60ff61ea"


# --- Keys ------------------------------------------------------------------------------------


def test_spec_x25519_example() -> None:
    identity = parse_identity(SPEC_X25519_IDENTITY)
    assert isinstance(identity, X25519Identity)
    assert str(identity.recipient) == SPEC_X25519_RECIPIENT
    assert str(identity) == SPEC_X25519_IDENTITY
    assert isinstance(parse_recipient(SPEC_X25519_RECIPIENT), X25519Recipient)


def test_spec_post_quantum_example() -> None:
    """PrivateKeyToPublicKey (SHAKE256 expansion, ML-KEM-768 from seed, X25519) as the spec shows."""
    identity = parse_identity(SPEC_PQ_IDENTITY)
    assert isinstance(identity, HybridIdentity)
    recipient = str(identity.recipient)
    assert recipient.startswith(SPEC_PQ_RECIPIENT_START)
    assert recipient.endswith(SPEC_PQ_RECIPIENT_END)
    assert hashlib.sha256(recipient.encode()).hexdigest() == SPEC_PQ_RECIPIENT_SHA256
    assert str(identity) == SPEC_PQ_IDENTITY
    assert isinstance(parse_recipient(recipient), HybridRecipient)


def test_secrets_are_not_in_repr() -> None:
    for identity in (parse_identity(SPEC_X25519_IDENTITY), parse_identity(SPEC_PQ_IDENTITY)):
        assert str(identity)[20:40] not in repr(identity)


@pytest.mark.parametrize(
    "text",
    [
        SPEC_X25519_IDENTITY.lower()[:20] + SPEC_X25519_IDENTITY[20:],  # mixed case
        SPEC_X25519_IDENTITY[:-1] + ("Q" if SPEC_X25519_IDENTITY[-1] != "Q" else "P"),  # checksum
        SPEC_X25519_RECIPIENT.upper()[:-1] + "B",  # checksum, upper case
        SPEC_X25519_RECIPIENT.replace("age1", "agf1"),  # checksum covers the HRP
        "age1",  # no data
        "AGE-SECRET-KEY-1" + "b" * 60,  # 'b' is not in the alphabet
    ],
)
def test_bech32_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        bech32.decode(text)


def test_keys_of_the_wrong_kind_or_size_are_refused() -> None:
    with pytest.raises(ValueError):
        X25519Identity.parse(SPEC_X25519_RECIPIENT)  # a public key is not an identity
    with pytest.raises(ValueError):
        X25519Recipient.parse(SPEC_X25519_IDENTITY)
    with pytest.raises(ValueError):
        parse_recipient(bech32.encode("age", b"\x01" * 31))
    with pytest.raises(ValueError):
        parse_identity(bech32.encode("AGE-SECRET-KEY-PQ-", b"\x01" * 33).upper())
    # Bech32 allows no length limit for age, and round-trips any data.
    data = os.urandom(1216)
    assert bech32.decode(bech32.encode("age1pq", data)) == ("age1pq", data)


# --- Writer: recipients ------------------------------------------------------------------------


def encrypt(data: bytes, recipients: list) -> bytes:  # type: ignore[type-arg]
    out = io.BytesIO()
    with AgeWriter(out, recipients=recipients) as writer:
        writer.write(data)
    return out.getvalue()


def decrypt_with(blob: bytes, identities: list) -> bytes:  # type: ignore[type-arg]
    reader = AgeReader(io.BytesIO(blob), identities=identities)
    data = b"".join(reader)
    assert reader.done
    return data


@pytest.mark.parametrize("kind", [X25519Identity, HybridIdentity])
def test_round_trip_to_one_and_several_recipients(kind: type) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 3)
    ours, theirs = kind.generate(), kind.generate()
    blob = encrypt(data, [theirs.recipient, str(ours.recipient)])
    assert decrypt_with(blob, [ours]) == data
    assert decrypt_with(blob, [str(theirs)]) == data
    with pytest.raises(AgeNoMatchError):
        decrypt_with(blob, [kind.generate()])


def test_writer_stanzas_are_as_the_spec_says() -> None:
    blob = encrypt(b"x", [X25519Identity.generate().recipient])
    lines = blob.split(b"\n")
    kind, share = lines[1].split(b" ")[1:]
    assert kind == b"X25519" and len(base64.b64decode(share + b"=")) == 32
    assert len(lines[2]) == 43  # a 32-byte body on one short line
    blob = encrypt(b"x", [HybridIdentity.generate().recipient])
    lines = blob.split(b"\n")
    kind, enc = lines[1].split(b" ")[1:]
    assert kind == b"mlkem768x25519" and len(enc) == 1494  # 1120 bytes, unpadded base64
    assert len(lines[2]) == 43


def test_each_stanza_has_a_fresh_ephemeral_share() -> None:
    recipient = X25519Identity.generate().recipient
    shares = {encrypt(b"", [recipient, recipient]).split(b"\n")[i] for i in (1, 3)}
    assert len(shares) == 2


def test_writer_argument_checks() -> None:
    x25519, hybrid = X25519Identity.generate(), HybridIdentity.generate()
    with pytest.raises(TypeError):
        AgeWriter(io.BytesIO())
    with pytest.raises(TypeError):
        AgeWriter(io.BytesIO(), "passphrase", recipients=[x25519.recipient])
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), recipients=[])
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), recipients=["age1notakey"])
    # Spec: the post-quantum type "SHOULD NOT" be mixed with non-quantum-resistant ones.
    with pytest.raises(ValueError, match="mix"):
        AgeWriter(io.BytesIO(), recipients=[x25519.recipient, hybrid.recipient])
    # A low-order point is not a public key: it would give everyone the file key.
    with pytest.raises(ValueError):
        AgeWriter(io.BytesIO(), recipients=[X25519Recipient(b"\x00" * 32)])


def test_reader_argument_checks() -> None:
    identity = X25519Identity.generate()
    blob = encrypt(b"x", [identity.recipient])
    with pytest.raises(TypeError):
        AgeReader(io.BytesIO(blob), "passphrase", identities=[identity])
    with pytest.raises(ValueError):
        AgeReader(io.BytesIO(blob), identities=[])
    # A passphrase on an X25519 file: no scrypt stanza, so no match (as age says).
    with pytest.raises(AgeNoMatchError):
        AgeReader(io.BytesIO(blob), "passphrase")


def test_scrypt_stays_alone_with_identities() -> None:
    """An scrypt stanza next to another is a header failure, whichever key we hold."""
    identity = X25519Identity.generate()
    out = io.BytesIO()
    with AgeWriter(out, "passphrase", log_n=10) as writer:
        writer.write(b"x")
    scrypt_lines = out.getvalue().split(b"\n")
    x25519_lines = encrypt(b"x", [identity.recipient]).split(b"\n")
    mixed = b"\n".join(scrypt_lines[:3] + x25519_lines[1:3] + x25519_lines[3:])
    with pytest.raises(AgeHeaderError, match="only stanza"):
        AgeReader(io.BytesIO(mixed), identities=[identity])


# --- Armor ------------------------------------------------------------------------------------


def armor(blob: bytes, eol: bytes = b"\n") -> bytes:
    """Armor as the spec says: padded base64 in 64-column lines between BEGIN and END."""
    text = base64.b64encode(blob)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return eol.join([BEGIN_LINE, *lines, END_LINE]) + eol


@pytest.mark.parametrize("size", [0, 1, 47, 48, CHUNK_SIZE, 3 * CHUNK_SIZE + 100])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_armored_round_trip(size: int, eol: bytes) -> None:
    identity = X25519Identity.generate()
    data = os.urandom(size)
    armored = armor(encrypt(data, [identity.recipient]), eol)
    reader = AgeReader(io.BytesIO(armored), identities=[identity], armored=True)
    assert b"".join(reader) == data


def armored_sample() -> tuple[X25519Identity, bytes]:
    """A small armored X25519 file: 168-byte header, 16-byte nonce, 1001 + 16 bytes of payload,
    1201 bytes in all, so the last line ends in "==" padding."""
    identity = X25519Identity.generate()
    armored = armor(encrypt(os.urandom(1001), [identity.recipient]))
    assert b"==\n" + END_LINE in armored
    return identity, armored


def read_armored(blob: bytes, identity: X25519Identity) -> bytes:
    return b"".join(AgeReader(io.BytesIO(blob), identities=[identity], armored=True))


def test_armor_whitespace_outside_is_bounded() -> None:
    identity, armored = armored_sample()
    assert read_armored(b" \t\r\n" * 100 + armored + b"\r\n\x0b\x0c " * 100, identity)
    with pytest.raises(AgeArmorError, match="whitespace before"):
        read_armored(b"\n" * (MAX_WHITESPACE + 1) + armored, identity)
    with pytest.raises(AgeArmorError, match="whitespace after"):
        read_armored(armored + b" " * (MAX_WHITESPACE + 1), identity)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a.replace(b"\n", b"\r", 1),  # a bare CR is not a line ending we accept
        lambda a: a.replace(END_LINE + b"\n", END_LINE + b"\nX"),  # data after END
        lambda a: a[: a.rindex(END_LINE)],  # no END line
        lambda a: a.replace(BEGIN_LINE, BEGIN_LINE + b" "),  # whitespace on the BEGIN line
        lambda a: a.replace(b"\n", b"\n\n", 2),  # an empty line inside
        lambda a: b"garbage " + a,
        lambda a: a.replace(b"=\n", b"\n"),  # padding removed
    ],
    ids=["bare CR", "data after END", "no END", "space after BEGIN", "empty line", "garbage first", "no padding"],
)
def test_armor_failures(mangle) -> None:  # type: ignore[no-untyped-def]
    identity, armored = armored_sample()
    with pytest.raises(AgeArmorError):
        read_armored(mangle(armored), identity)


def test_binary_file_read_as_armor_fails() -> None:
    identity = X25519Identity.generate()
    with pytest.raises(AgeArmorError):
        read_armored(encrypt(b"x", [identity.recipient]), identity)


@pytest.mark.parametrize("size", [20008, 20009])  # 20208 bytes in all: a full last line, or not
def test_nothing_is_released_when_the_armor_ends_badly(size: int) -> None:
    """The reader reads past the final chunk, so a bad END or trailing data fails it first."""
    identity = X25519Identity.generate()
    armored = armor(encrypt(os.urandom(size), [identity.recipient]))
    assert (len(armored.split(b"\n")[-3]) == 64) == (size == 20008)
    for broken in (armored + b"garbage", armored.replace(END_LINE, END_LINE.lower())):
        released = []
        with pytest.raises(AgeArmorError):
            for chunk in AgeReader(io.BytesIO(broken), identities=[identity], armored=True):
                released.append(chunk)
        assert released == []
