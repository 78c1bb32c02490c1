"""connect_account end to end: a real MCP client session, the ModelGates stand-in whose `GET /auth`
approves at once, a real HTTP client playing the browser (it follows the stand-in's 302 to the
server's loopback listener), and the real dotenv file or keyring the key lands in.

Each test also proves the new key went nowhere else: not in what the client received (results,
notifications), not in the logs.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import mcp.types as types
import pytest
from mcp import Client, ClientSession
from mcp.client.stdio import stdio_client
from pydantic import SecretStr

from mcp_modelgates import account
from mcp_modelgates import connect as flows  # not `connect`: that is a fixture name
from mcp_modelgates.config import Settings
from mcp_modelgates.keystore import with_stored_key
from mcp_modelgates.server import build_server
from tests.conftest import API_KEY, BOTH_ERAS, ROOT, run_stdio, stdio_params, wire
from tests.fake_api import KEY_PREFIX, FakeModelGates, error_body

pytestmark = pytest.mark.anyio

KEY_VAR = "MODELGATES_API_KEY"
# A server started without MODELGATES_API_KEY looks in the keyring: not in the machine's own.
NO_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}


# ---------------------------------------------------------------- helpers


class Seen:
    """Everything the client received: results and every message the server sent on its own."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def message(self, message: Any) -> None:
        self.items.append(repr(message))

    def add(self, result: Any) -> dict[str, Any]:
        data: dict[str, Any] = wire(result)
        data.pop("_meta", None)
        self.items.append(json.dumps(data, ensure_ascii=False))
        return data

    def text(self) -> str:
        return "\n".join(str(i) for i in self.items)


@asynccontextmanager
async def session(settings: Settings, mode: str, seen: Seen, **client: Any) -> AsyncIterator[Client]:
    server = build_server(settings, backoff_base=0.01)
    async with Client(server, mode=mode, message_handler=seen.message, **client) as c:  # type: ignore[arg-type]
        yield c


async def browse(url: str) -> httpx.Response:
    """What a browser does with the authorization URL: follow the 302 to the loopback listener."""
    async with httpx.AsyncClient(follow_redirects=True, trust_env=False, timeout=30) as browser:
        return await browser.get(url)


def callback_of(authorization_url: str) -> str:
    return parse_qs(urlsplit(authorization_url).query)["callback_url"][0]


