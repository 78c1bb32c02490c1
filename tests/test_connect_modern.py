"""connect_account in the 2026-07-28 era: no back channel, so the call answers `InputRequiredResult`
(roots, then the URL elicitation) and the client retries it with its answers and the `requestState`.

Real client sessions drive it (`mcp.Client(mode="2026-07-28")` in memory, over stdio with the console
script, and over HTTP on loopback), with callbacks that play the user: the roots callback names a
project folder, the elicitation callback opens the authorization URL with httpx (the stand-in's
`GET /auth` approves and redirects to the server's listener). Where a test needs to hold or alter
the state, it drives the rounds itself with `client.session.call_tool(allow_input_required=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcp_modelgates import account
from mcp_modelgates.config import Settings
from mcp_modelgates.server import build_server, offers_connect
from tests.conftest import API_KEY, stdio_params, wire
from tests.fake_api import FakeModelGates
from tests.test_connect import (
    KEY_VAR,
    NO_KEYRING,
    Seen,
    assert_nowhere,
    browse,
    callback_of,
    is_listening,
    listening_sockets,
    port_of,
    stored_key,
)
from tests.test_http import start_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
Elicit = Callable[[Any, types.ElicitRequestParams], Awaitable[types.ElicitResult]]
Roots = Callable[[Any], Awaitable[types.ListRootsResult]]


class User:
    """The person at the client: answers roots with `root` and, for the elicitation, opens the page
    (unless `opens` is False) and answers with `action`. Records what the client was asked, in order."""

    def __init__(self, root: Path | None = None, action: str = "accept", opens: bool = True) -> None:
        self.root, self.action, self.opens = root, action, opens
        self.asked: list[str] = []
        self.urls: list[str] = []
        self.pages: list[httpx.Response] = []

    async def roots(self, context: Any) -> types.ListRootsResult:
        assert self.root is not None
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=self.root.as_uri(), name="project")])  # type: ignore[arg-type]

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        self.asked.append("elicitation")
        self.urls.append(params.url)
        if self.opens and self.action == "accept":
            self.pages.append(await browse(params.url))
        return types.ElicitResult(action=self.action)  # type: ignore[arg-type]

    def callbacks(self, roots: bool = True, elicitation: bool = True) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if roots:
            found["list_roots_callback"] = self.roots
        if elicitation:
            found["elicitation_callback"] = self.elicit
        return found


@asynccontextmanager
async def modern(settings: Settings, seen: Seen, **callbacks: Any) -> AsyncIterator[Client]:
    server = build_server(settings, backoff_base=0.01)
    async with Client(server, mode=MODERN, message_handler=seen.message, **callbacks) as client:  # type: ignore[arg-type]
        yield client


async def manual(client: Client, arguments: dict[str, Any], **retry: Any) -> Any:
    """One round, as the client sends it, without the SDK's retry loop."""
    return await client.session.call_tool("connect_account", arguments, allow_input_required=True, **retry)


def only_request(answer: Any) -> tuple[str, Any]:
    assert isinstance(answer, types.InputRequiredResult), answer
    assert answer.input_requests is not None and answer.request_state is not None
    ((key, request),) = answer.input_requests.items()
    return key, request


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "the project"
    folder.mkdir()
    return folder


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's working directory: where a key must not land when the client named a root."""
    folder = tmp_path / "server cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# ---------------------------------------------------------------- one logical call


