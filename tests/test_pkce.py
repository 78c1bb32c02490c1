"""The local PKCE helper, through the same functions the generate_pkce tool uses."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from mcp_modelgates import pkce
from mcp_modelgates.models import PKCE_PATTERN
from tests.conftest import ClientFactory

RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 Appendix B
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_rfc_7636_appendix_b_vector() -> None:
    assert pkce.challenge_for(RFC_VERIFIER, "S256") == RFC_CHALLENGE
    pair = pkce.generate("https://modelgates.ai/api/v1", "S256", verifier=RFC_VERIFIER)
    assert (pair.code_verifier, pair.code_challenge, pair.code_challenge_method) == (
        RFC_VERIFIER,
        RFC_CHALLENGE,
        "S256",
    )


def test_plain_only_when_asked() -> None:
    assert pkce.generate("https://modelgates.ai/api/v1").code_challenge_method == "S256"
    pair = pkce.generate("https://modelgates.ai/api/v1", "plain")
    assert pair.code_challenge == pair.code_verifier


def test_verifiers_are_fresh_and_well_formed() -> None:
    verifiers = {pkce.new_verifier() for _ in range(200)}
    assert len(verifiers) == 200
    assert all(re.fullmatch(PKCE_PATTERN, v) and len(v) == 43 for v in verifiers)


def test_authorization_url_uses_the_api_origin_and_encodes_every_parameter() -> None:
    callback = "http://localhost:3000/cb?state=a b&x=1"
    url = pkce.authorization_url("https://modelgates.ai/api/v1", callback, RFC_CHALLENGE, "S256")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "modelgates.ai", "/auth")
    assert parse_qs(parts.query) == {
        "callback_url": [callback],
        "code_challenge": [RFC_CHALLENGE],
        "code_challenge_method": ["S256"],
    }
    assert " " not in url and "&x=1" not in url


@pytest.mark.anyio
async def test_generate_pkce_tool_returns_pair_and_url(connect: ClientFactory) -> None:
    async with connect(base_url="https://modelgates.ai/api/v1") as client:
        first = await client.call_tool("generate_pkce", {"callback_url": "http://localhost:3000/callback"})
        second = await client.call_tool("generate_pkce", {})
    a, b = first.structured_content, second.structured_content
    assert a is not None and b is not None and not first.is_error
    # S256 computed here, independently of the code under test (RFC 7636 section 4.2)
    digest = hashlib.sha256(a["code_verifier"].encode("ascii")).digest()
    assert a["code_challenge"] == base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    assert (a["code_challenge_method"], len(a["code_verifier"])) == ("S256", 43)
    assert a["code_verifier"] != b["code_verifier"]
    assert a["authorization_url"].startswith("https://modelgates.ai/auth?callback_url=http%3A%2F%2Flocalhost%3A3000")
    assert "authorization_url" not in b
