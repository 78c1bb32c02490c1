"""Hostile and malformed tool arguments: each is refused by name and none reaches the network.

Named cases cover every documented constraint; property-based tests then throw arbitrary JSON
argument objects at all tools through one real MCP client session per test.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from pydantic import ValidationError

from mcp_modelgates.config import ConfigError, Settings, load_settings
from mcp_modelgates.models import CreateAuthCodeRequest, ExchangeAuthCodeRequest, GeneratePkceRequest, RequestModel
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY, ClientFactory, run_stdio, stdio_params
from tests.fake_api import FakeModelGates

CALLBACK = "https://myapp.com/auth/callback"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CREATE = "create_auth_code"
EXCHANGE = "exchange_auth_code"
PKCE = "generate_pkce"
MODELS: dict[str, type[RequestModel]] = {
    CREATE: CreateAuthCodeRequest,
    EXCHANGE: ExchangeAuthCodeRequest,
    PKCE: GeneratePkceRequest,
}


def _text(result: Any) -> str:
    return str(result.content[0].text)


# (tool, arguments, the field the message must name)
NAMED_CASES: list[tuple[str, dict[str, Any], str]] = [
    # the code
    (EXCHANGE, {}, "code"),
    (EXCHANGE, {"code": ""}, "code"),
    (EXCHANGE, {"code": "   "}, "code"),
    (EXCHANGE, {"code": "\t\n"}, "code"),
    (EXCHANGE, {"code": "a" * 10 * 1024}, "code"),
    (EXCHANGE, {"code": "auth\x00code"}, "code"),
    (EXCHANGE, {"code": "auth\x1b[31mcode"}, "code"),
    (EXCHANGE, {"code": "auth\u0085code"}, "code"),
    (EXCHANGE, {"code": "auth code"}, "code"),
    (EXCHANGE, {"code": 12}, "code"),
    (EXCHANGE, {"code": None}, "code"),
    (EXCHANGE, {"code": ["auth_code_1"]}, "code"),
    # wrong types and non-finite numbers for limit
    (CREATE, {"callback_url": CALLBACK, "limit": "abc"}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": "100"}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": True}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": math.nan}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": math.inf}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": -math.inf}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": -1}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": -0.01}, "limit"),
    (CREATE, {"callback_url": CALLBACK, "limit": {"amount": 1}}, "limit"),
    # enums
    (CREATE, {"callback_url": CALLBACK, "code_challenge_method": "S512"}, "code_challenge_method"),
    (CREATE, {"callback_url": CALLBACK, "code_challenge_method": "s256"}, "code_challenge_method"),
    (CREATE, {"callback_url": CALLBACK, "code_challenge_method": None}, "code_challenge_method"),
    (CREATE, {"callback_url": CALLBACK, "usage_limit_type": "yearly"}, "usage_limit_type"),
    (CREATE, {"callback_url": CALLBACK, "usage_limit_type": "Daily"}, "usage_limit_type"),
    (EXCHANGE, {"code": "c1", "code_challenge_method": "S512"}, "code_challenge_method"),
    (EXCHANGE, {"code": "c1", "code_challenge_method": "s256"}, "code_challenge_method"),
    (PKCE, {"code_challenge_method": "S512"}, "code_challenge_method"),
    (PKCE, {"code_challenge_method": "s256"}, "code_challenge_method"),
    # callback_url
    (CREATE, {}, "callback_url"),
    (CREATE, {"callback_url": ""}, "callback_url"),
    (CREATE, {"callback_url": "not a url"}, "callback_url"),
    (CREATE, {"callback_url": "myapp.com/callback"}, "callback_url"),
    (CREATE, {"callback_url": "javascript:alert(1)"}, "callback_url"),
    (CREATE, {"callback_url": "JavaScript://%0aalert(1)"}, "callback_url"),
    (CREATE, {"callback_url": "data:text/html,<script>alert(1)</script>"}, "callback_url"),
    (CREATE, {"callback_url": "http://myapp.com/callback"}, "callback_url"),
    (CREATE, {"callback_url": "http://localhost.evil.com/callback"}, "callback_url"),
    (CREATE, {"callback_url": "http://127.0.0.1.nip.io/callback"}, "callback_url"),
    (CREATE, {"callback_url": "https://user:pw@myapp.com/callback"}, "callback_url"),
    (CREATE, {"callback_url": "https://myapp.com/cb#frag"}, "callback_url"),
    (CREATE, {"callback_url": "https://myapp.com/c\x00b"}, "callback_url"),
    (CREATE, {"callback_url": "https://myapp.com:99999/cb"}, "callback_url"),
    (CREATE, {"callback_url": "https://myapp.com/" + "a" * 3000}, "callback_url"),
    (CREATE, {"callback_url": 42}, "callback_url"),
    (PKCE, {"callback_url": "javascript:alert(1)"}, "callback_url"),
    (PKCE, {"callback_url": "http://myapp.com/callback"}, "callback_url"),
    # key_label, workspace_id, expires_at
    (CREATE, {"callback_url": CALLBACK, "key_label": "x" * 101}, "key_label"),
    (CREATE, {"callback_url": CALLBACK, "key_label": ""}, "key_label"),
    (CREATE, {"callback_url": CALLBACK, "key_label": "my\x1b[2Jlabel"}, "key_label"),
    (CREATE, {"callback_url": CALLBACK, "workspace_id": "ws-1"}, "workspace_id"),
    (CREATE, {"callback_url": CALLBACK, "workspace_id": "3fa85f64-5717-4562-b3fc-2c963f66afa"}, "workspace_id"),
    (CREATE, {"callback_url": CALLBACK, "workspace_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6\n"}, "workspace_id"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": "2099-12-31T23:59Z"}, "expires_at"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": "2099-12-31"}, "expires_at"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": "2099-12-31T23:59:59"}, "expires_at"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": "2099-02-30T00:00:00Z"}, "expires_at"),
    (CREATE, {"callback_url": CALLBACK, "expires_at": 4102444800}, "expires_at"),
    # the verifier and the challenge (RFC 7636: 43-128 of A-Z a-z 0-9 - . _ ~)
    (EXCHANGE, {"code": "c1", "code_verifier": "a" * 42}, "code_verifier"),
    (EXCHANGE, {"code": "c1", "code_verifier": "a" * 129}, "code_verifier"),
    (EXCHANGE, {"code": "c1", "code_verifier": "a" * 42 + "+"}, "code_verifier"),
    (EXCHANGE, {"code": "c1", "code_verifier": "/" + "a" * 42}, "code_verifier"),
    (EXCHANGE, {"code": "c1", "code_verifier": VERIFIER[:-1] + "="}, "code_verifier"),
    (CREATE, {"callback_url": CALLBACK, "code_challenge": CHALLENGE[:-1] + "+"}, "code_challenge"),
    (CREATE, {"callback_url": CALLBACK, "code_challenge": "short"}, "code_challenge"),
    # unknown arguments
    (CREATE, {"callback_url": CALLBACK, "surprise": 1}, "surprise"),
    (CREATE, {"callback_url": CALLBACK, "callbackUrl": CALLBACK}, "callbackUrl"),
    (EXCHANGE, {"code": "c1", "key": "sk-1"}, "key"),
    (PKCE, {"code_verifier": VERIFIER}, "code_verifier"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto"])  # argument checks do not depend on the protocol era
async def test_named_hostile_arguments_are_refused_by_field_without_a_request(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    async with connect() as client:
        for tool, args, field in NAMED_CASES:
            result = await client.call_tool(tool, args)
            text = _text(result)
            assert result.is_error is True, (tool, args)
            assert text.startswith(f"Invalid arguments for {tool}: "), (args, text)
            assert f"{field}: " in text, (field, text)
            # short and printable: the rejected value is never echoed back
            assert len(text) < 600 and text.isprintable(), (args, text)
            assert "aaaaaaaaaaaaaaaaaaaa" not in text and "javascript" not in text.lower()
    assert fake.requests == []


@pytest.mark.anyio
async def test_unknown_argument_names_are_echoed_short_and_printable(
    fake: FakeModelGates, connect: ClientFactory
) -> None:
    async with connect() as client:
        result = await client.call_tool(EXCHANGE, {"code": "c1", "\x1b[31mred\x1b[0m": 1, "k" * 5000: 2})
    text = _text(result)
    assert result.is_error is True and "unknown argument" in text
    assert "\x1b" not in text and text.isprintable()
    assert "red: unknown argument" in text  # still named, minus the escape sequence
    assert len(text) < 600
    assert fake.requests == []


def _strict_json(line: bytes) -> Any:
    """Parse one stdout line as strict JSON: NaN or Infinity on the wire is a failure too."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {constant} on stdout")

    return json.loads(line, parse_constant=refuse)


