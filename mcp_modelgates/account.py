"""connect_account on the MCP side: what one call does with the client, around a flow of connect.py.

It checks the destination before anything starts (the workspace from the setting, else the
client's first root, else the working directory), starts a flow, and then has the client open
the approval page and waits for the browser (with progress notifications), or, for a client
without URL elicitation, returns at once with the authorization URL and a flow_id that a later
call redeems. No result, notification or log line holds the key: only its preview.

The two protocol eras ask the client differently. In the 2025-11-25 era the server sends
roots/list and the URL elicitation as requests of its own, inside the call. The 2026-07-28 era
has no such back channel: the call answers `InputRequiredResult` instead, and the client retries
it with its answers (`inputResponses`) and the `requestState` it was given. That state is an
unguessable, single-use handle of a step kept here, bound to the call's arguments and to the key
its answer must come back under; the verifier and everything else stay in this process.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp.types as types
from mcp.shared.message import ServerMessageMetadata
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import MISSING

from mcp_modelgates import keystore
from mcp_modelgates.config import Settings
from mcp_modelgates.connect import ConnectError, Flow, Flows, Outcome
from mcp_modelgates.models import ConnectAccountRequest, ConnectAccountResult

logger = logging.getLogger("mcp_modelgates.account")

ROOTS_TIMEOUT = 5.0  # seconds for the client to answer roots/list
PROGRESS_EVERY = 5.0  # seconds between progress notifications while waiting
ROOTS_STEP_SECONDS = 60.0  # how long a 2026-07-28 client may take to come back with its roots
STEP_GRACE = 60.0  # an approval step outlives its flow by this much, to report the outcome
MAX_STEPS = 64  # steps waiting for a retry, across calls; the oldest goes first
END_WAIT = 5.0  # seconds a refused retry waits for the flow it ends to close its listener
MAX_STATE_CHARS = 256  # a requestState this server issued is 43 characters

DESCRIPTION = """\
Connect the user's ModelGates account in one step and store the new API key without it ever \
appearing in the conversation: starts a one-time listener on 127.0.0.1, asks the client to open \
the ModelGates approval page, exchanges the code the browser brings back and saves the key to a \
dotenv file in the workspace (store env_file, default .env) or the OS keyring (store keyring). \
Returns only a preview of the key. If the result is waiting_for_approval, show the user the \
authorization_url, then call again with the flow_id to get the outcome."""

_DESTINATION_ARGS = ("store", "env_file", "env_var")
_START_OVER = "start over with a fresh connect_account call"

Answer = tuple[ConnectAccountResult, str] | types.InputRequiredResult


def _modern(ctx: Any) -> bool:
    return ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS


# Clients that speak 2026-07-28 and declare elicitation but fail a tools/call answered with
# `input_required` instead of retrying it (GitHub Copilot CLI 1.0.102: "expected CallToolResult from
# tools/call"). They are never sent one: they get the link and the flow_id, as a client without URL
# elicitation does, so connect_account still works there.
NO_INPUT_REQUIRED_CLIENTS = frozenset({"copilot-cli"})


def _asks_by_input_required(ctx: Any) -> bool:
    """Whether this call may ask the client through `InputRequiredResult` (the 2026-07-28 era)."""
    if not _modern(ctx):
        return False
    params = ctx.session.client_params
    name = params.client_info.name if params is not None else None
    return name not in NO_INPUT_REQUIRED_CLIENTS


def _declares_roots(ctx: Any) -> bool:
    caps = ctx.session.client_capabilities
    return caps is not None and caps.roots is not None


def _declares_url_elicitation(ctx: Any) -> bool:
    # check_client_capability also answers True for a form-only client: look at the field itself.
    caps = ctx.session.client_capabilities
    return caps is not None and caps.elicitation is not None and caps.elicitation.url is not None


async def _roots(ctx: Any) -> list[str]:
    """The client's roots over the back channel, when it answers in time; [] otherwise."""
    if not ctx.session.can_send_request:
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
    return _root_uris(answer)


