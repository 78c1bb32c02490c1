"""Both API tools through a real MCP client session against the real HTTP stand-in.

Each test checks the wire: what ModelGates received (method, path, headers, exact body) and
the JSON result the MCP client received.
"""

from __future__ import annotations

import pytest

from mcp_modelgates import __version__
from tests.conftest import API_KEY, BOTH_ERAS, ClientFactory, wire
from tests.fake_api import FakeModelGates, error_body

pytestmark = pytest.mark.anyio

CALLBACK = "https://myapp.com/auth/callback"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
SERVER_INFO = {"name": "mcp-modelgates", "title": "ModelGates", "version": __version__}
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}


@BOTH_ERAS  # the result's `_meta` differs by era
async def test_create_auth_code_forwards_body_headers_and_returns_structured(
    fake: FakeModelGates, connect: ClientFactory, mode: str
) -> None:
    fake.reply(200, {"data": AUTH_CODE})
    args = {"callback_url": CALLBACK, "code_challenge": CHALLENGE, "code_challenge_method": "S256", "limit": 100}
    async with connect() as client:
        result = await client.call_tool("create_auth_code", args)

    (req,) = fake.requests
    assert (req.method, req.path) == ("POST", "/api/v1/auth/keys/code")
    assert req.json == args  # exactly the arguments, nothing added
    assert '"limit":100' in req.body.decode().replace(" ", "")  # numbers stay numbers (not "100")
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "application/json"
    assert req.headers["user-agent"] == f"mcp-modelgates/{__version__}"
    assert wire(result) == {
        "content": [
            {
                "type": "text",
                "text": "Created authorization code auth_code_xyz789 for app 12345 at 2025-08-24T10:30:00Z. "
                "After the user approves, call exchange_auth_code within 10 minutes.",
            }
        ],
        "structuredContent": {"data": AUTH_CODE},
        "isError": False,
        "resultType": "complete",
        # The modern protocol era stamps every result with the server's identity.
        **({} if mode == "legacy" else {"_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO}}),
    }
    assert result.is_error is False
    assert result.structured_content == {"data": AUTH_CODE}


async def test_create_auth_code_forwards_every_field_and_leaves_unset_ones_out(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    every = {
        "callback_url": "http://localhost:3000/cb?state=xyz",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "plain",
        "limit": 12.5,
        "expires_at": "2099-12-31T23:59:59Z",
        "key_label": "Claude Code on my laptop",
        "usage_limit_type": "monthly",
        "workspace_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    }
    fake.reply(200, {"data": AUTH_CODE})
    fake.reply(200, {"data": AUTH_CODE})
    fake.reply(200, {"data": AUTH_CODE})
    async with connect() as client:
        assert not (await client.call_tool("create_auth_code", every)).is_error
        assert not (await client.call_tool("create_auth_code", {"callback_url": CALLBACK})).is_error
        assert not (await client.call_tool("create_auth_code", {"callback_url": CALLBACK, "expires_at": None})).is_error
    assert [r.json for r in fake.requests] == [
        every,
        {"callback_url": CALLBACK},
        {"callback_url": CALLBACK, "expires_at": None},  # null means "no expiry" and is forwarded
    ]


async def test_exchange_forwards_code_and_returns_key(fake: FakeModelGates, connect: ClientFactory) -> None:
    fake.reply(200, {"key": "sk-mg-v1-new", "user_id": "user_1"})
    args = {"code": "auth_code_abc123def456", "code_verifier": VERIFIER, "code_challenge_method": "S256"}
    async with connect() as client:
        result = await client.call_tool("exchange_auth_code", args)
    (req,) = fake.requests
    assert (req.method, req.path, req.json) == ("POST", "/api/v1/auth/keys", args)
    assert req.headers["authorization"] == f"Bearer {API_KEY}"  # sent when configured
    assert result.is_error is False
    assert result.structured_content == {"key": "sk-mg-v1-new", "user_id": "user_1"}
    assert "sk-mg-v1-new" in result.content[0].text  # type: ignore[union-attr]


async def test_exchange_null_method_is_forwarded_and_unset_is_omitted(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    fake.reply(200, {"key": "k1", "user_id": None})
    fake.reply(200, {"key": "k2", "user_id": None})
    async with connect() as client:
        first = await client.call_tool("exchange_auth_code", {"code": "c1", "code_challenge_method": None})
        second = await client.call_tool("exchange_auth_code", {"code": "c2"})
    assert [r.json for r in fake.requests] == [{"code": "c1", "code_challenge_method": None}, {"code": "c2"}]
    assert first.structured_content == {"key": "k1", "user_id": None}
    assert second.structured_content == {"key": "k2", "user_id": None}


async def test_exchange_works_without_a_key_and_sends_no_authorization(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    fake.reply(200, {"key": "sk-mg-v1-new", "user_id": None})
    async with connect(api_key=None) as client:
        result = await client.call_tool("exchange_auth_code", {"code": "c1", "code_verifier": VERIFIER})
    assert result.is_error is False
    assert "authorization" not in fake.requests[0].headers


async def test_create_without_a_key_is_refused_before_any_request(fake: FakeModelGates, connect: ClientFactory) -> None:
    async with connect(api_key=None) as client:
        tools = await client.list_tools()
        result = await client.call_tool("create_auth_code", {"callback_url": CALLBACK})
    assert {t.name for t in tools.tools} >= {"create_auth_code", "exchange_auth_code"}
    assert result.is_error is True
    assert "MODELGATES_API_KEY" in result.content[0].text  # type: ignore[union-attr]
    assert fake.requests == []


CREATE = ("create_auth_code", {"callback_url": CALLBACK})
EXCHANGE = ("exchange_auth_code", {"code": "auth_code_1", "code_verifier": VERIFIER, "code_challenge_method": "S256"})


@pytest.mark.parametrize(
    ("call", "status", "body", "expected"),
    [
        (CREATE, 400, error_body(400, "callback_url is invalid"), ["HTTP 400 Bad Request", "callback_url is invalid", "(error code 400)"]),
        (CREATE, 401, error_body(401, "Missing Authentication header"), ["HTTP 401", "Missing Authentication header", "Check MODELGATES_API_KEY"]),
        (CREATE, 409, error_body(409, "Resource conflict. Please try again later."), ["HTTP 409 Conflict", "Resource conflict", "try again"]),
        (CREATE, 500, error_body(500, "Internal Server Error"), ["HTTP 500", "failure on the ModelGates side"]),
        (EXCHANGE, 400, error_body(400, "Invalid code_challenge_method"), ["HTTP 400", "Invalid code_challenge_method", "must be the method used when the code was created"]),
        (EXCHANGE, 403, error_body(403, "Invalid code or code_verifier"), ["HTTP 403 Forbidden", "Invalid code or code_verifier", "expired (codes last 10 minutes) or already used", "generate_pkce"]),
        (EXCHANGE, 403, error_body(403, "Authorization code expired"), ["Authorization code expired", "expired"]),
        (EXCHANGE, 500, error_body(500, "Internal Server Error"), ["HTTP 500", "failure on the ModelGates side", "may already be used"]),
        (EXCHANGE, 418, error_body(418, "I'm a teapot"), ["HTTP 418", "I'm a teapot (error code 418)"]),
        (CREATE, 422, {"detail": "weird shape"}, ["HTTP 422", "unexpected body", "weird shape"]),
        (EXCHANGE, 507, error_body(507, "Insufficient Storage"), ["HTTP 507", "Insufficient Storage", "failure on the ModelGates side"]),
    ],
)  # fmt: skip
async def test_error_statuses_become_tool_errors_with_status_message_and_hint(
    fake: FakeModelGates,
    connect: ClientFactory,
    call: tuple[str, dict[str, object]],
    status: int,
    body: object,
    expected: list[str],
) -> None:
    tool, args = call
    fake.reply(status, body)
    async with connect(max_retries=0) as client:
        result = await client.call_tool(tool, args)
    assert result.is_error is True
    assert result.structured_content is None
    text = result.content[0].text  # type: ignore[union-attr]
    for part in expected:
        assert part in text
    assert API_KEY not in text
    assert len(fake.requests) == 1


async def test_non_json_error_body_gives_status_and_printable_excerpt(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head>\n<body>\x1b[31mnginx\x1b[0m\x00</body></html>"
    fake.reply(502, body=html, headers={"Content-Type": "text/html"})
    fake.reply(503, body=b"")
    async with connect(max_retries=0) as client:
        html_result = await client.call_tool(*EXCHANGE)
        empty_result = await client.call_tool(*EXCHANGE)
    text = html_result.content[0].text  # type: ignore[union-attr]
    assert "HTTP 502 Bad Gateway" in text and "502 Bad Gateway</title>" in text and "nginx" in text
    assert "\x1b" not in text and "\x00" not in text and "\n" not in text
    empty = empty_result.content[0].text  # type: ignore[union-attr]
    assert "HTTP 503 Service Unavailable with an empty body" in empty


async def test_connection_refused_names_the_host(connect: ClientFactory) -> None:
    async with connect(base_url="http://127.0.0.1:9/api/v1", max_retries=0) as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert "127.0.0.1:9" in text and "connection refused" in text
    assert API_KEY not in text


async def test_timeout_names_host_and_seconds(fake: FakeModelGates, connect: ClientFactory) -> None:
    fake.reply(200, {"data": AUTH_CODE}, delay=2.0)
    async with connect(timeout=0.5, max_retries=0) as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert f"127.0.0.1:{fake.port}" in text and "0.5 s" in text


async def test_extra_fields_in_a_success_body_are_tolerated(fake: FakeModelGates, connect: ClientFactory) -> None:
    fake.reply(200, {"data": {**AUTH_CODE, "expires_in": 600}, "meta": {"x": 1}})
    fake.reply(200, {"key": "sk-1", "user_id": "u1", "scopes": ["all"]})
    async with connect() as client:
        created = await client.call_tool(*CREATE)
        exchanged = await client.call_tool(*EXCHANGE)
    assert created.structured_content == {"data": AUTH_CODE}
    assert exchanged.structured_content == {"key": "sk-1", "user_id": "u1"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"user_id": "u1"}, "`key` is missing"),
        ({"key": None, "user_id": "u1"}, "`key`"),
        ({"key": 42, "user_id": "u1"}, "`key`"),
        ({"key": "sk-1"}, "`user_id` is missing"),
        ([{"key": "sk-1"}], "not an object"),
        ("just a string", "not an object"),
    ],
)
async def test_success_body_not_matching_the_contract_is_a_clear_error(
    fake: FakeModelGates, connect: ClientFactory, body: object, expected: str
) -> None:
    fake.reply(200, body)
    async with connect() as client:
        result = await client.call_tool(*EXCHANGE)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert "HTTP 200" in text and expected in text


async def test_unknown_tool_is_a_protocol_error(connect: ClientFactory) -> None:
    from mcp.shared.exceptions import MCPError

    async with connect() as client:
        with pytest.raises(MCPError, match="Unknown tool: 'delete_everything'"):
            await client.call_tool("delete_everything", {})
        # a caller-chosen name is echoed only as a short, printable excerpt
        with pytest.raises(MCPError) as tool_info:
            await client.call_tool("\x1b[2J" + "x" * 5000, {})
        with pytest.raises(MCPError) as prompt_info:
            await client.get_prompt("\x1b]0;pwned\x07" + "y" * 5000, {})
    for info in (tool_info, prompt_info):
        message = str(info.value)
        assert "\x1b" not in message and "\x07" not in message and len(message) < 200, message