def port_of(authorization_url: str) -> int:
    port = urlsplit(callback_of(authorization_url)).port
    assert port is not None
    return port


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def listening_sockets() -> dict[int, str]:
    """This process's listening TCP sockets: port -> local address as /proc/net/tcp shows it."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    address, port = fields[1].rsplit(":", 1)
                    found[int(port, 16)] = address
    return found


def stored_key(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.removeprefix("export ").startswith(f"{KEY_VAR}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {KEY_VAR} line in {path}")


def assert_nowhere(key: str, seen: Seen, caplog: pytest.LogCaptureFixture, *pages: httpx.Response) -> None:
    assert key.startswith(KEY_PREFIX)
    assert key not in seen.text()
    assert key not in caplog.text
    for page in pages:
        assert key not in page.text


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def ws_settings(settings: Settings, workspace: Path) -> Settings:
    return dataclasses.replace(settings, workspace=str(workspace))


# ---------------------------------------------------------------- with URL elicitation


async def test_url_elicitation_connects_in_one_call_and_the_key_goes_only_to_the_file(
    fake: FakeModelGates,
    ws_settings: Settings,
    workspace: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(account, "PROGRESS_EVERY", 0.05)
    seen = Seen()
    asked: list[types.ElicitRequestURLParams] = []
    pages: list[httpx.Response] = []
    progressed = anyio.Event()
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        progressed.set()

    async def accept(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        asked.append(params)

        async def user_approves_later() -> None:
            await progressed.wait()  # the call reports progress while nobody has approved yet
            pages.append(await browse(params.url))

        context_tg.start_soon(user_approves_later)
        return types.ElicitResult(action="accept")

    async with (
        anyio.create_task_group() as context_tg,
        session(ws_settings, "legacy", seen, elicitation_callback=accept) as client,
    ):
        result = seen.add(await client.call_tool("connect_account", {}, progress_callback=on_progress))

    env = workspace / ".env"
    key = stored_key(env)
    assert env.read_bytes() == f"{KEY_VAR}={key}\n".encode()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert result == {
        "content": [
            {
                "type": "text",
                "text": f"Connected the ModelGates account for user user_2abc: the new key (sk-…{key[-4:]}) is "
                f"saved to {env} as {KEY_VAR}. The key itself is not shown here.",
            }
        ],
        "structuredContent": {
            "status": "connected",
            "env_var": KEY_VAR,
            "saved_to": str(env),
            "key_preview": f"sk-…{key[-4:]}",
            "user_id": "user_2abc",
        },
        "isError": False,
        "resultType": "complete",
    }
    (params,) = asked
    assert params.mode == "url" and "\n" not in params.message and str(env) in params.message
    assert params.url.startswith(fake.origin + "/auth?")
    callback = callback_of(params.url)
    assert callback.startswith("http://127.0.0.1:") and "/callback/" in callback
    assert len(urlsplit(callback).path.removeprefix("/callback/")) >= 32  # unguessable
    assert progress and progress[0][1] == 300.0 and "approval" in (progress[0][2] or "")
    (page,) = pages
    assert page.status_code == 200 and "Connected; you can close this tab." in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert_nowhere(key, seen, caplog, page)
    # What reached ModelGates: the approval page, then one exchange with the challenge's verifier.
    approve, exchange = fake.requests
    assert approve.method == "GET" and exchange.path.endswith("/auth/keys")
    assert set(exchange.json) == {"code", "code_verifier", "code_challenge_method"}
    assert not is_listening(port_of(params.url))


async def test_declining_the_elicitation_cancels_and_closes_the_listener(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    urls: list[str] = []

    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        urls.append(params.url)
        return types.ElicitResult(action="decline")

    seen = Seen()
    async with session(ws_settings, "legacy", seen, elicitation_callback=decline) as client:
        result = seen.add(await client.call_tool("connect_account", {}))
    assert result["isError"] is False
    assert result["structuredContent"]["status"] == "cancelled"
    assert "declined" in result["structuredContent"]["error"]
    assert not is_listening(port_of(urls[0]))
    assert fake.requests == [] and not (workspace / ".env").exists()


async def test_a_form_only_client_gets_the_link_instead_of_an_elicitation(
    fake: FakeModelGates, ws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_client_capability would say yes to `elicitation: {}`; the tool must not send a URL to it."""
    asked: list[Any] = []
    declare = ClientSession._build_capabilities

    def form_only_capabilities(self: ClientSession, version: str) -> types.ClientCapabilities:
        capabilities = declare(self, version)
        capabilities.elicitation = types.ElicitationCapability(form=types.FormElicitationCapability())
        return capabilities

    monkeypatch.setattr(ClientSession, "_build_capabilities", form_only_capabilities)

    async def form_only(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="decline")

    seen = Seen()
    async with session(ws_settings, "legacy", seen, elicitation_callback=form_only) as client:
        result = seen.add(await client.call_tool("connect_account", {"timeout": 5}))
    assert asked == []
    assert result["structuredContent"]["status"] == "waiting_for_approval"