def test_raw_nan_infinity_and_non_object_arguments_over_stdio(fake: FakeModelGates) -> None:
    """Python's JSON reader accepts NaN and Infinity; so must the server, and refuse them by name."""
    call = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    lines = [
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}),
        '{"jsonrpc":"2.0","method":"notifications/initialized"}',
        call % (2, CREATE, '{"callback_url":"https://a.example/cb","limit":NaN}'),
        call % (3, CREATE, '{"callback_url":"https://a.example/cb","limit":Infinity}'),
        call % (4, CREATE, '{"callback_url":"https://a.example/cb","limit":-Infinity}'),
        call % (5, CREATE, '{"callback_url":"https://a.example/cb","limit":1e999}'),
        call % (6, CREATE, "[1,2]"),
        call % (7, EXCHANGE, '"auth_code_1"'),
        call % (8, EXCHANGE, "null"),
        call % (9, EXCHANGE, '{"code":"' + "c" * 2_000_000 + '"}'),
        '{"jsonrpc":"2.0","id":10,"method":"tools/call"}',
        "\xff\xfe not even text",
    ]
    env = stdio_params(
        {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url, "MODELGATES_LOG_LEVEL": "DEBUG"}
    ).env
    payload = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    run = run_stdio(payload, env, answers=set(range(1, 11)))
    assert run.returncode == 0
    by_id = {m.get("id"): m for m in (_strict_json(line) for line in run.stdout_lines)}
    for id_ in (2, 3, 4, 5):
        result = by_id[id_]["result"]
        assert result["isError"] is True and "limit: " in result["content"][0]["text"]
    # arguments that are not an object are a protocol-level "invalid params", never an internal error
    for id_ in (6, 7, 10):
        assert by_id[id_]["error"]["code"] == -32602
    # `null` arguments mean "none given": the tool then names the missing field
    assert "code: required" in by_id[8]["result"]["content"][0]["text"]
    assert "code: " in by_id[9]["result"]["content"][0]["text"] and len(json.dumps(by_id[9])) < 1000
    assert all(m.get("error", {}).get("code") != -32603 for m in by_id.values())
    assert fake.requests == []
    assert API_KEY.encode() not in run.stderr


