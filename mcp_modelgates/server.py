"""The MCP server: its named parts put together on the SDK's low-level `Server`.

The low-level `Server` keeps the wire exactly what the contract models say. The parts: the tools
(`tools.py`, one spec each), the call path they share (`calls.py`: validation, error mapping,
masking), the prompt and instructions (`prompt.py`), and the lifespan that owns the HTTP client
and connect_account's flows. No transport is imported here: `cli.py` and `http_app.py` serve it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from mcp.server.lowlevel import Server

from mcp_modelgates import __version__
from mcp_modelgates.calls import tool_handlers
from mcp_modelgates.client import ModelGatesClient
from mcp_modelgates.config import Settings, is_loopback
from mcp_modelgates.connect import Flows
from mcp_modelgates.prompt import instructions, prompt_handlers
from mcp_modelgates.tools import (
    ToolSpec,
    connect_account_tool,
    create_auth_code_tool,
    exchange_auth_code_tool,
    generate_pkce_tool,
)

SERVER_NAME = "mcp-modelgates"

Lifespan = Callable[[Server[Any]], AbstractAsyncContextManager[dict[str, Any]]]


def offers_connect(settings: Settings) -> bool:
    """Whether connect_account is offered: its listener and the key it stores live on this machine,
    so only where whoever calls is this machine's user. Not over HTTP bound beyond loopback, and
    not with per-caller keys or sign-in, where each caller's key is theirs and a file here belongs
    to nobody."""
    if settings.keys_per_request:
        return False
    return settings.transport != "http" or is_loopback(settings.http_host)


def build_server(settings: Settings, *, backoff_base: float = 0.5, connect: bool | None = None) -> Server[Any]:
    """The whole MCP server for these settings; nothing here touches the network.

    connect_account is there when `offers_connect` says so; `connect` overrides that."""
    if connect is None:
        connect = offers_connect(settings)
    api = ModelGatesClient(settings, f"{SERVER_NAME}/{__version__}", backoff_base=backoff_base)
    flows = Flows(api, settings.base_url)
    specs: list[ToolSpec] = [generate_pkce_tool(settings), create_auth_code_tool(api), exchange_auth_code_tool(api)]
    if connect:
        specs.append(connect_account_tool(flows, settings))
    on_list_tools, on_call_tool = tool_handlers(specs, settings)
    on_list_prompts, on_get_prompt = prompt_handlers(connect=connect)
    return Server(
        SERVER_NAME,
        version=__version__,
        title="ModelGates",
        instructions=instructions(connect=connect),
        lifespan=_lifespan(api, flows),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_prompts=on_list_prompts,
        on_get_prompt=on_get_prompt,
    )


def _lifespan(api: ModelGatesClient, flows: Flows) -> Lifespan:
    """Flows run for as long as the server does; leaving closes every listener, then the HTTP client."""

    @asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with flows.running():  # leaving it closes every listener, before any exit
                yield {}
        finally:
            with anyio.CancelScope(shield=True):
                await api.aclose()

    return lifespan
