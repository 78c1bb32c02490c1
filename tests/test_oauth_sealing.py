"""Sealed artefacts and the store of single-use facts, on their own (mcp_modelgates/oauth/sealing.py, store.py)."""

from __future__ import annotations

import base64
import time

import anyio
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_modelgates.oauth.sealing import NONCE_BYTES, VERSION, Sealer, b64url, derive_key
from mcp_modelgates.oauth.store import MemoryStore

SECRET = "s" * 32
NEXT = "n" * 40
ISSUER = "https://mcp.example.com"
PAYLOAD = {"key": "sk-mg-v1-" + "ab" * 16, "user": "user_2abc", "exp": time.time() + 30 * 86400}  # outlives any run

pytestmark = pytest.mark.anyio


def test_a_blob_opens_only_as_its_own_kind_and_hides_its_payload() -> None:
    sealer = Sealer([SECRET], ISSUER)
    blob = sealer.seal("access", PAYLOAD)
    assert sealer.open("access", blob) == PAYLOAD
    assert sealer.open("refresh", blob) is None and sealer.open("code", blob) is None
    raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    assert b"sk-mg-v1" not in raw and b"user_2abc" not in raw  # encrypted, not only signed
    assert sealer.seal("access", PAYLOAD) != blob  # a fresh nonce each time


def test_it_is_aes_gcm_with_an_hkdf_key_and_the_kind_as_associated_data() -> None:
    blob = Sealer([SECRET], ISSUER).seal("code", {"a": 1})
    raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    assert raw[:1] == VERSION
    nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
    plain = AESGCM(derive_key(SECRET, ISSUER)).decrypt(nonce, sealed, VERSION + b"code")
    assert plain == b'{"a":1}'


def test_another_secret_or_another_issuer_does_not_open_it() -> None:
    blob = Sealer([SECRET], ISSUER).seal("access", PAYLOAD)
    assert Sealer([NEXT], ISSUER).open("access", blob) is None
    assert Sealer([SECRET], "https://other.example.com").open("access", blob) is None
    assert Sealer([SECRET], ISSUER + "/").open("access", blob) is None  # the issuer string, exactly


def test_rotation_the_first_secret_seals_and_every_secret_opens() -> None:
    old = Sealer([SECRET], ISSUER).seal("refresh", PAYLOAD)
    rotated = Sealer([NEXT, SECRET], ISSUER)
    assert rotated.open("refresh", old) == PAYLOAD  # nobody is signed out by the rotation
    new = rotated.seal("refresh", PAYLOAD)
    assert Sealer([NEXT], ISSUER).open("refresh", new) == PAYLOAD
    assert Sealer([SECRET], ISSUER).open("refresh", new) is None  # sealed with the first one only
    assert Sealer([NEXT], ISSUER).open("refresh", old) is None  # the old secret removed: its blobs end


def test_every_altered_byte_and_every_cut_is_refused() -> None:
    sealer = Sealer([SECRET], ISSUER)
    blob = sealer.seal("access", PAYLOAD)
    raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    for at in range(len(raw)):
        altered = bytearray(raw)
        altered[at] ^= 0x01
        assert sealer.open("access", b64url(bytes(altered))) is None, at
    for cut in range(len(blob)):
        assert sealer.open("access", blob[:cut]) is None, cut
    for junk in (blob + "=", blob + "==", " " + blob, blob[:10] + "\n" + blob[10:], blob.replace("-", "+")):
        if junk != blob:
            assert sealer.open("access", junk) is None


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("extra", ["", "x", "xy"])  # every length modulo 3, so every count of unused bits
def test_only_the_canonical_spelling_opens(extra: str) -> None:
    """The last base64url character of a blob whose length is not a multiple of 3 bytes carries
    unused low bits: changing only those would decode to the same bytes, and must not open."""
    sealer = Sealer([SECRET], ISSUER)
    blob = sealer.seal("access", {**PAYLOAD, "pad": extra})
    assert sealer.open("access", blob) is not None
    last = ALPHABET.index(blob[-1])
    for low in (1, 2, 3, 4, 8, 12, 15):
        other = blob[:-1] + ALPHABET[last ^ low]
        assert sealer.open("access", other) is None, (len(blob) % 4, low)


@pytest.mark.parametrize("junk", ["", "x", "a" * 100_000, "é" * 40, "sk-mg-v1-" + "a" * 32, "AAAA", None, 42])
def test_junk_is_refused_without_raising(junk: object) -> None:
    assert Sealer([SECRET], ISSUER).open("access", junk) is None  # type: ignore[arg-type]


def test_an_expired_blob_does_not_open() -> None:
    sealer = Sealer([SECRET], ISSUER)
    blob = sealer.seal("code", {"exp": 1000.0})
    assert sealer.open("code", blob, now=999.0) == {"exp": 1000.0}
    assert sealer.open("code", blob, now=1000.0) is None
    assert sealer.open("code", sealer.seal("code", {"exp": "never"})) is None
    assert sealer.open("client", sealer.seal("client", {"name": "x"})) == {"name": "x"}  # no exp: no expiry


async def test_the_memory_store_marks_once_for_a_while() -> None:
    store = MemoryStore()
    assert await store.mark_once("code:a", 0.2) is False  # first use
    assert await store.mark_once("code:a", 0.2) is True  # second use: already marked
    assert await store.is_marked("code:a") and not await store.is_marked("code:b")
    await anyio.sleep(0.3)
    assert not await store.is_marked("code:a")
    assert await store.mark_once("code:a", 10) is False  # its mark expired, like the artefact it stood for


async def test_the_memory_store_sweeps_expired_marks() -> None:
    store = MemoryStore()
    for i in range(MemoryStore.SWEEP_EVERY - 1):
        await store.mark_once(f"old:{i}", 0)
    assert len(store) == MemoryStore.SWEEP_EVERY - 1
    await store.mark_once("live", 60)  # the sweep runs with this one
    assert len(store) == 1 and await store.is_marked("live")
    await store.aclose()
    assert len(store) == 0
