"""PKCE (RFC 7636) helpers: a verifier, its challenge, and the browser URL to approve a code.

No network: everything here is computed locally from a cryptographically secure source.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode, urlsplit

from mcp_modelgates.models import ChallengeMethod, PkcePair

VERIFIER_BYTES = 32  # 32 random bytes -> 43 base64url characters, the RFC minimum length


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    return _b64url(secrets.token_bytes(VERIFIER_BYTES))


def challenge_for(verifier: str, method: ChallengeMethod = "S256") -> str:
    if method == "plain":
        return verifier
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def authorization_url(base_url: str, callback_url: str, challenge: str, method: ChallengeMethod) -> str:
    """`<origin of the API base URL>/auth?callback_url=...&code_challenge=...&code_challenge_method=...`."""
    parts = urlsplit(base_url)
    query = urlencode({"callback_url": callback_url, "code_challenge": challenge, "code_challenge_method": method})
    return f"{parts.scheme}://{parts.netloc}/auth?{query}"


def generate(
    base_url: str, method: ChallengeMethod = "S256", callback_url: str | None = None, verifier: str | None = None
) -> PkcePair:
    verifier = verifier or new_verifier()
    challenge = challenge_for(verifier, method)
    pair = PkcePair(code_verifier=verifier, code_challenge=challenge, code_challenge_method=method)
    if callback_url is not None:
        pair.authorization_url = authorization_url(base_url, callback_url, challenge, method)
    return pair
