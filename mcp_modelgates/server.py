"""The MCP side: tool and prompt registration, the call path, the lifespan and the CLI.

Built on the SDK's low-level `Server` so that the wire is exactly what the contract models say:
each tool's `inputSchema`/`outputSchema` is generated once from its pydantic models, arguments
are validated by the same model whose dump is the HTTP body, and every failure (bad arguments,
an API error, an unexpected bug) becomes an `isError` result with a message that never holds
the configured key.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from mcp_modelgates import __version__, account, keystore, pkce
from mcp_modelgates.client import ApiError, ModelGatesClient, excerpt
from mcp_modelgates.config import ConfigError, Settings, load_settings
from mcp_modelgates.connect import ConnectError, Flows
from mcp_modelgates.models import (
    CREATE_AUTH_CODE,
    DATETIME_PATTERN,
    ENV_VAR_PATTERN,
    EXCHANGE_AUTH_CODE,
    PKCE_PATTERN,
    UUID_PATTERN,
    ConnectAccountRequest,
    ConnectAccountResult,
    CreateAuthCodeRequest,
    CreateAuthCodeResponse,
    ExchangeAuthCodeRequest,
    ExchangeAuthCodeResponse,
    GeneratePkceRequest,
    PkcePair,
    RequestModel,
    tool_schema,
)

logger = logging.getLogger("mcp_modelgates")

SERVER_NAME = "mcp-modelgates"

CONNECT_INSTRUCTIONS = """\
To connect the user's own account, call connect_account: it opens the approval page (or returns an
authorization_url to show when the client cannot open it; then call again with the flow_id), receives
the browser's redirect itself and saves the new key to .env in the workspace (store env_file) or the
OS keyring (store keyring). The key never appears in the conversation: do not ask the user for it.
For an app with its own callback URL, the manual flow:
"""

MANUAL_STEPS = """\
1. generate_pkce (pass callback_url) -> a code_verifier, its code_challenge and an authorization_url.
2. The user opens authorization_url and approves (or call create_auth_code with the challenge).
3. The browser lands on callback_url?code=...; ask the user for the value of `code`.
4. exchange_auth_code with that code, the code_verifier and the same code_challenge_method,
   within 10 minutes. The result holds the new API key: show it to the user once, never store it
   anywhere else. A code works once; after a 403, start again at step 1."""

_LEAD = "Connects a ModelGates account with the OAuth PKCE flow"
INSTRUCTIONS = f"{_LEAD}.\n{CONNECT_INSTRUCTIONS}{MANUAL_STEPS}"
MANUAL_INSTRUCTIONS = f"{_LEAD}:\n{MANUAL_STEPS}"  # without connect_account (connect=False)

CREATE_DESCRIPTION = """\
Create a ModelGates authorization code for the OAuth PKCE flow (POST /auth/keys/code), so that a \
user-controlled API key can be issued. Use it when connecting a ModelGates account server-side; \
needs MODELGATES_API_KEY. Pass the code_challenge and code_challenge_method from generate_pkce. \
After the user approves in the browser, call exchange_auth_code with the code, the verifier and \
the same method within 10 minutes."""

EXCHANGE_DESCRIPTION = """\
Exchange a ModelGates authorization code for a user-controlled API key (POST /auth/keys). Use it \
last in the PKCE flow, once the user's browser has landed on callback_url?code=...: pass only the \
value of `code`, the code_verifier from generate_pkce and the same code_challenge_method. A code \
is single-use and expires 10 minutes after issue; this call is never retried once it may have \
reached ModelGates. Returns the new key (shown once)."""

PKCE_DESCRIPTION = """\
Generate a fresh PKCE pair locally (no network): a random code_verifier (RFC 7636, 43 characters) \
and its S256 code_challenge. Use it first in the flow. With callback_url it also returns the \
authorization_url the user opens to approve. Keep the code_verifier for exchange_auth_code; pass \
the code_challenge to create_auth_code or use the authorization_url."""

PROMPT_NAME = "connect_modelgates_account"

CONNECT_PROMPT = """\
Connect my ModelGates account.
1. Call connect_account (it saves the new key to .env in my workspace; use store "keyring" if I ask \
for the OS keyring). I approve on the page it opens.
2. If it answers waiting_for_approval, show me the authorization_url to open, then call connect_account \
again with the flow_id it gave.
3. Tell me where the key was saved and its preview. Never ask me for the key or show it."""

_PATTERN_TEXT = {
    PKCE_PATTERN: "must be 43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)",
    DATETIME_PATTERN: "must be an RFC 3339 date-time with seconds and an offset, e.g. 2027-12-31T23:59:59Z",
    UUID_PATTERN: "must be a UUID, e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6",
    ENV_VAR_PATTERN: "must be a variable name: letters, digits and _, not starting with a digit",
}


@dataclass(frozen=True)
class ToolSpec:
    """An MCP tool: its wire definition and the coroutine that serves a validated request."""

    definition: types.Tool
    request: type[RequestModel]
    run: Callable[[Any, Any], Awaitable[tuple[BaseModel, str]]]  # (validated request, request context)