# ---------------------------------------------------------------- property-based

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
# Values per field, the first one valid, so that drawn argument objects are sometimes valid as a whole.
SAMPLES: dict[str, dict[str, list[Any]]] = {
    CREATE: {
        "callback_url": [CALLBACK, "http://localhost:3000/cb", "http://evil.example/cb", "javascript:x"],
        "code_challenge": [CHALLENGE, "short", CHALLENGE + "/"],
        "code_challenge_method": ["S256", "plain", "s256", None],
        "limit": [0, 100.0, -1, "5"],
        "expires_at": ["2099-12-31T23:59:59Z", None, "2099-12-31T23:59Z", "2001-01-01T00:00:00Z"],
        "key_label": ["laptop", "x" * 101, ""],
        "usage_limit_type": ["daily", "monthly", "yearly"],
        "workspace_id": ["3fa85f64-5717-4562-b3fc-2c963f66afa6", "ws-1"],
    },
    EXCHANGE: {
        "code": ["auth_code_1", "", " ", "https://app/cb?code=abc", "c" * 1025],
        "code_verifier": [VERIFIER, "a" * 42, VERIFIER + "+"],
        "code_challenge_method": ["S256", "plain", None, "S512"],
    },
    PKCE: {
        "callback_url": [CALLBACK, "http://127.0.0.1:8080/cb", "ftp://x.example/cb"],
        "code_challenge_method": ["S256", "plain", "none"],
    },
}


