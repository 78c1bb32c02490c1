"""The call path every tool shares: validation, error mapping and masking.

Arguments are validated by the tool's request model (the one whose dump is the HTTP body), and
every failure (bad arguments, an API error, a refused connect, an unexpected bug) becomes an
`isError` result. A tool may instead answer `InputRequiredResult` (2026-07-28: the client answers
its requests and retries the call). Everything either carries passes `Settings.redact` on its way
out, so nothing holds the configured key, the HTTP token or the caller's key, even when the API
echoes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from mcp_modelgates.client import ApiError, excerpt
from mcp_modelgates.config import Settings
from mcp_modelgates.connect import ConnectError
from mcp_modelgates.models import DATETIME_PATTERN, ENV_VAR_PATTERN, PKCE_PATTERN, UUID_PATTERN, RequestModel
from mcp_modelgates.tools import Call, ToolSpec

logger = logging.getLogger("mcp_modelgates")

ListTools = Callable[[Any, types.PaginatedRequestParams | None], Awaitable[types.ListToolsResult]]
CallTool = Callable[[Any, types.CallToolRequestParams], Awaitable[types.CallToolResult | types.InputRequiredResult]]

_PATTERN_TEXT = {
    PKCE_PATTERN: "must be 43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)",
    DATETIME_PATTERN: "must be an RFC 3339 date-time with seconds and an offset, e.g. 2027-12-31T23:59:59Z",
    UUID_PATTERN: "must be a UUID, e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6",
    ENV_VAR_PATTERN: "must be a variable name: letters, digits and _, not starting with a digit",
}


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


def redact_tree(value: Any, settings: Settings) -> Any:
    if isinstance(value, str):
        return settings.redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v, settings) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v, settings) for v in value]
    return value


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def tool_handlers(specs: Sequence[ToolSpec], settings: Settings) -> tuple[ListTools, CallTool]:
    """The `tools/list` and `tools/call` handlers for these tools."""
    tools = {spec.definition.name: spec for spec in specs}
    tool_list = types.ListToolsResult(tools=[spec.definition for spec in specs])

    async def on_list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return tool_list

    async def on_call_tool(
        ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        spec = tools.get(params.name)
        if spec is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {excerpt(params.name, 64)!r}")
        try:
            request = spec.request.model_validate(params.arguments or {})
        except ValidationError as exc:
            return error_result(describe_invalid(params.name, spec.request, exc))
        try:
            answer = await spec.run(request, Call(ctx, params.input_responses, params.request_state))
        except (ApiError, ConnectError) as exc:
            message = settings.redact(str(exc))
            logger.warning("%s failed: %s", params.name, message)
            return error_result(message)
        except Exception:
            # A bug, not an API answer: details stay in the (redacted) log, not in the result.
            logger.exception("%s raised an unexpected error", params.name)
            return error_result(f"{params.name} failed with an internal error; see the server log.")
        if isinstance(answer, types.InputRequiredResult):
            wire = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
            return types.InputRequiredResult.model_validate(redact_tree(wire, settings))
        result, text = answer
        structured = redact_tree(result.model_dump(mode="json"), settings)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=settings.redact(text))],
            structured_content=structured,
        )

    return on_list_tools, on_call_tool