def _annotations(title: str, *, read_only: bool, open_world: bool) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=False,
        idempotent_hint=False,
        open_world_hint=open_world,
    )


def _definition(
    name: str, title: str, description: str, request: type[BaseModel], output: type[BaseModel], *, local: bool
) -> types.Tool:
    return types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=tool_schema(request, "validation"),
        output_schema=tool_schema(output, "serialization"),
        annotations=_annotations(title, read_only=local, open_world=not local),
    )


def describe_invalid(tool: str, request: type[RequestModel], exc: ValidationError) -> str:
    """One line per problem, each naming the argument; never echoes the rejected value."""
    problems: list[str] = []
    allowed = ", ".join(request.model_fields)
    for error in exc.errors(include_url=False, include_input=False):
        # An unknown argument's name comes from the caller: keep it short and printable.
        where = ".".join(excerpt(str(part), 64) for part in error["loc"]) or "arguments"
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(f"{where}: unknown argument (accepted: {allowed})")
        elif kind == "missing":
            problems.append(f"{where}: required")
        elif kind == "string_pattern_mismatch":
            pattern = (error.get("ctx") or {}).get("pattern", "")
            problems.append(f"{where}: {_PATTERN_TEXT.get(pattern, error['msg'])}")
        elif kind == "model_type":
            problems.append("arguments: must be an object")
        else:
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return f"Invalid arguments for {tool}: " + "; ".join(dict.fromkeys(problems))


def _redact_tree(value: Any, settings: Settings) -> Any:
    if isinstance(value, str):
        return settings.redact(value)
    if isinstance(value, dict):
        return {k: _redact_tree(v, settings) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_tree(v, settings) for v in value]
    return value


def build_server(settings: Settings, *, backoff_base: float = 0.5, connect: bool = True) -> Server[Any]:
    """The whole MCP server for these settings; nothing here touches the network.

    `connect=False` leaves out connect_account, whose listener only makes sense on the user's own
    machine (a transport not bound to loopback passes it)."""
    api = ModelGatesClient(settings, f"{SERVER_NAME}/{__version__}", backoff_base=backoff_base)
    flows = Flows(api, settings.base_url)

    async def create_auth_code(request: CreateAuthCodeRequest, ctx: Any) -> tuple[BaseModel, str]:
        answer = await api.call(CREATE_AUTH_CODE, request)
        assert isinstance(answer, CreateAuthCodeResponse)
        code = answer.data
        return answer, (
            f"Created authorization code {code.id} for app {code.app_id} at {code.created_at}. "
            "After the user approves, call exchange_auth_code within 10 minutes."
        )

    async def exchange_auth_code(request: ExchangeAuthCodeRequest, ctx: Any) -> tuple[BaseModel, str]:
        answer = await api.call(EXCHANGE_AUTH_CODE, request)
        assert isinstance(answer, ExchangeAuthCodeResponse)
        owner = f" for user {answer.user_id}" if answer.user_id is not None else ""
        return answer, (
            f"Exchanged the code for a new ModelGates API key{owner}: {answer.key} . "
            "Show it to the user once; it cannot be retrieved again."
        )

    async def generate_pkce(request: GeneratePkceRequest, ctx: Any) -> tuple[BaseModel, str]:
        callback = request.callback_url if isinstance(request.callback_url, str) else None
        pair = pkce.generate(settings.base_url, request.code_challenge_method, callback)
        text = (
            f"Generated a PKCE pair ({pair.code_challenge_method}): code_challenge {pair.code_challenge}. "
            "Keep the code_verifier for exchange_auth_code."
        )
        if callback is not None:
            text += f" Ask the user to open {pair.authorization_url} and approve."
        return pair, text

    specs = [
        ToolSpec(
            _definition(
                "generate_pkce",
                "Generate PKCE verifier and challenge",
                PKCE_DESCRIPTION,
                GeneratePkceRequest,
                PkcePair,
                local=True,
            ),
            GeneratePkceRequest,
            generate_pkce,
        ),
        ToolSpec(
            _definition(
                "create_auth_code",
                "Create ModelGates authorization code",
                CREATE_DESCRIPTION,
                CreateAuthCodeRequest,
                CreateAuthCodeResponse,
                local=False,
            ),
            CreateAuthCodeRequest,
            create_auth_code,
        ),
        ToolSpec(
            _definition(
                "exchange_auth_code",
                "Exchange authorization code for API key",
                EXCHANGE_DESCRIPTION,
                ExchangeAuthCodeRequest,
                ExchangeAuthCodeResponse,
                local=False,
            ),
            ExchangeAuthCodeRequest,
            exchange_auth_code,
        ),
    ]
    if connect:
        specs.append(_connect_spec(flows, settings))
    tools: Mapping[str, ToolSpec] = {spec.definition.name: spec for spec in specs}
    tool_list = types.ListToolsResult(tools=[spec.definition for spec in specs])

    async def on_list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return tool_list

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = tools.get(params.name)
        if spec is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {excerpt(params.name, 64)!r}")
        try:
            request = spec.request.model_validate(params.arguments or {})
        except ValidationError as exc:
            return _error(describe_invalid(params.name, spec.request, exc))
        try:
            result, text = await spec.run(request, ctx)
        except (ApiError, ConnectError) as exc:
            message = settings.redact(str(exc))
            logger.warning("%s failed: %s", params.name, message)
            return _error(message)
        except Exception:
            # A bug, not an API answer: details stay in the (redacted) log, not in the result.
            logger.exception("%s raised an unexpected error", params.name)
            return _error(f"{params.name} failed with an internal error; see the server log.")
        structured = _redact_tree(result.model_dump(mode="json"), settings)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=settings.redact(text))],
            structured_content=structured,
        )

    prompt = types.Prompt(
        name=PROMPT_NAME,
        title="Connect a ModelGates account",
        description=(
            "Connect a ModelGates account: in one step with connect_account, or, given your app's "
            "callback_url, with the manual PKCE tools."
        ),
        arguments=[
            types.PromptArgument(
                name="callback_url",
                description=(
                    "Optional: your app's own callback, e.g. http://localhost:3000/callback, for the manual "
                    "flow. Leave it out to let this server receive the callback and save the key."
                ),
                required=not connect,
            )
        ],
    )

    async def on_list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[prompt])

    async def on_get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != PROMPT_NAME:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {excerpt(params.name, 64)!r}")
        callback_url = (params.arguments or {}).get("callback_url")
        if callback_url is None:
            if not connect:
                raise MCPError(code=types.INVALID_PARAMS, message=f"{PROMPT_NAME}: callback_url: required")
            return _prompt_result(CONNECT_PROMPT)
        try:
            checked = GeneratePkceRequest.model_validate({"callback_url": callback_url})
        except ValidationError as exc:
            raise MCPError(
                code=types.INVALID_PARAMS, message=describe_invalid(PROMPT_NAME, GeneratePkceRequest, exc)
            ) from None
        return _prompt_result(
            f"Connect my ModelGates account. Use callback_url {checked.callback_url}.\n"
            "1. Call generate_pkce with that callback_url.\n"
            "2. Show me the authorization_url to open; I will approve and then paste the `code` value "
            "from the address my browser lands on.\n"
            "3. Call exchange_auth_code with that code, the code_verifier from step 1 and "
            "code_challenge_method S256. Do this within 10 minutes of approval.\n"
            "4. Show me the new API key once. If the exchange fails with 403, start again at step 1."
        )

    @asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with flows.running():  # leaving it closes every listener, before any exit
                yield {}
        finally:
            with anyio.CancelScope(shield=True):
                await api.aclose()

    return Server(
        SERVER_NAME,
        version=__version__,
        title="ModelGates",
        instructions=INSTRUCTIONS if connect else MANUAL_INSTRUCTIONS,
        lifespan=lifespan,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_prompts=on_list_prompts,
        on_get_prompt=on_get_prompt,
    )


