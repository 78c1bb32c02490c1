"""The bare forwarder the project is measured against: the floor of an MCP server on this stack.

One `MCPServer` tool with flat parameters that makes one POST on one shared `httpx.AsyncClient`
with the key header and returns the API's JSON: no validation beyond the parameter types, no
error mapping, no retries. It is written to be as fast as such a server can be, so that the
comparison is against the floor and not against a handicapped straw man: the client is made on
first use (as the project does), and httpx's per-request INFO log line is silenced (MCPServer()
configures logging at INFO on stderr).

    MODELGATES_API_KEY=sk-... MODELGATES_BASE_URL=http://127.0.0.1:8765/api/v1 python benchmarks/minimal_forwarder.py
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import httpx
from mcp.server.mcpserver import MCPServer

BASE_URL = os.environ.get("MODELGATES_BASE_URL", "https://modelgates.ai/api/v1")
HEADERS = {"Authorization": f"Bearer {os.environ.get('MODELGATES_API_KEY', '')}"}

server = MCPServer("minimal-forwarder")
logging.getLogger("httpx").setLevel(logging.WARNING)
_http: httpx.AsyncClient | None = None


@server.tool()
async def create_auth_code(
    callback_url: str,
    code_challenge: str | None = None,
    code_challenge_method: Literal["S256", "plain"] | None = None,
    limit: float | None = None,
    expires_at: str | None = None,
    key_label: str | None = None,
    usage_limit_type: Literal["daily", "weekly", "monthly"] | None = None,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """Create a ModelGates authorization code (POST /auth/keys/code)."""
    global _http
    if _http is None:
        _http = httpx.AsyncClient(timeout=30)
    body = {name: value for name, value in locals().items() if value is not None}
    response = await _http.post(f"{BASE_URL}/auth/keys/code", json=body, headers=HEADERS)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


if __name__ == "__main__":
    server.run()
