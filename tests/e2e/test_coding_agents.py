"""Coding agents against the installed console script: Codex CLI, Gemini CLI, GitHub Copilot CLI, opencode.

The larger set of real clients, run only with MODELGATES_E2E_AGENTS=1 (.ci/run sets it): they add
about 1.3 GB, installed once into tests/e2e/agents/node_modules from the pins in
tests/e2e/agents/package.json and its lock, with the same pinned Node 22 as the default set.

Each agent runs as a new user would run it: its own temporary HOME (and XDG folders), the server
added with the agent's own `mcp add` command as the README writes it, and a config that keeps it
off the network (no update checks, telemetry, plugins or model lists; its model API is the
stand-in in model_stand_in.py on 127.0.0.1). Each test shows the server connected, sees the four
tools as the agent offers them to its model, and makes one real tool call the way a user's model
would: the stand-in model answers the first turn with a call of `create_auth_code` and the second
with text. What reached the ModelGates stand-in (tests/fake_api.py) is asserted, byte for byte.
`connect_account` runs end to end in Codex (URL elicitation through `codex app-server`, the test
playing the user who approves and the browser) and in Copilot CLI (its link path). Codex CLI,
Gemini CLI and opencode also sign in to the hosted server's OAuth mode, each in a pseudo-terminal
(terminal.py), the test playing the browser the agent tries to open.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

SWITCH = "MODELGATES_E2E_AGENTS"
if os.environ.get(SWITCH) != "1":  # one skip for the whole module: one line in the summary
    pytest.skip(
        f"coding agents (Codex, Gemini CLI, Copilot CLI, opencode) and the MCP conformance suite not run: "
        f"set {SWITCH}=1 (installs about 1.3 GB into tests/e2e/agents/node_modules)",
        allow_module_level=True,
    )

from tests.conftest import API_KEY, server_command  # noqa: E402
from tests.e2e.model_stand_in import ModelStandIn  # noqa: E402
from tests.e2e.terminal import Terminal  # noqa: E402
from tests.e2e.test_real_clients import E2E, NAME, README, SPEC, explain, install_pinned  # noqa: E402
from tests.e2e.test_real_clients_http import TOKEN, server  # noqa: E402  (shared key with a token)
from tests.e2e.test_real_clients_oauth import approve, holds_no_minted_key, upstream_keys  # noqa: E402
from tests.fake_api import KEY_PREFIX, FakeModelGates, accept_code  # noqa: E402
from tests.test_http import HttpServer  # noqa: E402
from tests.test_oauth import API_TOOLS, start_oauth_server  # noqa: E402

AGENTS = E2E / "agents"
__all__ = ["server"]  # a fixture, imported to be found here
TIMEOUT = 180  # seconds per agent command; a hung agent fails its test instead of CI
PLACEHOLDER = "/path/to/mcp-modelgates/.venv/bin/mcp-modelgates"
HOSTED = "https://mcp.example.com/mcp"
CALLBACK = "http://localhost:3000/callback"
CREATE = ("create_auth_code", {"callback_url": CALLBACK})
TOOLS = set(SPEC["expect"])


@pytest.fixture(scope="session")
def agents_bin() -> Path:
    # `npm install` from the lock rather than `npm ci`: opencode-ai names one optional package per
    # platform, and a registry that lacks some of them leaves them out of the lock, which `npm ci`
    # then refuses; `npm install` installs the locked versions and skips what the registry lacks.
    # The installed pins are checked either way.
    return install_pinned(AGENTS, "install")


@pytest.fixture(scope="module")
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as fake:
        accept_code(fake, "auth_code_e2e")
        yield fake


@pytest.fixture
def fresh_api(api: FakeModelGates) -> FakeModelGates:
    api.clear()
    return api


def assert_create_reached(api: FakeModelGates) -> None:
    """Exactly the call the model asked for reached ModelGates, with the server's key."""
    calls = [r for r in api.requests if r.path.endswith("/auth/keys/code")]
    assert len(calls) == 1, [r.path for r in api.requests]
    assert calls[0].method == "POST" and calls[0].json == CREATE[1]
    assert calls[0].headers.get("authorization") == f"Bearer {API_KEY}", "the server's key was not sent"


def offered_tools(model: ModelStandIn, prefix: str) -> set[str]:
    """The server's tools among those the agent offered its model, with the agent's prefix removed."""
    return {n.removeprefix(prefix) for n in model.offered() if n.startswith(prefix)}


# ---------------------------------------------------------------- the README's commands