async def test_a_client_whose_elicitation_fails_gets_the_link_and_the_flow_goes_on(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    """A client that declared URL elicitation but answers it with an error (no browser to open, say)
    still gets a working flow: the link to show, and the listener keeps waiting."""

    async def broken(context: Any, params: types.ElicitRequestParams) -> types.ErrorData:
        return types.ErrorData(code=types.INTERNAL_ERROR, message="no browser here")

    seen = Seen()
    async with session(ws_settings, "legacy", seen, elicitation_callback=broken) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"timeout": 30}))
        assert waiting["isError"] is False, waiting
        assert waiting["structuredContent"]["status"] == "waiting_for_approval"
        page = await browse(waiting["structuredContent"]["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["structuredContent"]["flow_id"]}))
    assert page.status_code == 200 and "Connected" in page.text
    assert done["structuredContent"]["status"] == "connected"
    assert stored_key(workspace / ".env").startswith(KEY_PREFIX)


# ---------------------------------------------------------------- without URL elicitation


@BOTH_ERAS
async def test_without_elicitation_the_link_comes_back_and_a_second_call_gets_the_outcome(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = workspace / ".env"
    env.write_bytes(b"# my settings\r\nOTHER=1\r\nexport MODELGATES_API_KEY=old\r\nLAST='x y'")
    env.chmod(0o644)  # readable by others: it becomes 0600, and the result says so
    seen = Seen()
    async with session(ws_settings, mode, seen) as client:
        first = seen.add(await client.call_tool("connect_account", {"timeout": 30}))
        waiting = first["structuredContent"]
        assert first["isError"] is False
        assert waiting["status"] == "waiting_for_approval"
        assert set(waiting) == {"status", "env_var", "saved_to", "authorization_url", "flow_id"}
        assert waiting["authorization_url"] in first["content"][0]["text"]
        assert waiting["flow_id"] in first["content"][0]["text"]
        assert is_listening(port_of(waiting["authorization_url"]))
        page = await browse(waiting["authorization_url"])  # the user opens the link the model showed
        assert "Connected; you can close this tab." in page.text
        second = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
        again = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"], "timeout": 1}))
    key = stored_key(env)
    assert second["structuredContent"] == {
        "status": "connected",
        "env_var": KEY_VAR,
        "saved_to": str(env),
        "key_preview": f"sk-…{key[-4:]}",
        "user_id": "user_2abc",
    }
    assert again["structuredContent"] == second["structuredContent"]
    assert second["content"][0]["text"].endswith(
        f"The key itself is not shown here. The mode of {env} was tightened from 0644 to 0600, so that only "
        "its owner can read the key."
    )
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    # Every other line byte for byte, the old key's line replaced in place.
    assert env.read_bytes() == f"# my settings\r\nOTHER=1\r\nexport MODELGATES_API_KEY={key}\r\nLAST='x y'".encode()
    assert_nowhere(key, seen, caplog, page)
    assert not is_listening(port_of(waiting["authorization_url"]))


async def test_no_approval_in_time_expires_and_closes_the_listener(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path, mode: str
) -> None:
    seen = Seen()
    async with session(ws_settings, mode, seen) as client:
        first = seen.add(await client.call_tool("connect_account", {"timeout": 0.3}))
        waiting = first["structuredContent"]
        later = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"], "timeout": 30}))
        assert later["isError"] is False
        assert later["structuredContent"]["status"] == "expired"
        assert "0.3 s" in later["structuredContent"]["error"]
        assert not is_listening(port_of(waiting["authorization_url"]))
        # A browser that comes too late finds nothing, and nothing is exchanged.
        with pytest.raises(httpx.ConnectError):
            await browse(waiting["authorization_url"])
    assert [r.path for r in fake.requests] == ["/auth?" + urlsplit(waiting["authorization_url"]).query]
    assert not (workspace / ".env").exists()


async def test_a_still_open_flow_answers_waiting_again_when_the_call_times_out(
    fake: FakeModelGates, ws_settings: Settings
) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        first = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        second = seen.add(await client.call_tool("connect_account", {"flow_id": first["flow_id"], "timeout": 0.2}))
    assert second["structuredContent"]["status"] == "waiting_for_approval"
    assert second["structuredContent"]["flow_id"] == first["flow_id"]


async def test_strangers_get_404_and_the_flow_goes_on(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"timeout": 60}))["structuredContent"]
        callback = callback_of(waiting["authorization_url"])
        origin = callback.split("/callback/")[0]
        silent = [socket.create_connection(("127.0.0.1", port_of(waiting["authorization_url"]))) for _ in range(3)]
        try:
            async with httpx.AsyncClient(trust_env=False) as stranger:
                assert (await stranger.get(origin + "/callback/guess?code=x")).status_code == 404
                assert (await stranger.get(origin + "/")).status_code == 404
                assert (await stranger.post(callback + "?code=x")).status_code == 404
                assert (await stranger.get(callback)).status_code == 404  # neither code nor error
            page = await browse(waiting["authorization_url"])
        finally:
            for sock in silent:
                sock.close()
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert page.status_code == 200 and "Connected" in page.text
    assert done["structuredContent"]["status"] == "connected"
    assert [r.method for r in fake.requests] == ["GET", "POST"]  # only the real code was exchanged


async def test_a_callback_with_error_fails_the_flow_with_a_printable_excerpt(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        async with httpx.AsyncClient(trust_env=False) as browser:
            page = await browser.get(
                callback_of(waiting["authorization_url"]),
                params={"error": "access_denied\x1b[31m<script>", "error_description": "no"},
            )
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert done["isError"] is False
    assert done["structuredContent"]["status"] == "failed"
    error = done["structuredContent"]["error"]
    assert "access_denied" in error and "\x1b" not in error
    assert "access_denied" in page.text and "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert fake.requests == [] and not (workspace / ".env").exists()
    assert not is_listening(port_of(waiting["authorization_url"]))


async def test_a_403_on_exchange_fails_and_leaves_the_file_untouched(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    env = workspace / ".env"
    env.write_bytes(b"MODELGATES_API_KEY=keep-me\n")
    env.chmod(0o640)
    fake.reply(403, error_body(403, "Invalid code or code_verifier"), path="/auth/keys")
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        page = await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert done["structuredContent"]["status"] == "failed"
    assert "HTTP 403" in done["structuredContent"]["error"]
    assert "Call connect_account again" in done["structuredContent"]["error"]
    assert "generate_pkce" not in done["structuredContent"]["error"]
    assert "HTTP 403" in page.text and "Connected" not in page.text
    assert env.read_bytes() == b"MODELGATES_API_KEY=keep-me\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640
    assert [r.method for r in fake.requests] == ["GET", "POST"]  # the exchange was not re-sent


async def test_two_concurrent_flows_are_independent_and_both_lines_survive(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path
) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        one = seen.add(await client.call_tool("connect_account", {"env_var": "KEY_ONE"}))["structuredContent"]
        two = seen.add(await client.call_tool("connect_account", {"env_var": "KEY_TWO"}))["structuredContent"]
        assert one["flow_id"] != two["flow_id"]
        assert port_of(one["authorization_url"]) != port_of(two["authorization_url"])
        async with anyio.create_task_group() as tg:  # both browsers arrive at once
            tg.start_soon(browse, two["authorization_url"])
            tg.start_soon(browse, one["authorization_url"])
        done_one = seen.add(await client.call_tool("connect_account", {"flow_id": one["flow_id"]}))
        done_two = seen.add(await client.call_tool("connect_account", {"flow_id": two["flow_id"]}))
    assert done_one["structuredContent"]["env_var"] == "KEY_ONE"
    assert done_two["structuredContent"]["env_var"] == "KEY_TWO"
    lines = (workspace / ".env").read_text().splitlines()
    assert sorted(line.split("=")[0] for line in lines) == ["KEY_ONE", "KEY_TWO"]


async def test_the_listener_is_bound_to_127_0_0_1_only(fake: FakeModelGates, ws_settings: Settings) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        port = port_of(waiting["authorization_url"])
        assert listening_sockets()[port] == "0100007F"


# ---------------------------------------------------------------- refusals before anything starts


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"env_file": "../.env"}, "env_file"),
        ({"env_file": "/etc/.env"}, "env_file"),
        ({"env_file": "~/.env"}, "env_file"),
        ({"env_file": "link/.env"}, "env_file"),  # a symlinked folder pointing outside
        ({"env_file": "notes.txt"}, "env_file"),
        ({"env_var": "1BAD"}, "env_var"),
        ({"env_var": "A-B"}, "env_var"),
        ({"store": "vault"}, "store"),
        ({"timeout": 601}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"callback_url": "http://127.0.0.1:1/cb"}, "callback_url"),
        ({"flow_id": "nope"}, "flow_id"),
        ({"flow_id": "abc", "store": "keyring"}, "store"),
    ],
)
async def test_refusals_happen_before_anything_listens_or_is_sent(
    fake: FakeModelGates,
    ws_settings: Settings,
    workspace: Path,
    tmp_path: Path,
    mode: str,
    arguments: dict[str, Any],
    named: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "link").symlink_to(outside)
    seen = Seen()
    async with session(ws_settings, mode, seen) as client:
        before = listening_sockets()
        result = seen.add(await client.call_tool("connect_account", arguments))
        after = listening_sockets()
    assert result["isError"] is True
    assert named in result["content"][0]["text"]
    assert after == before
    assert fake.requests == []
    assert os.listdir(outside) == [] and os.listdir(workspace) == ["link"]


