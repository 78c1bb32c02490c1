"""The tools: one `ToolSpec` each, its wire definition and its handler side by side.

A spec's `definition` is generated once from the contract models (`inputSchema` from the request
model, `outputSchema` from the result model); its `run` gets the request already validated by that
same model and returns the result model and a one-sentence text, or, in the 2026-07-28 era, an
`InputRequiredResult` asking the client for more first. Adding a tool is adding a spec.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from pydantic import BaseModel

from mcp_modelgates import account, pkce
from mcp_modelgates.client import ModelGatesClient
from mcp_modelgates.config import Settings
from mcp_modelgates.connect import Flows
from mcp_modelgates.models import (
    CREATE_AUTH_CODE,
    EXCHANGE_AUTH_CODE,
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


@dataclass(frozen=True)
class Call:
    """What a handler gets beside its validated request: the SDK's request context and, when a
    2026-07-28 client retries after an `InputRequiredResult`, its answers and the state it echoes."""

    ctx: Any
    input_responses: types.InputResponses | None = None
    request_state: str | None = None


Answer = tuple[BaseModel, str] | types.InputRequiredResult
Handler = Callable[[Any, Call], Awaitable[Answer]]  # (validated request, the call)

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


@dataclass(frozen=True)
class ToolSpec:
    """An MCP tool: its wire definition and the coroutine that serves a validated request."""

    definition: types.Tool
    request: type[RequestModel]
    run: Handler


def _spec(
    name: str,
    title: str,
    description: str,
    request: type[RequestModel],
    output: type[BaseModel],
    run: Handler,
    *,
    local: bool,
) -> ToolSpec:
    definition = types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=tool_schema(request, "validation"),
        output_schema=tool_schema(output, "serialization"),
        annotations=types.ToolAnnotations(
            title=title,
            read_only_hint=local,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=not local,
        ),
    )
    return ToolSpec(definition, request, run)


def generate_pkce_tool(settings: Settings) -> ToolSpec:
    async def run(request: GeneratePkceRequest, call: Call) -> Answer:
        callback = request.callback_url if isinstance(request.callback_url, str) else None
        pair = pkce.generate(settings.base_url, request.code_challenge_method, callback)
        text = (
            f"Generated a PKCE pair ({pair.code_challenge_method}): code_challenge {pair.code_challenge}. "
            "Keep the code_verifier for exchange_auth_code."
        )
        if callback is not None:
            text += f" Ask the user to open {pair.authorization_url} and approve."
        return pair, text

    return _spec(
        "generate_pkce",
        "Generate PKCE verifier and challenge",
        PKCE_DESCRIPTION,
        GeneratePkceRequest,
        PkcePair,
        run,
        local=True,
    )


def create_auth_code_tool(api: ModelGatesClient) -> ToolSpec:
    async def run(request: CreateAuthCodeRequest, call: Call) -> Answer:
        answer = await api.call(CREATE_AUTH_CODE, request)
        assert isinstance(answer, CreateAuthCodeResponse)
        code = answer.data
        return answer, (
            f"Created authorization code {code.id} for app {code.app_id} at {code.created_at}. "
            "After the user approves, call exchange_auth_code within 10 minutes."
        )

    return _spec(
        "create_auth_code",
        "Create ModelGates authorization code",
        CREATE_DESCRIPTION,
        CreateAuthCodeRequest,
        CreateAuthCodeResponse,
        run,
        local=False,
    )


def exchange_auth_code_tool(api: ModelGatesClient) -> ToolSpec:
    async def run(request: ExchangeAuthCodeRequest, call: Call) -> Answer:
        answer = await api.call(EXCHANGE_AUTH_CODE, request)
        assert isinstance(answer, ExchangeAuthCodeResponse)
        owner = f" for user {answer.user_id}" if answer.user_id is not None else ""
        return answer, (
            f"Exchanged the code for a new ModelGates API key{owner}: {answer.key} . "
            "Show it to the user once; it cannot be retrieved again."
        )

    return _spec(
        "exchange_auth_code",
        "Exchange authorization code for API key",
        EXCHANGE_DESCRIPTION,
        ExchangeAuthCodeRequest,
        ExchangeAuthCodeResponse,
        run,
        local=False,
    )


def connect_account_tool(flows: Flows, settings: Settings) -> ToolSpec:
    connect = account.ConnectAccount(flows, settings)

    async def run(request: ConnectAccountRequest, call: Call) -> Answer:
        return await connect(request, call.ctx, call.input_responses, call.request_state)

    return _spec(
        "connect_account",
        "Connect a ModelGates account",
        account.DESCRIPTION,
        ConnectAccountRequest,
        ConnectAccountResult,
        run,
        local=False,
    )