def readme_command(prefix: str, marker: str, at_end: bool = False) -> list[str]:
    """The README's `prefix ...` command (in a code block or inline) that ends with `marker` if
    `at_end` (a hosted URL alone: a sign-in), else has it with more after it (a credential, a path)."""
    commands = re.findall(rf"(?m)(?:^|`)({re.escape(prefix)}[^`\n]*)", README)
    found = [c for c in commands if marker in c and c.endswith(marker) == at_end]
    assert len(found) == 1, f"the README should have one `{prefix}` command with {marker!r}: {found}"
    return shlex.split(found[0])


def stdio_argv(prefix: str, script: str, extra_env: dict[str, str]) -> list[str]:
    """The README's checkout-form stdio command for this agent, for the installed script: the test
    key instead of `sk-...`, and `extra_env` passed with the same flag the README uses for the key."""
    argv = readme_command(prefix, "/.venv/bin/")
    at = next(i for i, a in enumerate(argv) if a.startswith("MODELGATES_API_KEY="))
    flag = argv[at - 1]
    extra = [x for k, v in extra_env.items() for x in (flag, f"{k}={v}")]
    argv = [*argv[: at + 1], *extra, *argv[at + 1 :]]
    assert PLACEHOLDER in argv, argv
    return [a.replace(PLACEHOLDER, script).replace("sk-...", API_KEY) for a in argv]


def http_argv(prefix: str, server: HttpServer) -> list[str]:
    """The README's hosted-server command for this agent with a token, with this server's URL and token."""
    argv = readme_command(prefix, HOSTED)
    return [a.replace(HOSTED, server.url).replace("sk-...", TOKEN) for a in argv]


# ---------------------------------------------------------------- an agent's scratch world


@dataclass
class Agent:
    """One agent with its own HOME, XDG folders and project folder, and the pinned Node on PATH."""

    bin: Path
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def project(self) -> Path:
        return self.root / "project"

    def env(self, **more: str) -> dict[str, str]:
        drop = ("MODELGATES_", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_", "COPILOT_", "GH_", "GITHUB_", "OPENCODE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.startswith("XDG_")}
        env.update(
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            TMPDIR=str(self.root / "tmp"),
            NO_COLOR="1",
        )
        return {**env, **self.extra_env, **more}

    def __call__(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            env=self.env(**env),
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )


def new_agent(agents_bin: Path, root: Path, **extra_env: str) -> Agent:
    agent = Agent(agents_bin, root, extra_env)
    for folder in (agent.home, agent.project, root / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    return agent


def added(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, explain(proc)


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def play_browser(url: str) -> httpx.Response:
    """Open the approval page as the user's browser would; the stand-in approves at once and sends
    the browser back to the server's one-time listener on 127.0.0.1."""
    return httpx.get(url, follow_redirects=True, timeout=30)


# ---------------------------------------------------------------- signing in to OAuth mode


BROWSERS = (
    "xdg-open", "x-www-browser", "sensible-browser", "www-browser", "gio", "gnome-open", "kde-open",
    "chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "firefox",
)  # fmt: skip


def stand_in_browsers(folder: Path, agent: Agent) -> Path:
    """Commands an agent may start to open a link, each noting it in `folder/opened`, first on the
    agent's PATH and named by BROWSER: the test is the browser. xdg-open succeeds; had it failed,
    an agent would try the next way, so the others fail. (Without BROWSER, Codex finds the real
    Chromium through its desktop file, and Gemini CLI, when xdg-open fails, through PATH.)"""
    folder.mkdir()
    for name in BROWSERS:
        script = folder / name
        code = 0 if name == "xdg-open" else 1
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder / "opened"}"\nexit {code}\n')
        script.chmod(0o755)
    agent.extra_env.update(PATH=f"{folder}{os.pathsep}{agent.env()['PATH']}", BROWSER=str(folder / "xdg-open"))
    return folder / "opened"


def no_real_browser(agent: Agent) -> bool:
    return not (agent.home / ".config" / "chromium").exists()


@pytest.fixture
def oauth_server(fresh_api: FakeModelGates) -> Iterator[HttpServer]:
    """A server in OAuth mode on its own `localhost` URL, for one agent's sign-in."""
    server = start_oauth_server(fresh_api)
    try:
        yield server
    finally:
        assert server.stop() == 0
    assert not any(key in server.stderr for key in fresh_api.minted), "a minted key reached the server's log"


def check_signed_in_call(api: FakeModelGates, agent: Agent, opened: Path, link: str, shown: str) -> None:
    """One sign-in, and its user's own key on the call that reached ModelGates; the agent tried to
    open only the link (no real browser started), and the key is in none of its files or output."""
    (minted,) = api.minted
    assert upstream_keys(api) == [f"Bearer {minted}"]
    assert opened.read_text().splitlines() == [f"xdg-open {link}"] and no_real_browser(agent)
    assert holds_no_minted_key(agent.home, api) and minted not in shown


# ---------------------------------------------------------------- Codex CLI


CODEX_CONFIG = """\
# Offline: the stand-in as the only model provider; no apps, plugins or other remote features.
model = "stand-in"
model_provider = "stand-in"
approval_policy = "on-request"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[model_providers.stand-in]
name = "stand-in"
base_url = "{model}/v1"
wire_api = "responses"

[features]
apps = false
plugins = false
remote_plugin = false

[analytics]
enabled = false
"""


class CodexAppServer:
    """`codex app-server` driven over its JSON-RPC stdio protocol, as an IDE drives it. The test plays
    the user: it approves each tool call Codex asks about and, for a URL elicitation, opens the page
    in `browser` and accepts."""

    def __init__(self, agent: Agent, browser: Callable[[str], Any] = play_browser, **env: str) -> None:
        self.browser = browser
        self.opened: list[str] = []
        self.notes: list[dict[str, Any]] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next = 0
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [str(agent.bin / "codex"), "app-server"],
            env=agent.env(**env),
            cwd=agent.project,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"clientInfo": {"name": "mcp-modelgates-e2e", "version": "1"}, "capabilities": None})
        self._send({"jsonrpc": "2.0", "method": "initialized"})

    def __enter__(self) -> CodexAppServer:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "method" in message and "id" in message:
                self._answer(message)
            elif "method" in message:
                with self._changed:
                    self.notes.append(message)
                    self._changed.notify_all()
            else:
                self._answers.put(message)

    def _answer(self, request: dict[str, Any]) -> None:
        params = request.get("params", {})
        if request["method"] != "mcpServer/elicitation/request":
            error = {"code": -32601, "message": f"{request['method']} is not expected in this test"}
            self._send({"jsonrpc": "2.0", "id": request["id"], "error": error})
            return
        if params.get("mode") == "url":  # connect_account: open the page, as the user's browser
            self.opened.append(params["url"])
            threading.Thread(target=self.browser, args=(params["url"],), daemon=True).start()
            result = {"action": "accept", "content": None, "_meta": None}
        else:  # Codex asking the user to approve a tool call of the server
            assert params.get("_meta", {}).get("codex_approval_kind") == "mcp_tool_call", params
            result = {"action": "accept", "content": {}, "_meta": None}
        self._send({"jsonrpc": "2.0", "id": request["id"], "result": result})

    def request(self, method: str, params: dict[str, Any]) -> Any:
        self._next += 1
        self._send({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params})
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            answer = self._answers.get(timeout=left)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return answer["result"]
        raise AssertionError(f"no answer to {method}")

    def wait_for(self, test: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        with self._changed:
            found = self._changed.wait_for(lambda: next((n for n in self.notes if test(n)), None), TIMEOUT)
        assert found, f"no {what} from codex app-server; notes: {[n['method'] for n in self.notes][-20:]}"
        return found

    def start_thread(self) -> str:
        """A thread in the project folder, once its MCP servers have started."""
        thread: str = self.request("thread/start", {"cwd": None})["thread"]["id"]
        self.wait_for(
            lambda n: (
                n["method"] == "mcpServer/startupStatus/updated"
                and n["params"]["name"] == NAME
                and n["params"]["status"] != "starting"
            ),
            "startup status",
        )
        return thread

    def server_status(self, thread: str) -> dict[str, Any]:
        listed = self.request("mcpServerStatus/list", {"threadId": thread})["data"]
        (status,) = [s for s in listed if s["name"] == NAME]
        return dict(status)

    def turn(self, thread: str, text: str) -> list[dict[str, Any]]:
        """One user turn; the server's tool calls in it, as Codex reports them."""
        turn = self.request(
            "turn/start", {"threadId": thread, "input": [{"type": "text", "text": text, "text_elements": []}]}
        )
        turn_id = turn["turn"]["id"]
        self.wait_for(
            lambda n: n["method"] == "turn/completed" and n["params"]["turn"]["id"] == turn_id, "turn/completed"
        )
        return [
            n["params"]["item"]
            for n in self.notes
            if n["method"] == "item/completed"
            and n["params"].get("turnId") == turn_id
            and n["params"]["item"]["type"] == "mcpToolCall"
        ]


def new_codex(agents_bin: Path, root: Path, model: ModelStandIn) -> Agent:
    codex = new_agent(agents_bin, root)
    (codex.home / ".codex").mkdir()
    (codex.home / ".codex" / "config.toml").write_text(CODEX_CONFIG.format(model=model.url))
    return codex


def codex_entry(codex: Agent) -> dict[str, Any]:
    config = tomllib.loads((codex.home / ".codex" / "config.toml").read_text())
    return dict(config["mcp_servers"][NAME])


def check_codex_status(status: dict[str, Any]) -> None:
    assert status["runtimeStatus"] == "connected", status
    assert status["serverInfo"]["name"] == "mcp-modelgates"
    assert set(status["tools"]) == TOOLS, sorted(status["tools"])


def test_codex_stdio_connects_lists_the_tools_and_calls_one(
    agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path
) -> None:
    with ModelStandIn(calls=[CREATE]) as model:
        codex = new_codex(agents_bin, tmp_path, model)
        script = server_command()[0]
        added(codex(*stdio_argv("codex mcp add ", script, {"MODELGATES_BASE_URL": fresh_api.base_url})))
        # ~/.codex/config.toml holds what the README shows
        (block,) = [b for b in re.findall(r"```toml\n(.*?)```", README, re.S) if "[mcp_servers.modelgates]" in b]
        shown = tomllib.loads(block.replace(PLACEHOLDER, script).replace("sk-...", API_KEY))["mcp_servers"][NAME]
        entry = codex_entry(codex)
        assert entry["command"] == shown["command"] and shown["env"].items() <= entry["env"].items(), entry
        with CodexAppServer(codex) as app:
            thread = app.start_thread()
            check_codex_status(app.server_status(thread))
            (call,) = app.turn(thread, "Create a ModelGates authorization code for my callback.")
    assert (call["server"], call["tool"], call["status"]) == (NAME, "create_auth_code", "completed"), call
    assert call["result"]["structuredContent"]["data"]["app_id"] == 12345
    assert offered_tools(model, f"mcp__{NAME}__") == TOOLS, model.offered()
    assert "auth_code_" in model.results()[0]
    assert_create_reached(fresh_api)


def test_codex_over_http_with_the_readme_line(
    agents_bin: Path, fresh_api: FakeModelGates, server: HttpServer, tmp_path: Path
) -> None:
    with ModelStandIn(calls=[CREATE]) as model:
        codex = new_codex(agents_bin, tmp_path, model)
        argv = http_argv("codex mcp add ", server)
        added(codex(*argv))
        token_var = argv[argv.index("--bearer-token-env-var") + 1]
        assert codex_entry(codex) == {"url": server.url, "bearer_token_env_var": token_var}
        with CodexAppServer(codex, **{token_var: TOKEN}) as app:
            thread = app.start_thread()
            check_codex_status(app.server_status(thread))
            (call,) = app.turn(thread, "Create a ModelGates authorization code for my callback.")
    assert call["status"] == "completed", call
    assert offered_tools(model, f"mcp__{NAME}__") == TOOLS
    assert_create_reached(fresh_api)


def test_codex_signs_in_when_added_by_url_then_calls_with_the_users_key(
    agents_bin: Path, fresh_api: FakeModelGates, oauth_server: HttpServer, tmp_path: Path
) -> None:
    """The README's URL-only line: `codex mcp add` finds the sign-in and runs it at once."""
    with ModelStandIn(calls=[CREATE]) as model:
        codex = new_codex(agents_bin, tmp_path, model)
        opened = stand_in_browsers(tmp_path / "browsers", codex)
        url = f"http://localhost:{oauth_server.port}/mcp"
        argv = [a.replace(HOSTED, url) for a in readme_command("codex mcp add ", HOSTED, at_end=True)]
        with Terminal([str(codex.bin / argv[0]), *argv[1:]], codex.env(), codex.project) as term:
            assert term.wait_for(f"Authorize `{NAME}` by opening this URL", TIMEOUT), term.screen[-3000:]
            found = term.wait_for_match(rf"(http://localhost:{oauth_server.port}/authorize\?\S+)\r?\n", TIMEOUT)
            assert found is not None, term.screen[-3000:]  # the link's whole line
            final = anyio.run(approve, found.group(1))
            assert final.status == 200 and "Authentication complete" in final.text, (final.url, final.text[:300])
            assert term.wait_for("Successfully logged in", TIMEOUT), term.screen[-3000:]
        listed = codex("codex", "mcp", "list")
        assert re.search(rf"(?m)^{NAME}\s+{re.escape(url)}\s.*\bOAuth\s*$", listed.stdout), explain(listed)
        with CodexAppServer(codex) as app:
            thread = app.start_thread()
            status = app.server_status(thread)
            assert status["runtimeStatus"] == "connected" and set(status["tools"]) == set(API_TOOLS), status
            (call,) = app.turn(thread, "Create a ModelGates authorization code for my callback.")
    assert call["status"] == "completed", call
    assert (codex.home / ".codex" / ".credentials.json").is_file()  # where its tokens are
    check_signed_in_call(fresh_api, codex, opened, found.group(1), term.output)


def test_codex_connect_account_in_one_call_with_url_elicitation(
    agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path
) -> None:
    """Codex declares URL elicitation (2025-06-18): the server asks it to open the approval page,
    the test plays the browser, and the key lands in the project's .env without entering the turn."""
    with ModelStandIn(calls=[("connect_account", {})]) as model:
        codex = new_codex(agents_bin, tmp_path, model)
        script = server_command()[0]
        added(codex(*stdio_argv("codex mcp add ", script, {"MODELGATES_BASE_URL": fresh_api.base_url})))
        with CodexAppServer(codex) as app:
            thread = app.start_thread()
            (call,) = app.turn(thread, "Connect my ModelGates account.")
    assert [u.split("?")[0] for u in app.opened] == [f"{fresh_api.origin}/auth"], app.opened
    result = call["result"]["structuredContent"]
    env_file = codex.project / ".env"
    assert result["status"] == "connected" and result["saved_to"] == str(env_file), call
    (line,) = env_file.read_text().splitlines()
    name, key = line.split("=", 1)
    assert name == "MODELGATES_API_KEY" and key.startswith(KEY_PREFIX)
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert result["key_preview"].endswith(key[-4:])
    assert key not in json.dumps(call) and all(key not in r for r in model.results())
    assert [r.path for r in fresh_api.requests if r.method == "POST"] == ["/api/v1/auth/keys"]


# ---------------------------------------------------------------- Gemini CLI

GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "telemetry": {"enabled": False},
}