async def test_a_symlinked_env_file_pointing_outside_is_refused(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.env"
    target.write_text("A=1\n")
    (workspace / ".env").symlink_to(target)
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        result = seen.add(await client.call_tool("connect_account", {}))
    assert result["isError"] is True and "env_file" in result["content"][0]["text"]
    assert target.read_text() == "A=1\n" and fake.requests == []


async def test_home_or_root_as_workspace_is_refused_with_advice(fake: FakeModelGates, settings: Settings) -> None:
    seen = Seen()
    async with session(dataclasses.replace(settings, workspace="/"), "legacy", seen) as client:
        result = seen.add(await client.call_tool("connect_account", {}))
    assert result["isError"] is True
    assert "MODELGATES_WORKSPACE" in result["content"][0]["text"] and fake.requests == []


# ---------------------------------------------------------------- the workspace from the client's roots


async def test_the_env_file_goes_to_the_clients_first_root(
    fake: FakeModelGates, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root project"
    root.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    async def roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=root.as_uri(), name="project")])  # type: ignore[arg-type]

    seen = Seen()
    async with session(settings, "legacy", seen, list_roots_callback=roots) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        assert waiting["saved_to"] == str(root / ".env")
        await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert done["structuredContent"]["status"] == "connected"
    assert (root / ".env").exists() and not (elsewhere / ".env").exists()