async def test_roots_then_url_elicitation_then_connected_in_one_call(
    fake: FakeModelGates,
    settings: Settings,
    project: Path,
    elsewhere: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(account, "PROGRESS_EVERY", 0.05)
    seen = Seen()
    user = User(project, opens=False)  # accepts at once, and approves in the browser a little later
    progressed = anyio.Event()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        progressed.set()

    async def approves_later() -> None:
        await progressed.wait()  # the retry waits for the browser and says so meanwhile
        user.pages.append(await browse(user.urls[0]))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg, modern(settings, seen, **user.callbacks()) as client:
            tg.start_soon(approves_later)
            result = seen.add(await client.call_tool("connect_account", {"timeout": 30}, progress_callback=on_progress))

    env = project / ".env"
    key = stored_key(env)
    assert user.asked == ["roots", "elicitation"]
    assert result["isError"] is False and result["resultType"] == "complete"
    assert result["structuredContent"] == {
        "status": "connected",
        "env_var": KEY_VAR,
        "saved_to": str(env),
        "key_preview": f"sk-…{key[-4:]}",
        "user_id": "user_2abc",
    }
    assert env.read_bytes() == f"{KEY_VAR}={key}\n".encode()
    assert not (elsewhere / ".env").exists()
    (url,) = user.urls
    assert url.startswith(fake.origin + "/auth?")
    assert progress and progress[0][1] == 30.0 and "approval" in (progress[0][2] or "")
    (page,) = user.pages
    assert "Connected; you can close this tab." in page.text
    assert_nowhere(key, seen, caplog, page)
    approve, exchange = fake.requests
    assert approve.method == "GET" and set(exchange.json) == {"code", "code_verifier", "code_challenge_method"}
    assert not is_listening(port_of(url))


async def test_the_state_is_an_opaque_handle_holding_no_secret(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path
) -> None:
    """Each round's requestState is fresh and random, and none of them holds the verifier, the
    challenge, the callback's path or the key: they never leave the server."""
    user = User(project)
    async with modern(settings, Seen(), **user.callbacks()) as client:
        first = await manual(client, {})
        roots_key, ask_roots = only_request(first)
        assert isinstance(ask_roots, types.ListRootsRequest)
        second = await manual(
            client, {}, input_responses={roots_key: await user.roots(None)}, request_state=first.request_state
        )
        approve_key, ask_approval = only_request(second)
        assert isinstance(ask_approval, types.ElicitRequest)
        assert isinstance(ask_approval.params, types.ElicitRequestURLParams)
        await user.elicit(None, ask_approval.params)
        done = await manual(
            client,
            {},
            input_responses={approve_key: types.ElicitResult(action="accept")},
            request_state=second.request_state,
        )
    assert isinstance(done, types.CallToolResult) and (done.structured_content or {})["status"] == "connected"
    states = [first.request_state, second.request_state]
    assert len(set(states)) == 2 and roots_key != approve_key
    for state in states:
        assert state is not None and len(state) >= 43 and state.replace("-", "").replace("_", "").isalnum()
    exchange = fake.requests[-1].json
    callback_token = callback_of(ask_approval.params.url).rsplit("/", 1)[1]
    secrets_of_the_flow = [exchange["code_verifier"], exchange["code"], stored_key(project / ".env")]
    shown = json.dumps([wire(first), wire(second)])
    for secret in secrets_of_the_flow:
        assert secret not in shown
    assert all(callback_token not in (state or "") for state in states)


async def test_what_an_input_request_carries_is_masked_too(
    fake: FakeModelGates, settings: Settings, tmp_path: Path, elsewhere: Path
) -> None:
    """The elicitation's message names the destination; a folder named after the key shows ***."""
    unlucky = tmp_path / f"project-{API_KEY}"
    unlucky.mkdir()
    messages: list[str] = []

    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        messages.append(params.message)
        return types.ElicitResult(action="decline")

    user = User(unlucky)
    async with modern(settings, Seen(), list_roots_callback=user.roots, elicitation_callback=decline) as client:
        result = await client.call_tool("connect_account", {"timeout": 30})
    (message,) = messages
    assert "project-***" in message and API_KEY not in message
    assert (result.structured_content or {})["status"] == "cancelled"


# ---------------------------------------------------------------- what the client declared


async def test_declining_the_elicitation_cancels_and_stores_nothing(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path
) -> None:
    for action in ("decline", "cancel"):
        user = User(project, action=action)
        seen = Seen()
        async with modern(settings, seen, **user.callbacks()) as client:
            result = seen.add(await client.call_tool("connect_account", {"timeout": 30}))
        assert user.asked == ["roots", "elicitation"]
        assert result["isError"] is False
        assert result["structuredContent"]["status"] == "cancelled"
        assert "declined" in result["structuredContent"]["error"]
        assert not is_listening(port_of(user.urls[0]))
    assert fake.requests == [] and not (project / ".env").exists() and not (elsewhere / ".env").exists()


async def test_roots_only_the_key_goes_to_the_root_and_the_link_comes_back(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path
) -> None:
    user = User(project)
    seen = Seen()
    async with modern(settings, seen, **user.callbacks(elicitation=False)) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"timeout": 30}))["structuredContent"]
        assert waiting["status"] == "waiting_for_approval" and waiting["saved_to"] == str(project / ".env")
        page = await browse(waiting["authorization_url"])  # the user opens the link the model showed
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert user.asked == ["roots"]
    assert "Connected" in page.text and done["structuredContent"]["status"] == "connected"
    assert stored_key(project / ".env") and not (elsewhere / ".env").exists()


