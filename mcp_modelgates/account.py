"""connect_account on the MCP side: what one call does with the client, around a flow of connect.py.

It checks the destination before anything starts (the workspace from the setting, else the
client's first root, else the working directory), starts a flow, and then either sends a URL-mode
elicitation and waits for the browser (with progress notifications), or, for a client without URL
elicitation (or without a back channel, the 2026-07-28 era), returns at once with the
authorization URL and a flow_id that a later call redeems. No result, notification or log line
holds the key: only its preview.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.shared.message import ServerMessageMetadata
from pydantic import MISSING

from mcp_modelgates import keystore
from mcp_modelgates.config import Settings
from mcp_modelgates.connect import ConnectError, Flow, Flows, Outcome
from mcp_modelgates.models import ConnectAccountRequest, ConnectAccountResult

logger = logging.getLogger("mcp_modelgates.account")

ROOTS_TIMEOUT = 5.0  # seconds for the client to answer roots/list
PROGRESS_EVERY = 5.0  # seconds between progress notifications while waiting

DESCRIPTION = """\
Connect the user's ModelGates account in one step and store the new API key without it ever \
appearing in the conversation: starts a one-time listener on 127.0.0.1, asks the client to open \
the ModelGates approval page, exchanges the code the browser brings back and saves the key to a \
dotenv file in the workspace (store env_file, default .env) or the OS keyring (store keyring). \
Returns only a preview of the key. If the result is waiting_for_approval, show the user the \
authorization_url, then call again with the flow_id to get the outcome."""

_DESTINATION_ARGS = ("store", "env_file", "env_var")


def _url_elicitation(ctx: Any) -> bool:
    # check_client_capability also answers True for a form-only client: look at the field itself.
    caps = ctx.session.client_capabilities
    return bool(
        ctx.session.can_send_request
        and caps is not None
        and caps.elicitation is not None
        and caps.elicitation.url is not None
    )


async def _roots(ctx: Any) -> list[str]:
    """The client's roots, when it declared them and answers in time; [] otherwise."""
    caps = ctx.session.client_capabilities
    if caps is None or caps.roots is None or not ctx.session.can_send_request:
        return []
    try:
        with anyio.fail_after(ROOTS_TIMEOUT):
            answer = await ctx.session.send_request(
                types.ListRootsRequest(),
                types.ListRootsResult,
                request_read_timeout_seconds=ROOTS_TIMEOUT,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
    except Exception as exc:  # a client that fails roots/list still gets the working directory
        logger.info("roots/list failed (%s); using the working directory", type(exc).__name__)
        return []
    return [str(root.uri) for root in answer.roots]


def _result(flow: Flow, outcome: Outcome | None) -> tuple[ConnectAccountResult, str]:
    dest = flow.destination
    result = ConnectAccountResult(
        status=outcome.status if outcome else "waiting_for_approval",
        env_var=dest.env_var,
        saved_to=dest.saved_to,
    )
    if outcome is None:
        result.authorization_url = flow.authorization_url
        result.flow_id = flow.flow_id
        left = flow.remaining()
        return result, (
            f"Waiting for approval. Ask the user to open {flow.authorization_url} and approve; the key will "
            f"be saved to {dest.saved_to} as {dest.env_var} as soon as the browser comes back (within "
            f"{left:.0f} s). Then call connect_account with flow_id {flow.flow_id} for the outcome."
        )
    if outcome.status == "connected":
        result.key_preview = outcome.key_preview or MISSING
        result.user_id = outcome.user_id
        owner = f" for user {outcome.user_id}" if outcome.user_id else ""
        # The detail of a success is what the save changed besides the key (a tightened file mode).
        return result, (
            f"Connected the ModelGates account{owner}: the new key ({outcome.key_preview}) is saved to "
            f"{dest.saved_to} as {dest.env_var}. The key itself is not shown here."
            + (f" {outcome.detail}" if outcome.detail else "")
        )
    result.error = outcome.detail
    if outcome.status == "failed":
        return result, f"Connecting the account failed: {outcome.detail}"
    return result, f"Not connected ({outcome.status}): {outcome.detail} Nothing was stored."


async def _wait(ctx: Any, flow: Flow, seconds: float) -> Outcome | None:
    """The flow's outcome, or None when `seconds` pass first; reports progress meanwhile."""
    with anyio.move_on_after(seconds):
        while not flow.done.is_set():
            with anyio.move_on_after(PROGRESS_EVERY):
                await flow.done.wait()
            if not flow.done.is_set():
                left = flow.remaining()
                await ctx.session.report_progress(
                    flow.timeout - left, flow.timeout, f"Waiting for approval in the browser ({left:.0f} s left)"
                )
    return flow.outcome if flow.done.is_set() else None


async def connect_account(
    flows: Flows, settings: Settings, request: ConnectAccountRequest, ctx: Any
) -> tuple[ConnectAccountResult, str]:
    if isinstance(request.flow_id, str):
        given = [name for name in _DESTINATION_ARGS if name in request.model_fields_set]
        if given:
            raise ConnectError(f"{given[0]}: not allowed with flow_id (the flow's destination was set when it started)")
        flow = flows.get(request.flow_id)
        if flow is None:
            raise ConnectError(
                "flow_id: unknown flow (it ended long ago or the server restarted); call connect_account "
                "without flow_id to start again"
            )
        return _result(flow, await _wait(ctx, flow, request.timeout))

    try:
        workspace: Path | None = None
        if request.store == "env_file":
            roots = [] if settings.workspace else await _roots(ctx)
            workspace = keystore.resolve_workspace(settings.workspace, roots)
        # The keyring check may talk to a desktop service: keep it off the event loop.
        destination = await anyio.to_thread.run_sync(
            keystore.plan, request.store, request.env_file, request.env_var, workspace
        )
    except keystore.StoreError as exc:
        raise ConnectError(str(exc)) from None

    flow = await flows.start(destination, request.timeout)
    if not _url_elicitation(ctx):
        return _result(flow, None)
    message = f"Open ModelGates to approve connecting your account; the key will be saved to {destination.saved_to}."
    answer: types.ElicitResult | None = None
    try:
        with anyio.move_on_after(flow.remaining()):
            answer = await ctx.session.elicit_url(
                message, flow.authorization_url, flow.flow_id, related_request_id=ctx.request_id
            )
    except Exception as exc:  # the client could not show it: let the model show the link
        logger.info("URL elicitation failed (%s); returning the link instead", type(exc).__name__)
        return _result(flow, None)
    if answer is None or answer.action != "accept":
        flow.cancel()
    outcome = await _wait(ctx, flow, flow.remaining() + 5)
    if outcome is not None and outcome.status == "connected":
        try:
            await ctx.session.send_elicit_complete(flow.flow_id, related_request_id=ctx.request_id)
        except Exception:  # only a courtesy to the client
            logger.debug("notifications/elicitation/complete could not be sent")
    return _result(flow, outcome)