def _prompt_result(text: str) -> types.GetPromptResult:
    return types.GetPromptResult(
        description="Connect a ModelGates account with OAuth PKCE",
        messages=[types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))],
    )


def _connect_spec(flows: Flows, settings: Settings) -> ToolSpec:
    async def run(request: ConnectAccountRequest, ctx: Any) -> tuple[BaseModel, str]:
        return await account.connect_account(flows, settings, request, ctx)

    return ToolSpec(
        _definition(
            "connect_account",
            "Connect a ModelGates account",
            account.DESCRIPTION,
            ConnectAccountRequest,
            ConnectAccountResult,
            local=False,
        ),
        ConnectAccountRequest,
        run,
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


class _RedactingFilter(logging.Filter):
    """Masks the configured key in every record, including formatted tracebacks."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._settings.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # also when another handler formatted it first
            record.exc_text = self._settings.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._settings.redact(record.stack_info)
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(settings))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # httpx logs every request line at INFO; quiet it unless debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)


async def serve_stdio(server: Server[Any]) -> None:
    """Serve until stdin closes or SIGTERM/SIGINT arrives; in-flight calls are then cancelled."""
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stopping.set()
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        async with stdio_server() as (read_stream, write_stream):
            try:
                await server.run(read_stream, write_stream, server.create_initialization_options())
            finally:
                if stopping.is_set():
                    # The lifespan has closed the HTTP client by now. The transport's stdin reader
                    # sits in a thread that no cancellation reaches, so leave without waiting for it.
                    logging.shutdown()
                    os._exit(0)
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ, __version__)
    except ConfigError as exc:
        print(f"mcp-modelgates: {exc}", file=sys.stderr)
        return 2
    source = "from each caller's Authorization header"
    if not settings.key_from_client:  # a stored key would make a shared key beside the callers' own
        settings, source = keystore.with_stored_key(settings)
    configure_logging(settings)  # after the key is known, so that the log masks it
    if settings.transport == "http":
        from mcp_modelgates.http_app import serve_http  # imported only on this path

        return serve_http(settings, source)
    server = build_server(settings)
    logger.info("mcp-modelgates %s serving on stdio; API %s; key %s", __version__, settings.base_url, source)
    with suppress(KeyboardInterrupt):
        anyio.run(serve_stdio, server)
    return 0