def _root_uris(answer: types.ListRootsResult) -> list[str]:
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


def _approval_message(flow: Flow) -> str:
    return f"Open ModelGates to approve connecting your account; the key will be saved to {flow.destination.saved_to}."


# ---------------------------------------------------------------- steps of the 2026-07-28 era


@dataclass(frozen=True)
class _Step:
    """A question an InputRequiredResult asked, waiting for the client's retry."""

    kind: Literal["roots", "approve"]
    key: str  # the inputRequests key its answer must come back under
    arguments: str  # the call's validated arguments: the retry must repeat them
    flow: Flow | None  # the flow an approval belongs to; none is started while the roots are asked
    expires: float  # on anyio's clock


def _arguments(request: ConnectAccountRequest) -> str:
    return request.model_dump_json()


def _digest(state: str) -> bytes:
    # Looked up by digest: comparing the token itself would take time that depends on its content.
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).digest()


class _Steps:
    """Steps waiting for a retry, each behind an unguessable requestState; memory only, single use."""

    def __init__(self) -> None:
        self._pending: OrderedDict[bytes, _Step] = OrderedDict()

    def issue(self, step: _Step) -> str:
        now = anyio.current_time()
        for stale in [k for k, s in self._pending.items() if s.expires <= now]:
            del self._pending[stale]
        state = secrets.token_urlsafe(32)
        self._pending[_digest(state)] = step
        while len(self._pending) > MAX_STEPS:
            self._pending.popitem(last=False)
        return state

    def redeem(self, state: str) -> _Step | None:
        if len(state) > MAX_STATE_CHARS:
            return None
        step = self._pending.pop(_digest(state), None)
        if step is None or step.expires <= anyio.current_time():
            return None
        return step


# ---------------------------------------------------------------- the tool