@BOTH_ERAS
async def test_without_roots_the_working_directory_is_the_workspace(
    fake: FakeModelGates, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.chdir(tmp_path)
    cwd = str(await anyio.Path(tmp_path).resolve())

    async def failing_roots(context: Any) -> types.ErrorData:
        return types.ErrorData(code=-32603, message="no roots here")

    seen = Seen()
    extra = {"list_roots_callback": failing_roots} if mode == "legacy" else {}
    async with session(settings, mode, seen, **extra) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
    assert waiting["saved_to"] == os.path.join(cwd, ".env")


# ---------------------------------------------------------------- the keyring


@pytest.fixture
def file_keyring(tmp_path: Path) -> Iterator[Any]:
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


async def test_the_keyring_store_saves_under_the_service_and_the_server_reads_it_back(
    fake: FakeModelGates, settings: Settings, file_keyring: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    async with session(settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"store": "keyring"}))["structuredContent"]
        assert waiting["saved_to"] == f"keyring:mcp-modelgates/{KEY_VAR}"
        await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    key = file_keyring.get_password("mcp-modelgates", KEY_VAR)
    assert done["structuredContent"]["status"] == "connected"
    assert done["structuredContent"]["key_preview"] == f"sk-…{key[-4:]}"
    assert_nowhere(key, seen, caplog)
    # A server started later without MODELGATES_API_KEY uses it, and says where it came from.
    loaded, source = with_stored_key(dataclasses.replace(settings, api_key=None))
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == key
    assert source == f"from the OS keyring (keyring:mcp-modelgates/{KEY_VAR})" and key not in source
    kept, source = with_stored_key(settings)
    assert kept.api_key == SecretStr(API_KEY) and source == "from MODELGATES_API_KEY"


async def test_no_usable_keyring_is_refused_before_the_flow_starts(fake: FakeModelGates, settings: Settings) -> None:
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        seen = Seen()
        async with session(settings, "legacy", seen) as client:
            before = listening_sockets()
            result = seen.add(await client.call_tool("connect_account", {"store": "keyring"}))
            assert listening_sockets() == before
    finally:
        keyring.set_keyring(previous)
    assert result["isError"] is True
    assert "env_file" in result["content"][0]["text"] and fake.requests == []


def test_stdio_start_up_does_not_import_keyring_when_the_key_is_set() -> None:
    code = (
        "import sys\n"
        "from mcp_modelgates.config import load_settings\n"
        "from mcp_modelgates.keystore import with_stored_key\n"
        "from mcp_modelgates.server import build_server\n"
        "s, source = with_stored_key(load_settings([], {'MODELGATES_API_KEY': 'sk-x'}))\n"
        "build_server(s)\n"
        "print(source, 'keyring' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "from MODELGATES_API_KEY False"


# ---------------------------------------------------------------- with connect=False


async def test_without_connect_the_tool_is_neither_listed_nor_callable(settings: Settings, mode: str) -> None:
    server = build_server(settings, connect=False)
    async with Client(server, mode=mode) as client:  # type: ignore[arg-type]
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert names == ["generate_pkce", "create_auth_code", "exchange_auth_code"]
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("connect_account", {})
    full = build_server(settings)
    async with Client(full, mode=mode) as client:  # type: ignore[arg-type]
        assert "connect_account" in [tool.name for tool in (await client.list_tools()).tools]


# ---------------------------------------------------------------- shutdown over stdio


@pytest.mark.parametrize("stop", ["eof", "sigterm"])
def test_shutdown_mid_flow_closes_the_listener(fake: FakeModelGates, workspace: Path, stop: str) -> None:
    env = stdio_params({"MODELGATES_BASE_URL": fake.base_url, "MODELGATES_WORKSPACE": str(workspace), **NO_KEYRING}).env
    assert env is not None
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    payload = "".join(
        json.dumps(message) + "\n"
        for message in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "connect_account", "arguments": {}}},
        )
    ).encode()
    run = run_stdio(payload, env, {1, 2}, stop=stop)
    answer = next(json.loads(line) for line in run.stdout_lines if json.loads(line).get("id") == 2)
    waiting = answer["result"]["structuredContent"]
    assert waiting["status"] == "waiting_for_approval"
    port = port_of(waiting["authorization_url"])
    assert run.returncode == 0
    assert not is_listening(port)
    assert f"listening on 127.0.0.1:{port}".encode() in run.stderr  # it was open before the stop
    assert b"listener closed" in run.stderr
    assert fake.requests == []