def new_gemini(agents_bin: Path, root: Path) -> Agent:
    # A trusted folder: elsewhere Gemini CLI shows the server as Disabled and starts nothing.
    gemini = new_agent(agents_bin, root, GEMINI_CLI_TRUST_WORKSPACE="true")
    (gemini.home / ".gemini").mkdir()
    (gemini.home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    return gemini


def gemini_connected(gemini: Agent) -> None:
    listed = gemini("gemini", "mcp", "list")
    line = next((ln for ln in plain(listed.stdout + listed.stderr).splitlines() if f"{NAME}:" in ln), "")
    assert listed.returncode == 0 and line.startswith(f"✓ {NAME}:") and line.endswith("Connected"), explain(listed)


def gemini_asks(gemini: Agent, model: ModelStandIn) -> subprocess.CompletedProcess[str]:
    """`gemini -p` asking for an authorization code, with the stand-in as its model."""
    # A fixed model: "auto" would first ask a router model, which the stand-in is not.
    return gemini(
        "gemini", "-m", "gemini-2.5-flash", "-p", "Create a ModelGates authorization code for my callback.",
        "--yolo", "--output-format", "stream-json",
        GEMINI_API_KEY="stand-in", GOOGLE_GEMINI_BASE_URL=model.url,
    )  # fmt: skip


def test_gemini_stdio_connects_lists_the_tools_and_calls_one(
    agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path
) -> None:
    gemini = new_gemini(agents_bin, tmp_path)
    script = server_command()[0]
    added(gemini(*stdio_argv("gemini mcp add ", script, {"MODELGATES_BASE_URL": fresh_api.base_url})))
    entry = json.loads((gemini.home / ".gemini" / "settings.json").read_text())["mcpServers"][NAME]
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", README, re.S) if '"args": []' in b]
    shown = json.loads(block.replace(PLACEHOLDER, script).replace("sk-...", API_KEY))["mcpServers"][NAME]
    assert (entry["command"], entry["args"]) == (shown["command"], shown["args"])
    assert shown["env"].items() <= entry["env"].items()
    gemini_connected(gemini)
    with ModelStandIn(calls=[CREATE]) as model:
        proc = gemini_asks(gemini, model)
    events = json_lines(proc.stdout)
    uses = [e for e in events if e.get("type") == "tool_use"]
    results = [e for e in events if e.get("type") == "tool_result"]
    assert proc.returncode == 0 and [u["tool_name"] for u in uses] == [f"mcp_{NAME}_create_auth_code"], explain(proc)
    assert [r["status"] for r in results] == ["success"] and "auth_code_" in results[0]["output"]
    assert offered_tools(model, f"mcp_{NAME}_") == TOOLS, model.offered()
    assert_create_reached(fresh_api)


def test_gemini_over_http_with_the_readme_line(agents_bin: Path, server: HttpServer, tmp_path: Path) -> None:
    gemini = new_gemini(agents_bin, tmp_path)
    added(gemini(*http_argv("gemini mcp add ", server)))
    entry = json.loads((gemini.home / ".gemini" / "settings.json").read_text())["mcpServers"][NAME]
    assert (entry["type"], entry["url"], entry["headers"]) == (
        "http",
        server.url,
        {"Authorization": f"Bearer {TOKEN}"},
    )
    gemini_connected(gemini)


# Gemini CLI signs in to a server only from its interactive screen: in `-p` it says the server
# "requires authentication using: /mcp auth NAME" and goes on without it.
def test_gemini_signs_in_with_mcp_auth_then_calls_with_the_users_key(
    agents_bin: Path, fresh_api: FakeModelGates, oauth_server: HttpServer, tmp_path: Path
) -> None:
    gemini = new_gemini(agents_bin, tmp_path)
    opened = stand_in_browsers(tmp_path / "browsers", gemini)
    url = f"http://localhost:{oauth_server.port}/mcp"
    argv = readme_command("gemini mcp add ", HOSTED, at_end=True)
    added(gemini(*[a.replace(HOSTED, url) for a in argv]))
    listed = gemini("gemini", "mcp", "list")
    assert f"✗ {NAME}: {url} (http) - Disconnected" in plain(listed.stdout + listed.stderr), explain(listed)

    screen = [str(agents_bin / "gemini"), "-m", "gemini-2.5-flash"]
    env = gemini.env(GEMINI_API_KEY="stand-in", GOOGLE_GEMINI_BASE_URL="http://127.0.0.1:9")  # no model needed
    for name in ("CI", "GITHUB_ACTIONS"):  # with either set, Gemini CLI runs headless: no screen to type in
        env.pop(name, None)
    with Terminal(screen, env, gemini.project, term="xterm-256color", size=(50, 200)) as term:
        assert term.wait_for("Type your message", TIMEOUT), term.screen[-3000:]
        mark = len(term.screen)
        term.send(f"/mcp auth {NAME}")
        term.read(1.5)  # typed at once, the command is not taken for the start of another
        for _ in range(3):  # an Enter may first complete the command in its suggestion list
            term.send("\r")
            if term.wait_for("Do you want to continue?", 10, since=mark):
                break
        else:
            pytest.fail(f"no consent question: {term.screen[-3000:]}")
        term.send("\r")  # Yes
        assert term.wait_for("Triple-click to select", TIMEOUT, since=mark), term.screen[-3000:]
        shown = term.screen[mark:]
        start = shown.index(f"http://localhost:{oauth_server.port}/authorize?")
        wrapped = shown[start : shown.index("TIP: Triple-click", start)]  # the link, across lines
        link = re.match(r"[!-~]+", re.sub(r"\s+", "", wrapped))
        assert link is not None, wrapped
        final = anyio.run(approve, link.group(0))
        assert final.status == 200 and "Authentication Successful" in final.text, (final.url, final.text[:300])
        authenticated = f"Successfully authenticated with MCP server '{NAME}'"
        assert term.wait_for(authenticated, TIMEOUT, since=mark), term.screen[-3000:]
    gemini_connected(gemini)
    with ModelStandIn(calls=[CREATE]) as model:
        proc = gemini_asks(gemini, model)
    results = [e for e in json_lines(proc.stdout) if e.get("type") == "tool_result"]
    assert proc.returncode == 0 and [r["status"] for r in results] == ["success"], explain(proc)
    assert offered_tools(model, f"mcp_{NAME}_") == set(API_TOOLS), model.offered()
    assert (gemini.home / ".gemini" / "mcp-oauth-tokens.json").is_file()  # where its tokens are
    check_signed_in_call(fresh_api, gemini, opened, link.group(0), term.output)


# ---------------------------------------------------------------- GitHub Copilot CLI


def new_copilot(agents_bin: Path, root: Path) -> Agent:
    return new_agent(agents_bin, root, COPILOT_OFFLINE="true", COPILOT_MODEL="stand-in")


def copilot_prompt(copilot: Agent, model: ModelStandIn, prompt: str) -> list[dict[str, Any]]:
    proc = copilot(
        "copilot", "-p", prompt, "--allow-all-tools", "--output-format", "json",
        COPILOT_PROVIDER_BASE_URL=f"{model.url}/v1",
    )  # fmt: skip
    events = json_lines(proc.stdout)
    assert proc.returncode == 0 and events, explain(proc)
    statuses = [e["data"]["status"] for e in events if e["type"] == "session.mcp_server_status_changed"]
    assert statuses[-1:] == ["connected"], statuses
    loaded = [e["data"] for e in events if e["type"] == "session.mcp_server_tools_loaded"]
    assert loaded == [{"serverName": NAME, "toolCount": len(TOOLS)}], loaded
    assert offered_tools(model, f"{NAME}-") == TOOLS, model.offered()
    return [e["data"] for e in events if e["type"] == "tool.execution_complete"]


def test_copilot_stdio_connects_lists_the_tools_and_calls_one(
    agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path
) -> None:
    copilot = new_copilot(agents_bin, tmp_path)
    added(copilot(*stdio_argv("copilot mcp add ", server_command()[0], {"MODELGATES_BASE_URL": fresh_api.base_url})))
    with ModelStandIn(calls=[CREATE]) as model:
        (done,) = copilot_prompt(copilot, model, "Create a ModelGates authorization code for my callback.")
    assert done["success"] is True and "auth_code_" in done["result"]["content"], done
    assert_create_reached(fresh_api)


def test_copilot_over_http_with_the_readme_line(
    agents_bin: Path, fresh_api: FakeModelGates, server: HttpServer, tmp_path: Path
) -> None:
    copilot = new_copilot(agents_bin, tmp_path)
    added(copilot(*http_argv("copilot mcp add ", server)))
    with ModelStandIn(calls=[CREATE]) as model:
        (done,) = copilot_prompt(copilot, model, "Create a ModelGates authorization code for my callback.")
    assert done["success"] is True and "auth_code_" in done["result"]["content"], done
    assert_create_reached(fresh_api)


# Copilot CLI 1.0.102 speaks 2026-07-28 and declares URL elicitation, but fails a tools/call answered
# with input_required ("expected CallToolResult from tools/call"), so the server gives it the link and
# a flow_id by its client name (account.NO_INPUT_REQUIRED_CLIENTS). A Copilot version that answers
# input_required can take the one-call path: drop it from that set and set this to True.
COPILOT_CONNECT_IN_ONE_CALL = False


def structured(text: str) -> dict[str, Any]:
    """The structured result Copilot appends to a tool result's text."""
    start = text.index("{")
    return dict(json.loads(text[start:]))


def test_copilot_connect_account_link_path(agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path) -> None:
    """The model calls connect_account; with the link it gets, the user (the test) approves in the
    browser, and the model calls again with the flow_id: the key is then in the project's .env."""
    opened: list[str] = []

    def approve_then_ask(result: str) -> dict[str, Any]:
        answer = structured(result)
        opened.append(answer["authorization_url"])
        assert play_browser(answer["authorization_url"]).status_code == 200
        return {"flow_id": answer["flow_id"]}

    calls: list[tuple[str, Any]] = [("connect_account", {})]
    if not COPILOT_CONNECT_IN_ONE_CALL:
        calls.append(("connect_account", approve_then_ask))
    copilot = new_copilot(agents_bin, tmp_path)
    added(copilot(*stdio_argv("copilot mcp add ", server_command()[0], {"MODELGATES_BASE_URL": fresh_api.base_url})))
    with ModelStandIn(calls=calls) as model:
        done = copilot_prompt(copilot, model, "Connect my ModelGates account.")
    answers = [structured(d["result"]["content"]) for d in done]
    env_file = copilot.project / ".env"
    if not COPILOT_CONNECT_IN_ONE_CALL:
        first = answers.pop(0)
        assert first["status"] == "waiting_for_approval" and first["flow_id"], first
        assert [u.split("?")[0] for u in opened] == [f"{fresh_api.origin}/auth"]
    (last,) = answers
    assert last["status"] == "connected" and last["saved_to"] == str(env_file), last
    (line,) = env_file.read_text().splitlines()
    key = line.removeprefix("MODELGATES_API_KEY=")
    assert key.startswith(KEY_PREFIX) and env_file.stat().st_mode & 0o777 == 0o600
    assert all(key not in r for r in model.results())


# ---------------------------------------------------------------- opencode

OPENCODE_OFFLINE = {  # no update check, model list, plugins, LSP downloads, sharing or other agents' files
    f"OPENCODE_DISABLE_{flag}": "1"
    for flag in (
        "AUTOUPDATE",
        "MODELS_FETCH",
        "DEFAULT_PLUGINS",
        "LSP_DOWNLOAD",
        "SHARE",
        "CLAUDE_CODE",
        "EXTERNAL_SKILLS",
    )
}


def new_opencode(agents_bin: Path, root: Path) -> Agent:
    return new_agent(agents_bin, root, **OPENCODE_OFFLINE)


def opencode_config(opencode: Agent) -> Path:
    return opencode.home / ".config" / "opencode" / "opencode.jsonc"


def opencode_connected(opencode: Agent) -> None:
    listed = opencode("opencode", "mcp", "list")
    assert listed.returncode == 0 and re.search(rf"✓ {NAME}\s+connected", plain(listed.stdout)), explain(listed)


def opencode_calls_create(opencode: Agent, model: ModelStandIn) -> None:
    """`opencode run` with the stand-in model as its provider: one call of create_auth_code."""
    config = json.loads(opencode_config(opencode).read_text())  # written by `mcp add`, without comments
    config["provider"] = {
        "stand-in": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "stand-in",
            "options": {"baseURL": f"{model.url}/v1", "apiKey": "stand-in"},
            "models": {"stand-in": {"name": "stand-in", "tool_call": True}},
        }
    }
    config.update(autoupdate=False, share="disabled")
    opencode_config(opencode).write_text(json.dumps(config))
    proc = opencode(
        "opencode", "run", "Create a ModelGates authorization code for my callback.",
        "--model", "stand-in/stand-in", "--format", "json",
    )  # fmt: skip
    uses = [e["part"] for e in json_lines(proc.stdout) if e.get("type") == "tool_use"]
    assert proc.returncode == 0 and [u["tool"] for u in uses] == [f"{NAME}_create_auth_code"], explain(proc)
    assert uses[0]["state"]["status"] == "completed" and "auth_code_" in uses[0]["state"]["output"]