async def test_elicitation_only_uses_the_working_directory_and_one_call(
    fake: FakeModelGates, settings: Settings, elsewhere: Path
) -> None:
    user = User()
    seen = Seen()
    async with modern(settings, seen, **user.callbacks(roots=False)) as client:
        result = seen.add(await client.call_tool("connect_account", {}))
    cwd = await anyio.Path(elsewhere).resolve()
    assert user.asked == ["elicitation"]
    assert result["structuredContent"]["status"] == "connected"
    assert result["structuredContent"]["saved_to"] == os.path.join(cwd, ".env")
    assert stored_key(Path(cwd) / ".env")


async def test_a_client_known_to_fail_input_required_gets_the_link_instead(
    fake: FakeModelGates, settings: Settings, elsewhere: Path
) -> None:
    """GitHub Copilot CLI 1.0.102 declares URL elicitation in this era but fails a call answered
    with input_required; by its client name it gets the link and the flow_id, and nothing is asked."""
    user = User()
    seen = Seen()
    copilot = types.Implementation(name="copilot-cli", version="1.0.102")
    server = build_server(settings, backoff_base=0.01)
    async with Client(server, mode=MODERN, client_info=copilot, **user.callbacks()) as client:  # type: ignore[arg-type]
        answer = await manual(client, {"timeout": 30})
        assert isinstance(answer, types.CallToolResult), answer
        waiting = seen.add(answer)["structuredContent"]
        assert waiting["status"] == "waiting_for_approval" and waiting["flow_id"], waiting
        page = await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert user.asked == []
    assert "Connected" in page.text and done["structuredContent"]["status"] == "connected"
    assert stored_key(Path(await anyio.Path(elsewhere).resolve()) / ".env")


async def test_a_configured_workspace_is_used_without_asking_for_roots(
    fake: FakeModelGates, settings: Settings, project: Path, tmp_path: Path
) -> None:
    configured = tmp_path / "configured"
    configured.mkdir()
    user = User(project)
    async with modern(dataclasses.replace(settings, workspace=str(configured)), Seen(), **user.callbacks()) as client:
        result = await client.call_tool("connect_account", {})
    assert user.asked == ["elicitation"]
    assert (result.structured_content or {})["status"] == "connected"
    assert stored_key(configured / ".env") and not (project / ".env").exists()


# ---------------------------------------------------------------- requestState is untrusted input


async def test_a_tampered_state_is_refused_before_anything_listens(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path
) -> None:
    user = User(project)
    async with modern(settings, Seen(), **user.callbacks()) as client:
        first = await manual(client, {})
        key, _ = only_request(first)
        state = first.request_state
        before = listening_sockets()
        answers = {key: await user.roots(None)}
        tampered = [state[:-1] + ("A" if state[-1] != "A" else "B"), state + "x", "", "x" * 10_000, API_KEY]
        refused = [await manual(client, {}, input_responses=answers, request_state=bad) for bad in tampered]
        assert listening_sockets() == before
        # The state itself was not spent by the forgeries.
        genuine = await manual(client, {}, input_responses=answers, request_state=state)
        assert isinstance(genuine, types.InputRequiredResult)
    for answer in refused:
        assert isinstance(answer, types.CallToolResult) and answer.is_error is True
        text = answer.content[0].text  # type: ignore[union-attr]
        assert text.startswith("requestState: unknown, already used or expired") and "start over" in text
    assert fake.requests == [] and not (project / ".env").exists()


