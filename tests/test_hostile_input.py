"""Hostile and malformed tool arguments: each is refused by name and none reaches the network.

Named cases cover every documented constraint, including the rules a JSON Schema cannot express
(a date in the future, a whole callback URL passed as the code, control characters, http only for
loopback). A property-based test then draws argument objects for every tool and lets `jsonschema`
judge them against the pinned `inputSchema` in tests/snapshots/tools.json, not the server's own
models: what the schema refuses must be refused without a request, what it accepts must reach the
stand-in as exactly those fields.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators
from mcp import Client

from mcp_modelgates.config import ConfigError, Settings, load_settings
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY, ClientFactory, run_stdio, stdio_params
from tests.fake_api import FakeModelGates

CALLBACK = "https://myapp.com/auth/callback"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CREATE = "create_auth_code"
EXCHANGE = "exchange_auth_code"
PKCE = "generate_pkce"


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


# ---------------------------------------------------------------- property-based, judged by the schema

SNAPSHOT = Path(__file__).parent / "snapshots" / "tools.json"
INPUT_SCHEMAS: dict[str, dict[str, Any]] = {t["name"]: t["inputSchema"] for t in json.loads(SNAPSHOT.read_text())}


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    r"""`pattern` as JSON Schema defines it (ECMA-262): `$` ends the input and `\d` is 0-9. Python's
    `re`, which jsonschema uses, also lets `$` match before a final newline and `\d` any digit."""
    if validator.is_type(instance, "string") and not re.search(re.sub(r"\$$", r"\\Z", pattern), instance, re.ASCII):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


SchemaJudge = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
JUDGES = {name: SchemaJudge(schema) for name, schema in INPUT_SCHEMAS.items()}

# Fields whose strings the server checks beyond what the schema says (the named cases above cover
# those rules): only strings that pass those rules are drawn for them, so the schema alone decides.
SERVER_RULES = {"callback_url", "code", "expires_at", "key_label"}

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # NaN and Infinity are not JSON (see the stdio test)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
NOT_STRINGS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(JSON_VALUES, max_size=2)
    | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)
)

PKCE_ALPHABET = string.ascii_letters + string.digits + "._~-"
URL_TEXT = string.ascii_letters + string.digits + "-._~/%=&+!$'()*,;"
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
NO_SPACE = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))


def _urls(path: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda origin, port, path, query: f"{origin}{port}/{path}{query}",
        st.sampled_from(["https://myapp.com", "https://app.example", "https://127.0.0.1", "https://[::1]"])
        | st.sampled_from(["http://localhost", "http://127.0.0.1", "http://[::1]", "http://app.localhost"]),
        st.just("") | st.integers(1, 65535).map(lambda p: f":{p}"),
        path,
        st.just("") | st.text(URL_TEXT, max_size=10).map(lambda q: "?" + q),
    )


future_datetimes = st.builds(
    lambda when, fraction, offset: when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset,
    st.datetimes(min_value=datetime(datetime.now(UTC).year + 2, 1, 1), max_value=datetime(9999, 12, 30)),
    st.sampled_from(["", ".5", ".123456"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+14:00"]),
)
codes = st.text(NO_SPACE, min_size=1, max_size=30).filter(lambda code: "://" not in code and "code=" not in code)
# Per field: values meant to pass (`good`) and values at or over the edge of its rules (`near`). Which
# of them really pass is for the schema to say; the names only steer how often each is drawn.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "callback_url": _urls(st.text(URL_TEXT, max_size=20)),
    "code": codes,
    "code_challenge": st.text(PKCE_ALPHABET, min_size=43, max_size=128),
    "code_challenge_method": st.sampled_from(["S256", "plain"]),
    "expires_at": future_datetimes | st.none(),
    "key_label": st.text(PRINTABLE, min_size=1, max_size=100),
    "limit": st.integers(min_value=0) | st.floats(min_value=0, allow_infinity=False),
    "usage_limit_type": st.sampled_from(["daily", "weekly", "monthly"]),
    "workspace_id": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()),
}
GOOD["code_verifier"] = GOOD["code_challenge"]
NEAR: dict[str, st.SearchStrategy[Any]] = {
    # long values repeat one character: drawing 2000 random ones would overrun Hypothesis' buffer
    "callback_url": _urls(st.integers(2020, 2060).map(lambda n: "p" * n)) | st.just(""),  # around 2048
    "code": st.just("") | st.integers(1015, 1035).map(lambda n: "c" * n),
    "code_challenge": st.text(PKCE_ALPHABET, min_size=40, max_size=44)
    | st.text(PKCE_ALPHABET, min_size=126, max_size=131)
    | st.text(PKCE_ALPHABET + "+/= \n\u0660", min_size=43, max_size=50),
    "code_challenge_method": st.sampled_from(["s256", "PLAIN", "S512", "", "S256 ", None]),
    "expires_at": future_datetimes.map(lambda v: v[:16] + "Z")  # minute precision
    | future_datetimes.map(lambda v: v[:10])
    | future_datetimes.map(lambda v: v.replace("T", " "))
    | future_datetimes.map(lambda v: v + "\n"),
    "key_label": st.just("") | st.text(PRINTABLE, min_size=99, max_size=102),
    "limit": st.integers(max_value=-1) | st.floats(max_value=-0.001) | st.sampled_from(["5", True, False, None]),
    "usage_limit_type": st.sampled_from(["Daily", "yearly", "", None]),
    "workspace_id": st.uuids().flatmap(
        lambda u: st.sampled_from([str(u)[:-1], str(u) + "\n", str(u).replace("-", ""), "{" + str(u) + "}"])
    ),
}
NEAR["code_verifier"] = NEAR["code_challenge"]


@st.composite
def argument_objects(draw: st.DrawFn, tool: str) -> dict[str, Any]:
    """Up to two fields of the tool's schema attacked (a value near or over its rules, any JSON, or
    left out), the others left out or given a plain value; sometimes unknown arguments too."""
    fields = INPUT_SCHEMAS[tool]["properties"]
    attacked = draw(st.sets(st.sampled_from(sorted(fields)), max_size=2))
    args: dict[str, Any] = {}
    for name in fields:
        if name not in attacked:
            if name in INPUT_SCHEMAS[tool].get("required", []) or draw(st.booleans()):
                args[name] = draw(GOOD[name])
            continue
        how = draw(st.sampled_from(["near", "near", "any", "omit"]))
        if how == "near":
            args[name] = draw(NEAR[name])
        elif how == "any":
            args[name] = draw(NOT_STRINGS if name in SERVER_RULES else JSON_VALUES)
    if draw(st.integers(0, 5)) == 0:
        unknown = st.text(max_size=12).filter(lambda key: key not in fields)
        args.update(draw(st.dictionaries(unknown, JSON_VALUES, min_size=1, max_size=2)))
    return args


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


def test_the_schema_judge_reads_patterns_as_json_schema_does() -> None:
    verifier = {"code": "c1", "code_verifier": VERIFIER}
    assert JUDGES[EXCHANGE].is_valid(verifier)
    assert not JUDGES[EXCHANGE].is_valid({**verifier, "code_verifier": VERIFIER + "\n"})
    workspace = {"callback_url": CALLBACK, "workspace_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}
    assert JUDGES[CREATE].is_valid(workspace)
    assert not JUDGES[CREATE].is_valid({**workspace, "workspace_id": "3fa85f64-5717-4562-b3fc-2c963f66afa\u0666"})


@pytest.mark.parametrize("tool", [CREATE, EXCHANGE, PKCE])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the session is shared on purpose
)
@given(data=st.data())
def test_the_pinned_schema_decides_what_is_refused_and_what_is_sent(
    fake: FakeModelGates, session: Session, tool: str, data: st.DataObject
) -> None:
    args = data.draw(argument_objects(tool), label="arguments")
    accepted = JUDGES[tool].is_valid(args)
    event("accepted by the schema" if accepted else "refused by the schema")
    before = len(fake.requests)
    result = session.call(tool, args)  # an MCPError (e.g. internal error) fails the test
    sent = [r.json for r in fake.requests[before:]]
    text = _text(result)
    assert text.isprintable()
    if not accepted:
        assert result.is_error is True and text.startswith(f"Invalid arguments for {tool}: "), text
        assert len(text) < 2000  # the refused values are not echoed
        assert sent == []
    elif tool == PKCE:
        assert result.is_error is False and sent == [], text
        pair = result.structured_content
        assert pair["code_challenge_method"] == args.get("code_challenge_method", "S256")
        assert ("authorization_url" in pair) == ("callback_url" in args)
    else:
        assert not text.startswith("Invalid arguments"), text
        assert sent == [args]  # exactly the fields given, nothing added, dropped or renamed


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