@st.composite
def argument_objects(draw: st.DrawFn, tool: str) -> dict[str, Any]:
    """A valid argument object with up to three fields left out, resampled or replaced by any
    JSON, and sometimes unknown arguments."""
    fields = MODELS[tool].model_fields
    args: dict[str, Any] = {}
    touched = draw(st.sets(st.sampled_from(sorted(SAMPLES[tool])), max_size=3))
    for name, samples in SAMPLES[tool].items():
        if name not in touched:
            if fields[name].is_required() or draw(st.booleans()):
                args[name] = samples[0]
            continue
        how = draw(st.sampled_from(["omit", "sample", "any"]))
        if how == "sample":
            args[name] = draw(st.sampled_from(samples))
        elif how == "any":
            args[name] = draw(JSON_VALUES)
    if draw(st.integers(0, 3)) == 0:
        extra = draw(st.dictionaries(st.text(max_size=12), JSON_VALUES, min_size=1, max_size=2))
        args = {**extra, **args} if draw(st.booleans()) else {**args, **extra}
    return args


def _is_valid(tool: str, args: dict[str, Any]) -> bool:
    try:
        MODELS[tool].model_validate(args)
    except ValidationError:
        return False
    return True


@dataclass
class Session:
    """A real MCP client session served by an event loop in a background thread, so that every
    example of a (synchronous) property test reuses it instead of opening its own."""

    portal: BlockingPortal
    client: Client

    def call(self, tool: str, args: dict[str, Any]) -> Any:
        return self.portal.call(functools.partial(self.client.call_tool, tool, args))


@pytest.fixture
def session(settings: Settings, mode: str) -> Iterator[Session]:
    with start_blocking_portal() as portal:
        server = build_server(settings, backoff_base=0.01)
        with portal.wrap_async_context_manager(Client(server, mode=mode)) as client:  # type: ignore[arg-type]
            yield Session(portal, client)


@pytest.mark.parametrize("tool", [CREATE, EXCHANGE, PKCE])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the session is shared on purpose
)
@given(data=st.data())
def test_arbitrary_argument_objects_never_crash_and_invalid_ones_never_reach_the_network(
    fake: FakeModelGates, session: Session, tool: str, data: st.DataObject
) -> None:
    args = data.draw(argument_objects(tool), label="arguments")
    before = len(fake.requests)
    result = session.call(tool, args)  # an MCPError (e.g. internal error) fails the test
    sent = len(fake.requests) - before
    text = _text(result)
    assert text.isprintable() and len(text) < 2000
    if not _is_valid(tool, args):
        assert result.is_error is True and text.startswith(f"Invalid arguments for {tool}: "), text
        assert sent == 0
    else:
        assert not text.startswith("Invalid arguments"), text
        assert sent == (0 if tool == PKCE else 1)
        if not result.is_error:
            assert isinstance(result.structured_content, dict)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([CREATE, EXCHANGE, PKCE]), args=st.dictionaries(st.text(max_size=20), JSON_VALUES))
def test_entirely_random_argument_objects_are_refused_without_a_request(
    fake: FakeModelGates, session: Session, name: str, args: dict[str, Any]
) -> None:
    before = len(fake.requests)
    result = session.call(name, args)
    if not _is_valid(name, args):
        assert result.is_error is True and _text(result).startswith(f"Invalid arguments for {name}: ")
        assert len(fake.requests) == before


@pytest.mark.parametrize(
    "url",
    [
        "https://modelgates.ai/api\t/v1",  # urlsplit would silently drop the tab
        "https://model\ngates.ai/api/v1",
        "https://modelgates.ai/api /v1",
        "https://modelgates.ai/api/v1\x00",
        "https://modelgates.ai/api/v1\x1b[31m",
        "https://modelgätes.ai/api/v1",
        "https://user@modelgates.ai/api/v1",
        "https://:pw@modelgates.ai/api/v1",
        "https://modelgates.ai/api/v1?",
        "https://modelgates.ai/api/v1?key=1",
        "https://modelgates.ai/api/v1#",
        "http://modelgates.ai/api/v1",
        "http://127.0.0.1.evil.example/api/v1",
        "https://modelgates.ai:99999/api/v1",
    ],
)
def test_base_urls_that_are_not_exactly_what_they_look_like_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="MODELGATES_BASE_URL") as info:
        load_settings([], {"MODELGATES_BASE_URL": url})
    assert "\n" not in str(info.value) and "pw" not in str(info.value)