async def test_a_state_works_once(fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path) -> None:
    user = User(project)
    async with modern(settings, Seen(), **user.callbacks()) as client:
        first = await manual(client, {})
        key, _ = only_request(first)
        answers = {key: await user.roots(None)}
        second = await manual(client, {}, input_responses=answers, request_state=first.request_state)
        approve_key, _ = only_request(second)
        before = listening_sockets()
        replayed_roots = await manual(client, {}, input_responses=answers, request_state=first.request_state)
        assert listening_sockets() == before  # no second listener
        declined = {approve_key: types.ElicitResult(action="decline")}
        cancelled = await manual(client, {}, input_responses=declined, request_state=second.request_state)
        accepted = {approve_key: types.ElicitResult(action="accept")}
        replayed_approval = await manual(client, {}, input_responses=accepted, request_state=second.request_state)
    assert isinstance(cancelled, types.CallToolResult)
    assert (cancelled.structured_content or {})["status"] == "cancelled"
    for answer in (replayed_roots, replayed_approval):
        assert isinstance(answer, types.CallToolResult) and answer.is_error is True
        assert "already used" in answer.content[0].text  # type: ignore[union-attr]
    assert fake.requests == [] and not (project / ".env").exists()


async def test_answers_without_a_state_are_refused(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path
) -> None:
    user = User(project)
    async with modern(settings, Seen(), **user.callbacks()) as client:
        key, _ = only_request(await manual(client, {}))
        before = listening_sockets()
        answer = await manual(client, {}, input_responses={key: await user.roots(None)})
        assert listening_sockets() == before
    assert isinstance(answer, types.CallToolResult) and answer.is_error is True
    assert answer.content[0].text.startswith("requestState: missing")  # type: ignore[union-attr]
    assert fake.requests == [] and not (project / ".env").exists()


async def test_a_state_from_one_flow_cannot_answer_another(
    fake: FakeModelGates, settings: Settings, project: Path
) -> None:
    """Two flows started by identical calls: flow A's state with flow B's answer, or with other
    arguments, is refused and ends flow A; flow B goes on and connects."""
    ws = dataclasses.replace(settings, workspace=str(project))
    user = User(project)
    async with modern(ws, Seen(), **user.callbacks()) as client:
        short = {"timeout": 5}  # a refusal that failed to come would wait this long, then fail the test
        one, two = await manual(client, short), await manual(client, short)
        key_one, ask_one = only_request(one)
        key_two, ask_two = only_request(two)
        assert key_one != key_two and one.request_state != two.request_state
        url_one, url_two = ask_one.params.url, ask_two.params.url
        accept = types.ElicitResult(action="accept")
        crossed = await manual(client, short, input_responses={key_two: accept}, request_state=one.request_state)
        other_args = await manual(
            client,
            {**short, "env_var": "OTHER_KEY"},
            input_responses={key_two: accept},
            request_state=two.request_state,
        )
        assert not is_listening(port_of(url_one)) and not is_listening(port_of(url_two))  # both flows ended
        three = await manual(client, {})
        key_three, ask_three = only_request(three)
        page = await browse(ask_three.params.url)
        done = await manual(client, {}, input_responses={key_three: accept}, request_state=three.request_state)
    for answer, named in ((crossed, f"no elicitation answer under {key_one}"), (other_args, "other arguments")):
        assert isinstance(answer, types.CallToolResult) and answer.is_error is True
        assert named in answer.content[0].text  # type: ignore[union-attr]
    assert "Connected" in page.text
    assert isinstance(done, types.CallToolResult) and (done.structured_content or {})["status"] == "connected"
    assert len(fake.requests) == 2  # only the third flow reached ModelGates


