"""What the server tells an agent: its instructions and the `connect_modelgates_account` prompt.

Both lead with `connect_account` when it is offered (`connect=True`) and fall back to the manual
PKCE steps otherwise; a `callback_url` argument turns the prompt into the manual flow for an app
with its own callback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from mcp_modelgates.calls import describe_invalid
from mcp_modelgates.client import excerpt
from mcp_modelgates.models import GeneratePkceRequest

ListPrompts = Callable[[Any, types.PaginatedRequestParams | None], Awaitable[types.ListPromptsResult]]
GetPrompt = Callable[[Any, types.GetPromptRequestParams], Awaitable[types.GetPromptResult]]

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

PROMPT_NAME = "connect_modelgates_account"

CONNECT_PROMPT = """\
Connect my ModelGates account.
1. Call connect_account (it saves the new key to .env in my workspace; use store "keyring" if I ask \
for the OS keyring). I approve on the page it opens.
2. If it answers waiting_for_approval, show me the authorization_url to open, then call connect_account \
again with the flow_id it gave.
3. Tell me where the key was saved and its preview. Never ask me for the key or show it."""


def instructions(*, connect: bool) -> str:
    return INSTRUCTIONS if connect else MANUAL_INSTRUCTIONS


def _manual_prompt(callback_url: str) -> str:
    return (
        f"Connect my ModelGates account. Use callback_url {callback_url}.\n"
        "1. Call generate_pkce with that callback_url.\n"
        "2. Show me the authorization_url to open; I will approve and then paste the `code` value "
        "from the address my browser lands on.\n"
        "3. Call exchange_auth_code with that code, the code_verifier from step 1 and "
        "code_challenge_method S256. Do this within 10 minutes of approval.\n"
        "4. Show me the new API key once. If the exchange fails with 403, start again at step 1."
    )


def _result(text: str) -> types.GetPromptResult:
    return types.GetPromptResult(
        description="Connect a ModelGates account with OAuth PKCE",
        messages=[types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))],
    )


def prompt_handlers(*, connect: bool) -> tuple[ListPrompts, GetPrompt]:
    """The `prompts/list` and `prompts/get` handlers; without connect_account, `callback_url` is required."""
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
    listing = types.ListPromptsResult(prompts=[prompt])

    async def on_list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return listing

    async def on_get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != PROMPT_NAME:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {excerpt(params.name, 64)!r}")
        callback_url = (params.arguments or {}).get("callback_url")
        if callback_url is None:
            if not connect:
                raise MCPError(code=types.INVALID_PARAMS, message=f"{PROMPT_NAME}: callback_url: required")
            return _result(CONNECT_PROMPT)
        try:
            checked = GeneratePkceRequest.model_validate({"callback_url": callback_url})
        except ValidationError as exc:
            raise MCPError(
                code=types.INVALID_PARAMS, message=describe_invalid(PROMPT_NAME, GeneratePkceRequest, exc)
            ) from None
        return _result(_manual_prompt(str(checked.callback_url)))

    return on_list_prompts, on_get_prompt