def test_opencode_stdio_connects_lists_the_tools_and_calls_one(
    agents_bin: Path, fresh_api: FakeModelGates, tmp_path: Path
) -> None:
    opencode = new_opencode(agents_bin, tmp_path)
    script = server_command()[0]
    added(opencode(*stdio_argv("opencode mcp add ", script, {"MODELGATES_BASE_URL": fresh_api.base_url})))
    config = json.loads(opencode_config(opencode).read_text())  # written by `mcp add`, without comments
    entry = config["mcp"][NAME]
    assert (entry["type"], entry["command"], entry["environment"]["MODELGATES_API_KEY"]) == ("local", [script], API_KEY)
    opencode_connected(opencode)
    with ModelStandIn(calls=[CREATE]) as model:
        opencode_calls_create(opencode, model)
    assert offered_tools(model, f"{NAME}_") == TOOLS, model.offered()
    assert_create_reached(fresh_api)


def test_opencode_over_http_with_the_readme_line(agents_bin: Path, server: HttpServer, tmp_path: Path) -> None:
    opencode = new_opencode(agents_bin, tmp_path)
    added(opencode(*http_argv("opencode mcp add ", server)))
    entry = json.loads(opencode_config(opencode).read_text())["mcp"][NAME]
    assert (entry["type"], entry["url"]) == ("remote", server.url), entry
    opencode_connected(opencode)