async def test_a_stale_state_is_refused(
    fake: FakeModelGates, settings: Settings, project: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(account, "ROOTS_STEP_SECONDS", 0.2)
    user = User(project)
    async with modern(settings, Seen(), **user.callbacks()) as client:
        first = await manual(client, {})
        key, _ = only_request(first)
        await anyio.sleep(0.5)
        before = listening_sockets()
        answer = await manual(
            client, {}, input_responses={key: await user.roots(None)}, request_state=first.request_state
        )
        assert listening_sockets() == before
    assert isinstance(answer, types.CallToolResult) and answer.is_error is True
    assert "expired" in answer.content[0].text  # type: ignore[union-attr]
    assert fake.requests == [] and not (project / ".env").exists()


async def test_the_handshake_era_takes_no_request_state(
    fake: FakeModelGates, settings: Settings, project: Path
) -> None:
    async with Client(build_server(dataclasses.replace(settings, workspace=str(project))), mode="legacy") as client:
        answer = await client.session.call_tool("connect_account", {}, request_state="anything")
    assert answer.is_error is True and "2026-07-28" in answer.content[0].text  # type: ignore[union-attr]
    assert fake.requests == []


# ---------------------------------------------------------------- where connect_account is offered


def test_per_caller_keys_and_non_loopback_binds_do_not_offer_connect_account() -> None:
    assert offers_connect(Settings())
    assert offers_connect(Settings(transport="http", http_host="127.0.0.1"))
    assert not offers_connect(Settings(transport="http", http_host="0.0.0.0"))
    assert not offers_connect(Settings(transport="http", http_host="127.0.0.1", key_from_client=True))


# ---------------------------------------------------------------- over stdio and over HTTP


async def test_over_stdio_one_call_connects_and_the_key_lands_in_the_root(
    fake: FakeModelGates, project: Path, elsewhere: Path, tmp_path: Path
) -> None:
    params = stdio_params({"MODELGATES_BASE_URL": fake.base_url, "MODELGATES_API_KEY": API_KEY, **NO_KEYRING})
    params = StdioServerParameters(command=params.command, args=params.args, env=params.env, cwd=str(elsewhere))
    user = User(project)
    async with Client(params, mode=MODERN, **user.callbacks()) as client:
        result = wire(await client.call_tool("connect_account", {}))
    key = stored_key(project / ".env")
    assert "io.modelcontextprotocol/serverInfo" in result["_meta"]  # a 2026-07-28 result, not a handshake's
    assert user.asked == ["roots", "elicitation"]
    assert result["structuredContent"]["status"] == "connected"
    assert result["structuredContent"]["saved_to"] == str(project / ".env")
    assert not (elsewhere / ".env").exists()
    assert key not in json.dumps(result, ensure_ascii=False) and key not in user.pages[0].text


async def test_over_http_on_loopback_one_call_connects_and_the_key_lands_in_the_root(
    fake: FakeModelGates, project: Path, elsewhere: Path
) -> None:
    env = {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url, "MODELGATES_LOG_LEVEL": "DEBUG"}
    server = start_server({**env, **NO_KEYRING})
    try:
        user = User(project)
        async with Client(server.url, mode=MODERN, **user.callbacks()) as client:
            result = wire(await client.call_tool("connect_account", {}))
        declined = User(project, action="decline")
        async with Client(server.url, mode=MODERN, **declined.callbacks()) as client:
            cancelled = wire(await client.call_tool("connect_account", {"env_var": "SECOND_KEY"}))
    finally:
        assert server.stop() == 0
    key = stored_key(project / ".env")
    assert "io.modelcontextprotocol/serverInfo" in result["_meta"]  # a 2026-07-28 result, not a handshake's
    assert user.asked == ["roots", "elicitation"] and declined.asked == ["roots", "elicitation"]
    assert result["structuredContent"]["status"] == "connected"
    assert result["structuredContent"]["saved_to"] == str(project / ".env")
    assert cancelled["structuredContent"]["status"] == "cancelled"
    assert (project / ".env").read_text() == f"{KEY_VAR}={key}\n" and not (elsewhere / ".env").exists()
    assert key not in server.stderr and API_KEY not in server.stderr
    assert "listener closed" in server.stderr


async def test_over_http_with_per_caller_keys_connect_account_is_not_offered(fake: FakeModelGates) -> None:
    server = start_server({"MODELGATES_KEY_FROM_CLIENT": "1", "MODELGATES_BASE_URL": fake.base_url})
    try:
        async with Client(server.url, mode=MODERN) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            with pytest.raises(Exception, match="Unknown tool"):
                await client.call_tool("connect_account", {})
    finally:
        assert server.stop() == 0
    assert names == ["generate_pkce", "create_auth_code", "exchange_auth_code"]