class ConnectAccount:
    """connect_account for one server: its flows, and the steps of calls waiting for a retry."""

    def __init__(self, flows: Flows, settings: Settings) -> None:
        self._flows = flows
        self._settings = settings
        self._steps = _Steps()

    async def __call__(
        self,
        request: ConnectAccountRequest,
        ctx: Any,
        responses: types.InputResponses | None = None,
        state: str | None = None,
    ) -> Answer:
        if state is not None or responses:
            if not _modern(ctx):
                raise ConnectError(
                    "requestState: only the 2026-07-28 protocol retries a call with it; call connect_account "
                    "without requestState and inputResponses"
                )
            return await self._resume(request, ctx, responses or {}, state)
        if isinstance(request.flow_id, str):
            return await self._outcome_of(request, ctx)
        roots: list[str] = []
        if request.store == "env_file" and not self._settings.workspace and _declares_roots(ctx):
            if _asks_by_input_required(ctx):
                return self._ask(request, "roots", types.ListRootsRequest(), None, ROOTS_STEP_SECONDS)
            roots = await _roots(ctx)
        return await self._start(request, ctx, roots)

    async def _outcome_of(self, request: ConnectAccountRequest, ctx: Any) -> Answer:
        given = [name for name in _DESTINATION_ARGS if name in request.model_fields_set]
        if given:
            raise ConnectError(f"{given[0]}: not allowed with flow_id (the flow's destination was set when it started)")
        assert isinstance(request.flow_id, str)
        flow = self._flows.get(request.flow_id)
        if flow is None:
            raise ConnectError(
                "flow_id: unknown flow (it ended long ago or the server restarted); call connect_account "
                "without flow_id to start again"
            )
        return _result(flow, await _wait(ctx, flow, request.timeout))

    async def _start(self, request: ConnectAccountRequest, ctx: Any, roots: list[str]) -> Answer:
        try:
            workspace: Path | None = None
            if request.store == "env_file":
                workspace = keystore.resolve_workspace(self._settings.workspace, roots)
            # The keyring check may talk to a desktop service: keep it off the event loop.
            destination = await anyio.to_thread.run_sync(
                keystore.plan, request.store, request.env_file, request.env_var, workspace
            )
        except keystore.StoreError as exc:
            raise ConnectError(str(exc)) from None

        flow = await self._flows.start(destination, request.timeout)
        if not _declares_url_elicitation(ctx):
            return _result(flow, None)
        if _asks_by_input_required(ctx):
            page = types.ElicitRequestURLParams(
                message=_approval_message(flow), url=flow.authorization_url, elicitation_id=flow.flow_id
            )
            return self._ask(request, "approve", types.ElicitRequest(params=page), flow, flow.timeout + STEP_GRACE)
        if not ctx.session.can_send_request:
            return _result(flow, None)
        answer: types.ElicitResult | None = None
        try:
            with anyio.move_on_after(flow.remaining()):
                answer = await ctx.session.elicit_url(
                    _approval_message(flow), flow.authorization_url, flow.flow_id, related_request_id=ctx.request_id
                )
        except Exception as exc:  # the client could not show it: let the model show the link
            logger.info("URL elicitation failed (%s); returning the link instead", type(exc).__name__)
            return _result(flow, None)
        outcome = await self._approved(ctx, flow, answer)
        if outcome is not None and outcome.status == "connected":
            try:
                await ctx.session.send_elicit_complete(flow.flow_id, related_request_id=ctx.request_id)
            except Exception:  # only a courtesy to the client
                logger.debug("notifications/elicitation/complete could not be sent")
        return _result(flow, outcome)

    async def _approved(self, ctx: Any, flow: Flow, answer: types.ElicitResult | None) -> Outcome | None:
        """The outcome once the client answered the URL elicitation: a decline or cancel ends the flow."""
        if answer is None or answer.action != "accept":
            flow.cancel()
        return await _wait(ctx, flow, flow.remaining() + 5)

    def _ask(
        self,
        request: ConnectAccountRequest,
        kind: Literal["roots", "approve"],
        question: types.InputRequest,
        flow: Flow | None,
        seconds: float,
    ) -> types.InputRequiredResult:
        key = f"{kind}-{secrets.token_hex(4)}"
        step = _Step(kind, key, _arguments(request), flow, anyio.current_time() + seconds)
        return types.InputRequiredResult(input_requests={key: question}, request_state=self._steps.issue(step))

    async def _resume(
        self, request: ConnectAccountRequest, ctx: Any, responses: types.InputResponses, state: str | None
    ) -> Answer:
        """A 2026-07-28 retry: the state must be one this server issued, unused and unexpired, and the
        retry must repeat the call's arguments and answer under the step's key; a retry that does
        not fit its step ends the step's flow, so that nothing is stored."""
        if state is None:
            raise ConnectError(f"requestState: missing beside inputResponses; {_START_OVER}")
        step = self._steps.redeem(state)
        if step is None:
            raise ConnectError(f"requestState: unknown, already used or expired; {_START_OVER}")
        answer = responses.get(step.key)
        problem = ""
        if step.arguments != _arguments(request):
            problem = "requestState: it was issued for a call with other arguments"
        elif step.kind == "roots" and not isinstance(answer, types.ListRootsResult):
            problem = f"inputResponses: no roots under {step.key}, the key this requestState asked for"
        elif step.kind == "approve" and not isinstance(answer, types.ElicitResult):
            problem = f"inputResponses: no elicitation answer under {step.key}, the key this requestState asked for"
        if problem:
            if step.flow is not None:  # end it before answering, so that the error is the whole story
                step.flow.cancel()
                with anyio.move_on_after(END_WAIT):
                    await step.flow.done.wait()
            raise ConnectError(f"{problem}; {_START_OVER}")
        if isinstance(answer, types.ListRootsResult):
            return await self._start(request, ctx, _root_uris(answer))
        assert step.flow is not None and isinstance(answer, types.ElicitResult)
        return _result(step.flow, await self._approved(ctx, step.flow, answer))