def test_opencode_signs_in_with_mcp_auth_then_calls_with_the_users_key(
    agents_bin: Path, fresh_api: FakeModelGates, oauth_server: HttpServer, tmp_path: Path
) -> None:
    opencode = new_opencode(agents_bin, tmp_path)
    opened = stand_in_browsers(tmp_path / "browsers", opencode)
    url = f"http://localhost:{oauth_server.port}/mcp"
    added(opencode(*[a.replace(HOSTED, url) for a in readme_command("opencode mcp add ", HOSTED, at_end=True)]))
    listed = opencode("opencode", "mcp", "list")
    assert f"⚠ {NAME} needs authentication" in plain(listed.stdout), explain(listed)
    with Terminal([str(opencode.bin / "opencode"), "mcp", "auth", NAME], opencode.env(), opencode.project) as term:
        found = term.wait_for_match(rf"(http://localhost:{oauth_server.port}/authorize\?\S+)\r?\n", TIMEOUT)
        assert found is not None, term.screen[-3000:]  # the link's whole line
        final = anyio.run(approve, found.group(1))
        assert final.status == 200, (final.url, final.text[:300])
        assert term.wait_for("Authentication successful", TIMEOUT), term.screen[-3000:]
    opencode_connected(opencode)
    with ModelStandIn(calls=[CREATE]) as model:
        opencode_calls_create(opencode, model)
    assert offered_tools(model, f"{NAME}_") == set(API_TOOLS), model.offered()
    check_signed_in_call(fresh_api, opencode, opened, found.group(1), term.output)