async def test_a_key_that_cannot_be_stored_fails_the_flow_and_says_so(
    fake: FakeModelGates, ws_settings: Settings, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        await anyio.Path(workspace / ".env").mkdir()  # the destination turned into a folder meanwhile
        page = await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert done["structuredContent"]["status"] == "failed"
    assert "issued but could not be stored" in done["structuredContent"]["error"]
    assert "could not be stored" in page.text
    assert [r.method for r in fake.requests] == ["GET", "POST"]
    assert KEY_PREFIX not in seen.text() + caplog.text + page.text


async def test_the_prompt_and_instructions_lead_with_connect_account_only_when_it_is_there(
    settings: Settings, mode: str
) -> None:
    from mcp.shared.exceptions import MCPError

    from mcp_modelgates.prompt import INSTRUCTIONS, MANUAL_INSTRUCTIONS, PROMPT_NAME

    assert INSTRUCTIONS.index("connect_account") < INSTRUCTIONS.index("generate_pkce")
    assert "connect_account" not in MANUAL_INSTRUCTIONS and "exchange_auth_code" in MANUAL_INSTRUCTIONS
    async with Client(build_server(settings), mode=mode) as client:  # type: ignore[arg-type]
        prompt = await client.get_prompt(PROMPT_NAME, {})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        assert text.index("connect_account") < text.index("flow_id") and "Never ask me for the key" in text
        manual = await client.get_prompt(PROMPT_NAME, {"callback_url": "http://localhost:3000/callback"})
        assert "generate_pkce" in manual.messages[0].content.text  # type: ignore[union-attr]
    async with Client(build_server(settings, connect=False), mode=mode) as client:  # type: ignore[arg-type]
        (listed,) = (await client.list_prompts()).prompts
        assert [(a.name, a.required) for a in listed.arguments or []] == [("callback_url", True)]
        with pytest.raises(MCPError, match="callback_url: required"):
            await client.get_prompt(PROMPT_NAME, {})


def test_a_server_started_without_the_variable_uses_the_keyring_entry(fake: FakeModelGates, tmp_path: Path) -> None:
    """Over stdio, as a client starts it: the key comes from the keyring file backend, the log says so."""
    stored = KEY_PREFIX + "from-the-keyring-0123456789abcdef"
    keyring_env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path)}
    setup = (
        "import keyring, sys\nkeyring.get_keyring().set_password('mcp-modelgates', 'MODELGATES_API_KEY', sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", setup, stored], env={**os.environ, **keyring_env}, check=True)
    env = stdio_params({"MODELGATES_BASE_URL": fake.base_url, **keyring_env}).env
    assert env is not None and "MODELGATES_API_KEY" not in env
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    call = {"name": "create_auth_code", "arguments": {"callback_url": "http://localhost:3000/cb"}}
    payload = "".join(
        json.dumps(message) + "\n"
        for message in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
        )
    ).encode()
    run = run_stdio(payload, env, {1, 2})
    assert b"key from the OS keyring (keyring:mcp-modelgates/MODELGATES_API_KEY)" in run.stderr
    (created,) = fake.requests
    assert created.headers["authorization"] == f"Bearer {stored}"
    assert stored.encode() not in run.stderr and stored.encode() not in b"".join(run.stdout_lines)


