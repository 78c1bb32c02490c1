"""The whole PKCE flow from inside an agent, against the stand-in that binds codes to challenges.

generate_pkce -> create_auth_code (or the authorization URL) -> exchange_auth_code, plus the
ways it goes wrong in practice: a wrong verifier, a code used twice, an expired code, a method
that does not match, and a whole callback URL pasted where only the code belongs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from mcp import Client

from mcp_modelgates import pkce
from mcp_modelgates.prompt import INSTRUCTIONS, PROMPT_NAME
from tests.conftest import ClientFactory, wire
from tests.fake_api import KEY_PREFIX, FakeModelGates

pytestmark = pytest.mark.anyio

CALLBACK = "http://localhost:3000/callback"
RESTART = "Start the flow again: generate_pkce"


async def _call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = wire(await client.call_tool(tool, args))
    result.pop("_meta", None)  # the modern era's server stamp; compared elsewhere
    return result


def _text(result: dict[str, Any]) -> str:
    text: str = result["content"][0]["text"]
    return text


async def _start(client: Client, fake: FakeModelGates) -> tuple[dict[str, Any], str]:
    """generate_pkce, then create_auth_code with its challenge: the pair and the issued code."""
    pair = await _call(client, "generate_pkce", {"callback_url": CALLBACK})
    assert pair["isError"] is False
    p = pair["structuredContent"]
    created = await _call(
        client,
        "create_auth_code",
        {
            "callback_url": CALLBACK,
            "code_challenge": p["code_challenge"],
            "code_challenge_method": p["code_challenge_method"],
        },
    )
    assert created["isError"] is False
    return p, created["structuredContent"]["data"]["id"]


async def test_generate_create_exchange_gives_a_key(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        p, code = await _start(client, fake)
        exchanged = await _call(
            client,
            "exchange_auth_code",
            {"code": code, "code_verifier": p["code_verifier"], "code_challenge_method": "S256"},
        )
    assert pkce.challenge_for(p["code_verifier"]) == p["code_challenge"]
    key = exchanged["structuredContent"]["key"]
    assert key.startswith(KEY_PREFIX)
    assert exchanged == {
        "content": [
            {
                "type": "text",
                "text": f"Exchanged the code for a new ModelGates API key for user user_2abc: {key} . "
                "Show it to the user once; it cannot be retrieved again.",
            }
        ],
        "structuredContent": {"key": key, "user_id": "user_2abc"},
        "isError": False,
        "resultType": "complete",
    }
    # What reached ModelGates: the challenge at creation, its verifier at exchange, nothing else.
    create, exchange = (r.json for r in fake.requests)
    assert create == {"callback_url": CALLBACK, "code_challenge": p["code_challenge"], "code_challenge_method": "S256"}
    assert exchange == {"code": code, "code_verifier": p["code_verifier"], "code_challenge_method": "S256"}


async def test_authorization_url_path_without_create(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        pair = (await _call(client, "generate_pkce", {"callback_url": CALLBACK}))["structuredContent"]
        url = urlsplit(pair["authorization_url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fake.origin}/auth"
        query = parse_qs(url.query)
        assert query == {
            "callback_url": [CALLBACK],
            "code_challenge": [pair["code_challenge"]],
            "code_challenge_method": ["S256"],
        }
        # The user approves in the browser; ModelGates binds the code to the challenge in the URL.
        code = fake.issue_code(query["code_challenge"][0], query["code_challenge_method"][0])
        exchanged = await _call(client, "exchange_auth_code", {"code": code, "code_verifier": pair["code_verifier"]})
    assert exchanged["isError"] is False
    assert fake.requests[-1].json == {"code": code, "code_verifier": pair["code_verifier"]}


async def test_wrong_verifier_is_refused_with_the_restart_hint(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        _, code = await _start(client, fake)
        other = pkce.new_verifier()
        result = await _call(
            client, "exchange_auth_code", {"code": code, "code_verifier": other, "code_challenge_method": "S256"}
        )
    assert result["isError"] is True and "structuredContent" not in result
    text = _text(result)
    assert "HTTP 403 Forbidden: Invalid code or code_verifier (error code 403)" in text
    assert "does not belong to the challenge" in text and RESTART in text


async def test_a_code_works_once(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        p, code = await _start(client, fake)
        args = {"code": code, "code_verifier": p["code_verifier"], "code_challenge_method": "S256"}
        first = await _call(client, "exchange_auth_code", args)
        second = await _call(client, "exchange_auth_code", args)
    assert first["isError"] is False
    assert second["isError"] is True
    assert "already used" in _text(second) and RESTART in _text(second)
    assert len([r for r in fake.requests if r.path.endswith("/auth/keys")]) == 2  # never re-sent on its own


async def test_expired_code_gets_the_hint(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        p, code = await _start(client, fake)
        fake.expire(code)
        result = await _call(client, "exchange_auth_code", {"code": code, "code_verifier": p["code_verifier"]})
    assert result["isError"] is True
    text = _text(result)
    assert "Authorization code expired" in text and "10 minutes" in text and RESTART in text


async def test_method_mismatch_gets_the_method_hint(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect() as client:
        p, code = await _start(client, fake)
        result = await _call(
            client,
            "exchange_auth_code",
            {"code": code, "code_verifier": p["code_verifier"], "code_challenge_method": "plain"},
        )
    assert result["isError"] is True
    text = _text(result)
    assert "HTTP 400 Bad Request: Invalid code_challenge_method" in text
    assert "must be the method used when the code was created" in text


@pytest.mark.parametrize(
    "pasted",
    [
        "http://localhost:3000/callback?code=auth_code_abc&state=xyz",
        "https://app.example/cb?code=abc&state=1",
        "?code=abc",
        "code=abc",
    ],
)
async def test_a_whole_callback_url_is_refused_not_guessed(
    fake: FakeModelGates, connect: ClientFactory, pasted: str
) -> None:
    async with connect() as client:
        result = await _call(client, "exchange_auth_code", {"code": pasted})
    assert result["isError"] is True
    assert "code: looks like a whole callback URL; pass only the value of its `code` query parameter" in _text(result)
    assert fake.requests == []


async def test_instructions_and_descriptions_describe_the_flow(connect: ClientFactory) -> None:
    for step in ("generate_pkce", "authorization_url", "callback_url?code=", "exchange_auth_code", "10 minutes"):
        assert step in INSTRUCTIONS
    async with connect() as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "exchange_auth_code" in (tools["generate_pkce"].description or "")
    assert "exchange_auth_code" in (tools["create_auth_code"].description or "")
    assert "generate_pkce" in (tools["exchange_auth_code"].description or "")
    annotations = tools["generate_pkce"].annotations
    assert annotations is not None
    assert (annotations.read_only_hint, annotations.idempotent_hint, annotations.open_world_hint) == (
        True,
        False,
        False,
    )


async def test_connect_prompt_walks_through_the_tools(connect: ClientFactory) -> None:
    async with connect() as client:
        listed = await client.list_prompts()
        prompt = await client.get_prompt(PROMPT_NAME, {"callback_url": CALLBACK})
    (entry,) = listed.prompts
    assert entry.name == PROMPT_NAME
    assert [(a.name, a.required) for a in entry.arguments or []] == [("callback_url", False)]
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert CALLBACK in text
    assert text.index("generate_pkce") < text.index("authorization_url") < text.index("exchange_auth_code")


async def test_connect_prompt_refuses_a_bad_callback(connect: ClientFactory) -> None:
    from mcp.shared.exceptions import MCPError

    async with connect() as client:
        with pytest.raises(MCPError, match="callback_url"):
            await client.get_prompt(PROMPT_NAME, {"callback_url": "javascript:alert(1)"})
        # Without a callback_url the prompt leads with connect_account, which needs none.
        prompt = await client.get_prompt(PROMPT_NAME, {})
    assert "connect_account" in prompt.messages[0].content.text  # type: ignore[union-attr]
