"""Sealed artefacts: what a client or a browser carries, encrypted and authenticated by this deployment.

A client registration, a consent form, a pending sign-in, an authorization code, an access token
and a refresh token are each a JSON object sealed with AES-256-GCM. The keys come from HKDF-SHA256
over each configured secret with the issuer as context, so any replica sharing the secret opens
what another sealed, and another deployment's blobs (another secret or another public URL) do not
open. The artefact's kind is the associated data: one kind never passes as another. The first
secret seals, every secret opens, so a secret can be rotated in without signing everyone out.

A blob is base64url (no padding) of: a version byte, a 96-bit random nonce, the ciphertext and its
tag. It holds the user's ModelGates key in the tokens and codes, which therefore never appear in the
clear to a client, a browser, a URL or a log.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_BLOB_CHARS = 8192  # far above any artefact this server seals; longer input is not decoded at all
_SALT = b"mcp-modelgates/oauth/v1"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes | None:
    if not _B64URL.fullmatch(text):  # b64decode would skip stray characters instead of refusing them
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # The last character may carry unused bits: only the one canonical spelling of a blob opens it.
    return raw if b64url(raw) == text else None


def derive_key(secret: str, issuer: str) -> bytes:
    """The AES-256 key for one secret, bound to this deployment's issuer."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=issuer.encode()).derive(secret.encode())


class Sealer:
    """Seals and opens artefacts of one deployment (its secrets and its issuer)."""

    def __init__(self, secrets: Sequence[str], issuer: str) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self._aeads = [AESGCM(derive_key(secret, issuer)) for secret in secrets]

    def seal(self, kind: str, payload: dict[str, Any]) -> str:
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
        return b64url(VERSION + nonce + self._aeads[0].encrypt(nonce, plain, VERSION + kind.encode()))

    def open(self, kind: str, blob: str, now: float | None = None) -> dict[str, Any] | None:
        """The payload of a blob of this kind sealed by this deployment and not expired (its `exp`,
        when it has one, is still ahead); None for anything else, whatever is wrong with it."""
        if not isinstance(blob, str) or not blob or len(blob) > MAX_BLOB_CHARS:
            return None
        raw = _unb64url(blob)
        if raw is None or len(raw) < 1 + NONCE_BYTES + TAG_BYTES or raw[:1] != VERSION:
            return None
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        for aead in self._aeads:
            try:
                plain = aead.decrypt(nonce, sealed, VERSION + kind.encode())
            except InvalidTag:
                continue
            payload = json.loads(plain)
            if not isinstance(payload, dict):
                return None
            exp = payload.get("exp")
            if exp is not None and (not isinstance(exp, int | float) or exp <= (time.time() if now is None else now)):
                return None
            return payload
        return None