async def test_over_stdio_a_client_with_url_elicitation_and_roots_connects_in_one_call(
    fake: FakeModelGates, tmp_path: Path
) -> None:
    """As Claude Code runs it: the console script, the 2025-11-25 handshake, roots and URL elicitation."""
    root = tmp_path / "project"
    root.mkdir()
    pages: list[httpx.Response] = []

    async def accept(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        pages.append(await browse(params.url))
        return types.ElicitResult(action="accept")

    async def roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=root.as_uri())])  # type: ignore[arg-type]

    stderr = tmp_path / "stderr.log"
    params = stdio_params({"MODELGATES_BASE_URL": fake.base_url, "MODELGATES_LOG_LEVEL": "DEBUG", **NO_KEYRING})
    with stderr.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, elicitation_callback=accept, list_roots_callback=roots) as client,
        ):
            await client.initialize()
            result = wire(await client.call_tool("connect_account", {}))
    key = stored_key(root / ".env")
    assert result["structuredContent"]["status"] == "connected"
    assert result["structuredContent"]["saved_to"] == str(root / ".env")
    (page,) = pages
    assert "Connected; you can close this tab." in page.text
    log = await anyio.Path(stderr).read_text()
    assert "listener closed" in log
    assert key not in json.dumps(result, ensure_ascii=False) and key not in log and key not in page.text


async def test_silent_connections_are_dropped_after_the_read_timeout_and_free_their_slots(
    fake: FakeModelGates, ws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows, "READ_TIMEOUT", 0.2)
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        port = port_of(waiting["authorization_url"])
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(flows.MAX_CONNECTIONS)]
        try:
            for sock in silent:  # each one is closed by the listener, without an answer
                sock.settimeout(10)
                assert await anyio.to_thread.run_sync(sock.recv, 100) == b""
            page = await browse(waiting["authorization_url"])
        finally:
            for sock in silent:
                sock.close()
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert "Connected" in page.text and done["structuredContent"]["status"] == "connected"


async def test_the_number_of_open_flows_is_capped(fake: FakeModelGates, ws_settings: Settings) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        for _ in range(flows.MAX_PENDING):
            started = seen.add(await client.call_tool("connect_account", {}))
            assert started["structuredContent"]["status"] == "waiting_for_approval"
        before = listening_sockets()
        refused = seen.add(await client.call_tool("connect_account", {}))
        assert listening_sockets() == before
    assert refused["isError"] is True and "already waiting for approval" in refused["content"][0]["text"]


async def test_concurrent_calls_cannot_open_more_listeners_than_the_cap(
    fake: FakeModelGates, ws_settings: Settings
) -> None:
    """The slot is taken before the first await: 200 calls at once leave MAX_PENDING listeners."""
    seen = Seen()
    before = set(listening_sockets())
    results: list[dict[str, Any]] = []
    async with session(ws_settings, "legacy", seen) as client:

        async def one() -> None:
            results.append(seen.add(await client.call_tool("connect_account", {})))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(one)
        opened = set(listening_sockets()) - before
        waiting = [r for r in results if not r["isError"]]
        refused = [r for r in results if r["isError"]]
    assert len(results) == 200
    assert len(waiting) == flows.MAX_PENDING and len(opened) == flows.MAX_PENDING
    assert {port_of(r["structuredContent"]["authorization_url"]) for r in waiting} == opened
    assert all("already waiting for approval" in r["content"][0]["text"] for r in refused)
    assert not any(is_listening(port) for port in opened)  # the session's end closed them all


