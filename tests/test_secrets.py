"""No secret ever leaks: the configured key (anywhere) and a newly exchanged key (outside its result).

Every test in the suite already runs at DEBUG with a hook in tests/conftest.py that fails it if
the configured key shows up in its captured logs, stdout or stderr. The tests here add the
hostile cases: an upstream that echoes the Authorization header back, cut or disguised (percent-
encoded, `\\u`-escaped, invisible characters inside: nothing a reader could decode back); the key
split by the excerpt cut on every path that quotes upstream text; the flow's own secrets (code,
verifier, challenge), which must never be logged; and a real stdio subprocess at DEBUG driven
through many error scenarios.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from mcp_modelgates.cli import RedactingFilter
from mcp_modelgates.config import Settings
from tests.conftest import API_KEY, ClientFactory, run_stdio, stdio_params
from tests.fake_api import FakeModelGates, Recorded, Reply, accept_code, error_body, s256

CALLBACK = "https://myapp.com/auth/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
CREATE = ("create_auth_code", {"callback_url": CALLBACK})
EXCHANGE = ("exchange_auth_code", {"code": "auth_code_1", "code_verifier": VERIFIER, "code_challenge_method": "S256"})
# Pieces of the key that must not survive either: a cut or a disguise must not leave it readable.
# Any 6 characters in a row are too many (the key is 22 long: a run of 6 is 27% of it).
KEY_PIECES = (API_KEY, *(API_KEY[i : i + 6] for i in range(len(API_KEY) - 5)))


def _text(result: Any) -> str:
    return str(result.content[0].text)


def _assert_no_key(*texts: str) -> None:
    for text in texts:
        for piece in KEY_PIECES:
            assert piece not in text, f"{piece!r} leaked in {text[:300]!r}"


def _echo(make_body: Any, status: int = 401) -> Any:
    """A stand-in handler that answers with the Authorization header it received, as `make_body` puts it."""

    def handler(rec: Recorded) -> Reply:
        echoed = make_body(rec.headers.get("authorization", ""))
        if isinstance(echoed, bytes):
            return Reply(status, body=echoed, headers={"Content-Type": "text/plain"})
        return Reply(status, echoed)

    return handler


ECHOES = {
    "json-message": _echo(lambda auth: error_body(401, f"Bad Authorization header: {auth}")),
    "html-body": _echo(lambda auth: f"<html><pre>Authorization: {auth}</pre></html>".encode(), 502),
    # the excerpt is cut at 200 characters, inside the key: the part before the cut must not show
    "straddling-the-excerpt-cut": _echo(lambda auth: ("x" * 175 + " " + auth).encode(), 500),
    "message-straddling-the-cut": _echo(lambda auth: error_body(400, "y" * 175 + " " + auth)),
    # removing the escape sequence would otherwise join the two halves back into the key
    "split-by-an-ansi-escape": _echo(lambda auth: f"denied: {auth[:16]}\x1b[0m{auth[16:]}".encode(), 403),
    "split-by-an-ansi-escape-at-the-cut": _echo(
        lambda auth: ("x" * 175 + f" {auth[:16]}\x1b[0m{auth[16:]}").encode(), 403
    ),
    # "ESC [" makes the key's first letter the end of an escape sequence: the tail alone is left
    "escape-eating-the-first-character": _echo(
        lambda auth: f"denied \x1b[{auth.removeprefix('Bearer ')}".encode(), 403
    ),
    "bare-token": _echo(lambda auth: auth.removeprefix("Bearer ").encode(), 400),
    "success-body-not-json": _echo(lambda auth: f"ok {auth}".encode(), 200),
    "success-body-wrong-shape": _echo(lambda auth: {"data": {"id": auth, "app_id": "x"}}, 200),
    "success-with-the-key-as-the-code": _echo(
        lambda auth: {"data": {**AUTH_CODE, "id": auth.removeprefix("Bearer ")}}, 200
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("echo", list(ECHOES))
async def test_an_upstream_echoing_the_key_back_is_redacted_in_results_and_logs(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, echo: str
) -> None:
    fake.handler = ECHOES[echo]
    async with connect(max_retries=0) as client:
        results = [await client.call_tool(*CREATE), await client.call_tool(*EXCHANGE)]
    assert len(fake.requests) == 2 and fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    for result in results:
        _assert_no_key(_text(result), json.dumps(result.structured_content))
    if "does not match the API contract" not in _text(results[0]):  # else no part of the body is quoted
        assert "***" in _text(results[0])  # the echo is still visible as such, only masked
    _assert_no_key(caplog.text, *(r.getMessage() for r in caplog.records))


# ---------------------------------------------------------------- the key split by an excerpt's cut

# Upstream text is quoted in at most 200 characters (a redirect's host in 100): the first 199 (99)
# are kept, then "…". Each body below puts the key so that the cut falls 11 characters into it, so
# that masking after the cut instead of before it leaves "sk-test-key" behind.
CUT_AT = 199
HOST_CUT_AT = 99
KEPT = 11


def _fill(before: int) -> str:
    """Filler that, after `before` characters of framing, puts the next character at the cut minus KEPT."""
    return "x" * (CUT_AT - KEPT - before - 1) + " "


SPLIT_HOST = "h" * 60 + "." + "h" * (HOST_CUT_AT - KEPT - 62) + "." + API_KEY + ".evil.example"
SPLIT_REPLIES = {
    "error-message": Reply(400, error_body(400, _fill(0) + API_KEY + " was refused")),
    "unexpected-error-body": Reply(500, body=(_fill(0) + API_KEY + " trace").encode()),
    "non-json-success-body": Reply(200, body=(_fill(0) + API_KEY + " ok").encode()),
    "non-object-success-body": Reply(200, body=json.dumps([_fill(2) + API_KEY + " ok"]).encode()),
    "redirect-location-host": Reply(302, body=b"", headers={"Location": f"https://{SPLIT_HOST}/steal"}),
}


@pytest.fixture
def production_log_filter(settings: Settings) -> Iterator[None]:
    """Give every handler that captures this test's logs the filter the server puts on its stderr
    handler, so that the captured records read as stderr would (a whole key masked, as in production)."""
    handlers = list(logging.getLogger().handlers)
    log_filter = RedactingFilter(settings)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


def test_the_split_key_bodies_put_the_cut_inside_the_key() -> None:
    """The cases below prove something only if the key really straddles each cut."""
    for name, reply in SPLIT_REPLIES.items():
        if name == "redirect-location-host":
            assert SPLIT_HOST.index(API_KEY) == HOST_CUT_AT - KEPT
            continue
        raw = reply.body if reply.body is not None else json.dumps(reply.json["error"]["message"])[1:-1].encode()
        assert raw.decode().index(API_KEY) == CUT_AT - KEPT, name


@pytest.mark.anyio
@pytest.mark.parametrize("tool", ["create_auth_code", "exchange_auth_code"])
@pytest.mark.parametrize("path", list(SPLIT_REPLIES))
@pytest.mark.usefixtures("production_log_filter")
async def test_a_key_split_by_the_excerpt_cut_leaves_no_piece_behind(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, path: str, tool: str
) -> None:
    fake.reply(**dataclasses.asdict(SPLIT_REPLIES[path]))
    args = CREATE[1] if tool == "create_auth_code" else EXCHANGE[1]
    async with connect(max_retries=0) as client:
        result = await client.call_tool(tool, args)
    assert len(fake.requests) == 1 and result.is_error is True
    text = _text(result)
    logged = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    assert any(text in line for line in logged), "the failure was not logged, so the log check proves nothing"
    _assert_no_key(text, json.dumps(result.structured_content), caplog.text, *logged)


# ---------------------------------------------------------------- the key disguised

# An upstream may echo the key encoded or with characters inside that no reader sees: each form,
# alone and mixed, must be masked wherever upstream text is quoted, and nothing a reader could
# decode back may survive.


def _percent(text: str, hexdigits: str = "%02X") -> str:
    return "".join("%" + format(b, hexdigits[1:]) for b in text.encode())


DISGUISES = {
    "percent-encoded": _percent,
    "percent-encoded-lower-case": lambda key: _percent(key, "%02x"),
    "percent-encoded-dashes": lambda key: key.replace("-", "%2D"),
    "percent-encoded-twice": lambda key: key.replace("-", "%252D"),
    "u-escaped-dashes": lambda key: key.replace("-", "\\u002d"),  # `sk\u002dtest...`, unparsed JSON
    "u-escaped-all-upper-case": lambda key: "".join(f"\\u{ord(ch):04X}" for ch in key),
    "u-escaped-in-a-repr": lambda key: key.replace("-", "\\\\u002d"),
    "zero-width-spaces": lambda key: "\u200b".join(key),
    "joiners-bom-and-soft-hyphens": lambda key: "".join(ch + "\u2060\ufeff\u00ad"[i % 3] for i, ch in enumerate(key)),
    "bidi-controls-and-nul": lambda key: key[:5] + "\u202e\u202c" + key[5:12] + "\x00" + key[12:],
    "percent-encoded-zero-width": lambda key: "%E2%80%8B".join(key),
    "all-mixed": lambda key: key[:2] + "%2D" + key[3:7] + "\u200b" + "\\u002D" + key[8:15] + _percent(key[15:]),
}


def _reveal(text: str) -> str:
    """Text as a determined reader would decode it: escapes (and escapes of escapes) decoded, every
    invisible or non-ASCII character dropped."""
    for _ in range(3):
        text = re.sub(r"\\+u([0-9A-Fa-f]{4})", lambda m: chr(int(m[1], 16)), text)
        text = urllib.parse.unquote(text, errors="replace")
    return "".join(ch for ch in text if " " <= ch <= "~")


def _assert_not_even_disguised(*texts: str) -> None:
    _assert_no_key(*texts)
    _assert_no_key(*map(_reveal, texts))


def _disguised_echo(disguise: str, where: str) -> Any:
    hide = DISGUISES[disguise]

    def handler(rec: Recorded) -> Reply:
        key = hide(rec.headers.get("authorization", "").removeprefix("Bearer "))
        if where == "error-message":  # the documented error shape, as raw JSON text
            return Reply(401, body=f'{{"error": {{"code": 401, "message": "bad key {key}"}}}}'.encode())
        if where == "unexpected-body":
            return Reply(502, body=f"<pre>upstream rejected Authorization: Bearer {key}</pre>".encode())
        if where == "key-as-the-code":
            return Reply(200, {"data": {**AUTH_CODE, "id": key}})
        return Reply(302, headers={"Location": f"https://{key}.evil.example/?k={key}"})  # redirect-location

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("disguise", "where"),
    [
        (disguise, where)
        for disguise, hide in DISGUISES.items()
        for where in ("error-message", "unexpected-body", "key-as-the-code", "redirect-location")
        if where != "redirect-location" or hide(API_KEY).isascii()  # a header value is Latin-1 at most
    ],
)
@pytest.mark.usefixtures("production_log_filter")
async def test_a_disguised_echo_of_the_key_is_masked_in_results_and_logs(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, disguise: str, where: str
) -> None:
    fake.handler = _disguised_echo(disguise, where)
    async with connect(max_retries=0) as client:
        results = [await client.call_tool(*CREATE), await client.call_tool(*EXCHANGE)]
    assert DISGUISES[disguise](API_KEY) != API_KEY and _reveal(DISGUISES[disguise](API_KEY)) == API_KEY
    for result in results:
        text, structured = _text(result), json.dumps(result.structured_content)
        _assert_not_even_disguised(text, structured)
    if where in ("error-message", "unexpected-body"):
        assert "***" in _text(results[0])  # the echo is still visible as such, only masked
    logged = [r.getMessage() for r in caplog.records]
    _assert_not_even_disguised(caplog.text, *logged)


def test_masking_keeps_what_surrounds_a_disguised_key_and_leaves_other_text_alone() -> None:
    settings = Settings(api_key=SecretStr(API_KEY))
    dashes = API_KEY.replace("-", "%2D")
    assert settings.redact(f"see https://x.example/?k={dashes}&next=%2Fhome now") == (
        "see https://x.example/?k=***&next=%2Fhome now"
    )
    assert settings.redact("sk\\u002d" + API_KEY[3:] + "\u200b!") == "***\u200b!"
    untouched = "100% of https://a.example/?q=%41%42 \\n \u200b caf\u00e9 \x00 sk-test-key"
    assert settings.redact(untouched) == untouched


# ---------------------------------------------------------------- the flow's own secrets

FLOW_CALLBACK = "http://localhost:3000/callback"


@dataclasses.dataclass
class FlowSecrets:
    code: str
    verifier: str
    challenge: str

    def all(self) -> tuple[str, str, str]:
        return (self.code, self.verifier, self.challenge)


@pytest.fixture
def flow(fake: FakeModelGates) -> FlowSecrets:
    """A code, verifier and challenge of this test only; the stand-in issues that code for the
    challenge and accepts it with that verifier (any number of times)."""
    verifier = secrets.token_urlsafe(32)  # 43 characters of the RFC 7636 alphabet
    chosen = FlowSecrets("auth_code_" + secrets.token_hex(12), verifier, s256(verifier))
    issued = {"id": chosen.code, "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
    fake.reply(200, {"data": issued}, path="/auth/keys/code")
    accept_code(fake, chosen.code, verifier)
    return chosen


def _flow_calls(flow: FlowSecrets) -> list[tuple[str, dict[str, Any]]]:
    create = {"callback_url": FLOW_CALLBACK, "code_challenge": flow.challenge, "code_challenge_method": "S256"}
    exchange = {"code": flow.code, "code_verifier": flow.verifier, "code_challenge_method": "S256"}
    return [("create_auth_code", create), ("exchange_auth_code", exchange)]


def _assert_no_flow_secret(flow: FlowSecrets, *texts: str) -> None:
    for text in texts:
        for secret in flow.all():
            assert secret not in text, f"{secret!r} was logged: {text[:300]!r}"


@pytest.mark.anyio
async def test_flow_secrets_are_never_logged_in_process_at_debug(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture, flow: FlowSecrets
) -> None:
    async with connect() as client:
        results = [await client.call_tool(name, args) for name, args in _flow_calls(flow)]
    assert [r.is_error for r in results] == [False, False], [_text(r) for r in results]
    assert [r.json for r in fake.requests] == [args for _, args in _flow_calls(flow)]
    assert any(r.name.startswith("httpcore") and r.levelno == logging.DEBUG for r in caplog.records)
    _assert_no_flow_secret(flow, caplog.text, *(r.getMessage() for r in caplog.records))


def test_flow_secrets_are_never_logged_over_stdio_at_the_default_level(fake: FakeModelGates, flow: FlowSecrets) -> None:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    calls = _flow_calls(flow)
    lines = [_rpc(1, "initialize", init), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})]
    lines += [_rpc(2 + i, "tools/call", {"name": name, "arguments": args}) for i, (name, args) in enumerate(calls)]
    env = stdio_params({"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url}).env
    run = run_stdio(("\n".join(lines) + "\n").encode(), env, answers={1, 2, 3})
    results = {m.get("id"): m.get("result", m) for m in map(json.loads, run.stdout_lines)}
    assert results[2]["isError"] is False and results[3]["isError"] is False, results
    assert sorted(json.dumps(r.json) for r in fake.requests) == sorted(json.dumps(args) for _, args in calls)
    err = run.stderr.decode("utf-8", "replace")
    assert run.returncode == 0 and "INFO" in err and "serving on stdio" in err  # the default level, and it logs
    _assert_no_flow_secret(flow, err)


@pytest.mark.anyio
@pytest.mark.parametrize("prefixed", [False, True], ids=["raw", "bearer-prefixed"])
async def test_the_key_is_masked_whether_configured_with_or_without_bearer(
    fake: FakeModelGates, connect: ClientFactory, prefixed: bool
) -> None:
    fake.handler = ECHOES["json-message"]
    key = SecretStr(f"Bearer {API_KEY}" if prefixed else API_KEY)
    async with connect(api_key=key, max_retries=0) as client:
        result = await client.call_tool(*CREATE)
    assert fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # never "Bearer Bearer"
    _assert_no_key(_text(result))


@pytest.mark.anyio
async def test_an_exchanged_key_goes_only_into_the_result(
    fake: FakeModelGates, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    new_key = "sk-mg-v1-0123456789abcdef0123456789abcdef"
    fake.reply(200, {"key": new_key, "user_id": "user_2abc"})
    # a malformed success body that still holds a key: it must not be quoted in the error either
    fake.reply(200, body=f'{{"key": "{new_key}", "user_id": '.encode())
    fake.reply(200, {"key": new_key, "user_id": None}, action="truncate")
    async with connect() as client:
        ok = await client.call_tool(*EXCHANGE)
        broken = [await client.call_tool(*EXCHANGE), await client.call_tool(*EXCHANGE)]
    assert ok.structured_content == {"key": new_key, "user_id": "user_2abc"} and new_key in _text(ok)
    for result in broken:
        assert result.is_error is True and new_key not in _text(result) and "sk-mg-v1-" not in _text(result)
    assert new_key not in caplog.text and "sk-mg-v1-" not in caplog.text
    assert caplog.records, "nothing was logged at DEBUG, so this test proves nothing"


def test_the_log_filter_masks_messages_arguments_tracebacks_and_stacks(settings: Settings) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(settings))
    logger = logging.getLogger("tests.secrets.filter")
    logger.addHandler(handler)
    logger.propagate = False  # keep the raw key out of pytest's own log capture
    try:
        logger.warning("key in the message %s", "Bearer " + API_KEY)
        try:
            raise RuntimeError(f"the upstream echoed {API_KEY}")
        except RuntimeError:
            logger.exception("failed")
        logger.info("with a stack", stack_info=True, extra={"unused": API_KEY})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    output = stream.getvalue()
    assert "RuntimeError: the upstream echoed ***" in output and "Bearer ***" in output
    _assert_no_key(output)


def _rpc(id_: int, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})


def test_stdio_at_debug_through_many_failures_never_logs_a_key_and_stdout_stays_json_rpc(
    fake: FakeModelGates,
) -> None:
    """One server process at MODELGATES_LOG_LEVEL=DEBUG, one call per scenario, answered in order."""
    new_key = "sk-mg-v1-fedcba9876543210fedcba9876543210"
    scenarios: list[tuple[tuple[str, dict[str, Any]], Reply | None]] = [
        (CREATE, Reply(200, {"data": AUTH_CODE})),
        (EXCHANGE, Reply(200, {"key": new_key, "user_id": "user_2abc"})),
        (EXCHANGE, Reply(200, body=f'{{"key":"{new_key}"'.encode())),  # cut short: must not be quoted
        (CREATE, Reply(401, error_body(401, "Missing Authentication header"))),
        (CREATE, Reply(400, error_body(400, f"Bad header Bearer {API_KEY}"))),
        (CREATE, Reply(502, body=f"<html>\x1b[31m{API_KEY}\x1b[0m bad gateway</html>".encode())),
        (CREATE, Reply(500, body=("z" * 190 + API_KEY).encode())),
        (EXCHANGE, Reply(503, body=b"")),
        (EXCHANGE, Reply(action="reset")),
        (EXCHANGE, Reply(200, {"key": new_key, "user_id": None}, action="truncate")),
        (CREATE, Reply(302, body=b"", headers={"Location": f"https://evil.example/steal?k={API_KEY}"})),
        (CREATE, Reply(200, {"data": {**AUTH_CODE, "id": API_KEY}})),
        (CREATE, Reply(200, body=b"\x00\x1b[2J\xff\xfe not json")),
        (CREATE, Reply(200, action="stream", stream_bytes=3 * 1000 * 1000)),
        (("exchange_auth_code", {"code": f"https://app/cb?code={API_KEY}"}), None),  # refused locally
        (("create_auth_code", {"callback_url": "javascript:alert(1)", "limit": -1}), None),
        (("generate_pkce", {"callback_url": "http://localhost:3000/cb"}), None),
        # the key split by the excerpt cut, on every path that quotes upstream text
        *((call, reply) for reply in SPLIT_REPLIES.values() for call in (CREATE, EXCHANGE)),
        # the key disguised, in a body and in a header that httpcore logs at DEBUG
        (CREATE, Reply(401, body=f'{{"error": {{"message": "bad {DISGUISES["all-mixed"](API_KEY)}"}}}}'.encode())),
        (CREATE, Reply(502, body=f"echo {DISGUISES['zero-width-spaces'](API_KEY)}".encode())),
        (CREATE, Reply(302, body=b"", headers={"Location": f"https://x.example/?k={_percent(API_KEY)}"})),
    ]
    for (name, _), reply in scenarios:
        if reply is not None:
            # Calls run concurrently, so route each scripted reply by path to a call of its own tool.
            path = "/auth/keys/code" if name == "create_auth_code" else "/auth/keys"
            fake.reply(**{**dataclasses.asdict(reply), "path": path})
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    lines = [_rpc(1, "initialize", init), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})]
    ids = [10 + i for i in range(len(scenarios))]
    lines += [
        _rpc(id_, "tools/call", {"name": name, "arguments": args})
        for id_, ((name, args), _) in zip(ids, scenarios, strict=True)
    ]
    env = stdio_params(
        {
            "MODELGATES_API_KEY": API_KEY,
            "MODELGATES_BASE_URL": fake.base_url,
            "MODELGATES_LOG_LEVEL": "DEBUG",
            "MODELGATES_MAX_RETRIES": "0",
        }
    ).env
    run = run_stdio(("\n".join(lines) + "\n").encode(), env, answers={1, *ids})
    stdout, stderr = run.stdout_lines, run.stderr
    assert run.returncode == 0
    messages = [json.loads(line) for line in stdout]  # every stdout line is one JSON-RPC message
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    err = stderr.decode("utf-8", "replace")
    out = b"".join(stdout).decode()
    _assert_not_even_disguised(err, out)
    assert new_key not in err and "sk-mg-v1-" not in err  # the exchanged key is never logged...
    assert out.count(new_key) >= 1  # ...but does reach the client in its result
    assert "DEBUG" in err and "httpcore" in err  # the debug level really was on


def test_httpx_and_httpcore_do_not_log_request_lines_at_the_default_level(fake: FakeModelGates) -> None:
    fake.reply(200, {"data": AUTH_CODE})
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    lines = [_rpc(1, "initialize", init), _rpc(2, "tools/call", {"name": CREATE[0], "arguments": CREATE[1]})]
    env = stdio_params({"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url}).env
    run = run_stdio(("\n".join(lines) + "\n").encode(), env, answers={1, 2})
    assert run.returncode == 0 and len(fake.requests) == 1
    err = run.stderr.decode()
    assert "serving on stdio" in err  # INFO lines of the server itself do appear
    assert "HTTP Request" not in err and "httpx" not in err and "httpcore" not in err
    assert "/auth/keys/code" not in err