async def test_idle_local_connections_cannot_lock_the_browser_out(fake: FakeModelGates, ws_settings: Settings) -> None:
    """Someone keeps more silent connections open than the listener has slots, reopening each one
    it closes; the browser's redirect (and a reload) still gets through: the oldest silent one goes."""
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"timeout": 60}))["structuredContent"]
        port = port_of(waiting["authorization_url"])
        stop, filled = threading.Event(), threading.Event()
        opened = 0

        def hold_the_slots() -> None:  # bounded: until stop, at most 30 s
            nonlocal opened
            held: list[socket.socket] = []
            deadline = time.monotonic() + 30
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    for sock in [s for s in held if select.select([s], [], [], 0)[0]]:  # closed by the listener
                        held.remove(sock)
                        sock.close()
                    while len(held) < 2 * flows.MAX_CONNECTIONS:
                        try:
                            held.append(socket.create_connection(("127.0.0.1", port)))
                        except ConnectionRefusedError:  # the flow ended with the browser's visit
                            return
                        opened += 1
                    filled.set()
                    time.sleep(0.02)
            finally:
                for sock in held:
                    sock.close()

        holder = threading.Thread(target=hold_the_slots)
        holder.start()
        try:
            assert await anyio.to_thread.run_sync(filled.wait, 30)
            async with httpx.AsyncClient(trust_env=False, timeout=30) as stranger:  # every slot is taken now
                assert (await stranger.get(f"http://127.0.0.1:{port}/")).status_code == 404
            page = await browse(waiting["authorization_url"])
        finally:
            stop.set()
            await anyio.to_thread.run_sync(holder.join)
        assert opened > 2 * flows.MAX_CONNECTIONS  # the listener did close some of them meanwhile
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert page.status_code == 200 and "Connected" in page.text
    assert done["structuredContent"]["status"] == "connected"


async def test_a_silent_connection_is_dropped_sooner_than_one_sending_its_head(
    fake: FakeModelGates, ws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows, "SILENT_TIMEOUT", 0.3)
    monkeypatch.setattr(flows, "READ_TIMEOUT", 30.0)
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {}))["structuredContent"]
        callback = urlsplit(callback_of(waiting["authorization_url"]))
        slow = socket.create_connection(("127.0.0.1", port_of(waiting["authorization_url"])))
        silent = socket.create_connection(("127.0.0.1", port_of(waiting["authorization_url"])))
        try:
            slow.sendall(f"GET {callback.path}?code=".encode())  # a head that has begun
            silent.settimeout(10)
            assert await anyio.to_thread.run_sync(silent.recv, 100) == b""  # closed, unanswered
            slow.settimeout(1)
            with pytest.raises(TimeoutError):  # still open: it is given the whole head's time
                await anyio.to_thread.run_sync(slow.recv, 100)
            slow.sendall(b"x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a code that the stand-in does not know
            slow.settimeout(30)
            answer = b""
            while chunk := await anyio.to_thread.run_sync(slow.recv, 65536):
                answer += chunk
        finally:
            slow.close()
            silent.close()
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200 ok") and "not connected" in answer.decode().lower()
    for header in ("cache-control: no-store", "x-content-type-options: nosniff", "referrer-policy: no-referrer"):
        assert header in head
    assert "content-security-policy: default-src 'none'" in head
    assert done["structuredContent"]["status"] == "failed"


async def test_malformed_requests_get_400_and_the_flow_goes_on(fake: FakeModelGates, ws_settings: Settings) -> None:
    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        waiting = seen.add(await client.call_tool("connect_account", {"timeout": 60}))["structuredContent"]
        port = port_of(waiting["authorization_url"])
        path = urlsplit(callback_of(waiting["authorization_url"])).path
        for raw in (b"NOT HTTP AT ALL\r\n\r\n", f"GET {path}?code=x HTTP/1.1\r\n\r\n".encode()):  # no Host
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(raw)
                sock.settimeout(10)
                answer = await anyio.to_thread.run_sync(sock.recv, 65536)
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:40]
        page = await browse(waiting["authorization_url"])
        done = seen.add(await client.call_tool("connect_account", {"flow_id": waiting["flow_id"]}))
    assert "Connected" in page.text and done["structuredContent"]["status"] == "connected"
    assert [r.method for r in fake.requests] == ["GET", "POST"]


async def test_no_descriptor_for_a_listener_fails_that_call_only(
    fake: FakeModelGates, ws_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = anyio.create_tcp_listener

    async def out_of_descriptors(**_: Any) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    seen = Seen()
    async with session(ws_settings, "legacy", seen) as client:
        monkeypatch.setattr(flows.anyio, "create_tcp_listener", out_of_descriptors)
        failed = seen.add(await client.call_tool("connect_account", {}))
        monkeypatch.setattr(flows.anyio, "create_tcp_listener", real)
        started = [seen.add(await client.call_tool("connect_account", {})) for _ in range(flows.MAX_PENDING)]
    assert failed["isError"] is True
    assert "Could not open a listener on 127.0.0.1 (EMFILE)" in failed["content"][0]["text"]
    assert [s["structuredContent"]["status"] for s in started] == ["waiting_for_approval"] * flows.MAX_PENDING
