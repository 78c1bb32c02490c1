"""Third-party MCP clients against the installed console script, over stdio, as users run it.

The MCP Inspector CLI, the official TypeScript SDK client (ts_client.mjs beside this file) and
Claude Code are pinned in package.json + package-lock.json here and installed once into
node_modules/ by `npm ci`, with the Node 22 they need (the npm package `node`), whatever Node the
machine has. The lock is npm's own output (`npm install --package-lock-only`), never edited by hand.
The server talks to the in-process ModelGates stand-in on 127.0.0.1. spec.json says what every
client must see; it also drives ../shared/realclients/run_real_clients.sh. Where npm is missing,
this module is skipped, with one line in the summary; any other install failure fails its tests.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, ROOT, server_command
from tests.fake_api import FakeModelGates, accept_code

if shutil.which("npm") is None:  # one skip for the whole module: one line in the summary
    pytest.skip(
        "npm not found: real-client e2e tests (Inspector, TypeScript SDK, Claude Code) not run",
        allow_module_level=True,
    )

E2E = Path(__file__).resolve().parent
SPEC: dict[str, Any] = json.loads((E2E / "spec.json").read_text())
ACCEPTED_CODE = "auth_code_e2e"  # the code spec.json exchanges successfully
NAME = "modelgates"
TIMEOUT = 120  # seconds per client command; a hung client fails its test instead of CI


PINNED = json.loads((E2E / "package.json").read_text())["dependencies"]  # name -> exact version


def _pins_digest(folder: Path) -> str:
    return hashlib.sha256(
        b"".join((folder / f).read_bytes() for f in ("package.json", "package-lock.json"))
    ).hexdigest()


def lock_disagreements(package: dict[str, Any], lock: dict[str, Any]) -> list[str]:
    """Each client package.json pins at a version the lock does not also pin, in one sentence."""
    root = lock.get("packages", {}).get("", {}).get("dependencies", {})
    problems = []
    for name, pin in package["dependencies"].items():
        locked = lock.get("packages", {}).get(f"node_modules/{name}", {}).get("version")
        if root.get(name) != pin or locked != pin:
            problems.append(f"package.json pins {name} {pin}, but package-lock.json has {locked or 'no entry'}")
    return problems


def installed_disagreements(node_modules: Path, pins: dict[str, str]) -> list[str]:
    """Each pinned client whose installed version (read from what npm installed) is not its pin."""
    problems = []
    for name, pin in pins.items():
        manifest = node_modules / name / "package.json"
        got = json.loads(manifest.read_text()).get("version") if manifest.exists() else None
        if got != pin:
            problems.append(f"{name} {pin} is pinned, but {got or 'nothing'} is installed")
    return problems


def install_pinned(folder: Path, command: str = "ci") -> Path:
    """folder/node_modules/.bin, installed by npm from the folder's lock unless already installed from it.

    `npm ci` installs exactly what the lock names and never writes the lock. Whatever a registry
    adds or drops later (say, another platform's optional dependency of a dependency) cannot move
    a locked version; and what is checked afterwards is what matters: the installed versions of
    the pinned clients and Node, read from node_modules itself. (`command` "install" is for a lock
    that cannot name every platform's optional package; see tests/e2e/agents.)"""
    npm = shutil.which("npm")
    assert npm is not None
    lock_path = folder / "package-lock.json"
    package = json.loads((folder / "package.json").read_text())
    pins: dict[str, str] = package["dependencies"]
    problems = lock_disagreements(package, json.loads(lock_path.read_text()))
    if problems:
        pytest.fail(
            "; ".join(problems) + f". Regenerate the lock: cd {folder} && npm install --package-lock-only",
            pytrace=False,
        )
    digest = _pins_digest(folder)
    stamp = folder / "node_modules" / ".installed-from"
    # Another pytest run in this tree may be installing at the same moment.
    lock_file = (
        Path(tempfile.gettempdir()) / f"mcp-modelgates-e2e-{hashlib.sha256(bytes(folder)).hexdigest()[:12]}.lock"
    )
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = stamp.exists() and stamp.read_text() == digest
        if not (installed and not installed_disagreements(folder / "node_modules", pins)):
            pinned = lock_path.read_bytes()
            proc = subprocess.run(
                [npm, command, "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if lock_path.read_bytes() != pinned:  # never expected of npm here; the tracked file stays as it was
                lock_path.write_bytes(pinned)
            if proc.returncode != 0:
                pytest.fail(
                    f"npm {command} in {folder} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", pytrace=False
                )
            stamp.write_text(digest)
    problems = installed_disagreements(folder / "node_modules", pins)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    bin_dir = folder / "node_modules" / ".bin"
    version = subprocess.run([str(bin_dir / "node"), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"v{pins['node']}", f"{bin_dir}/node is {version.strip()}"
    return bin_dir


@pytest.fixture(scope="session")
def node_bin() -> Path:
    """tests/e2e/node_modules/.bin: the Inspector, the TypeScript SDK and Claude Code, from the lock."""
    return install_pinned(E2E)


@pytest.fixture(scope="module")
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as fake:
        accept_code(fake, ACCEPTED_CODE)
        yield fake


@pytest.fixture(scope="module")
def server_env(api: FakeModelGates, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # connect_account's workspace: the clients start the server in a folder of their choosing.
    workspace = str(tmp_path_factory.mktemp("workspace"))
    return {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": api.base_url, "MODELGATES_WORKSPACE": workspace}


@pytest.fixture(scope="module")
def script() -> str:
    return server_command()[0]


def client_env(node_bin: Path, scratch: Path) -> dict[str, str]:
    """The clients' environment: the pinned Node first on PATH, nothing of ours or Anthropic's,
    and Claude Code's telemetry, error reporting, update checks and other traffic off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATES_", "ANTHROPIC_", "CLAUDE_"))}
    env["PATH"] = f"{node_bin}{os.pathsep}{env.get('PATH', '')}"
    env["MCP_CATALOG_PATH"] = str(scratch / "inspector-catalog.json")  # never ~/.mcp-inspector
    env.update(
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
    )
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"


# ---------------------------------------------------------------- MCP Inspector CLI


@dataclass
class Inspector:
    node_bin: Path
    env: dict[str, str]
    script: str

    def __call__(self, server_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.node_bin / "mcp-inspector"), "--cli"]
        for key, value in server_env.items():
            argv += ["-e", f"{key}={value}"]
        return run([*argv, *args, "--", self.script], self.env)


@pytest.fixture(scope="module")
def inspector(node_bin: Path, script: str, tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    return Inspector(node_bin, client_env(node_bin, tmp_path_factory.mktemp("inspector")), script)


def check_tool_list(tools: list[dict[str, Any]]) -> None:
    """The tools and properties spec.json expects; every tool with an object outputSchema."""
    by_name = {t["name"]: t for t in tools}
    assert set(by_name) == set(SPEC["expect"]), f"tools listed: {sorted(by_name)}"
    for name, tool in by_name.items():
        assert tool["inputSchema"]["type"] == "object"
        assert set(SPEC["expect"][name]) <= set(tool["inputSchema"].get("properties", {})), name
        assert set(SPEC["require"].get(name, [])) <= set(tool["inputSchema"].get("required", [])), name
        assert tool.get("outputSchema", {}).get("type") == "object", f"{name} has no object outputSchema"
        assert set(SPEC["outputs"][name]) <= set(tool["outputSchema"].get("properties", {})), name


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_lists_the_tools_in_both_protocol_eras(
    inspector: Inspector, server_env: dict[str, str], era: str
) -> None:
    proc = inspector(server_env, "--protocol-era", era, "--method", "tools/list")
    assert proc.returncode == 0, explain(proc)
    check_tool_list(json.loads(proc.stdout)["tools"])


def test_inspector_strict_schema_lint_is_clean(inspector: Inspector, server_env: dict[str, str]) -> None:
    proc = inspector(server_env, "--strict", "--format", "json", "--method", "tools/list")
    # exit 6: error-severity portability problems; schemaFindings also lists warnings
    assert proc.returncode == 0, explain(proc)
    envelope = json.loads(proc.stdout)
    assert envelope.get("schemaFindings", []) == [], envelope["schemaFindings"]
    check_tool_list(envelope["result"]["tools"])


@pytest.mark.parametrize(
    "call",
    SPEC["calls"],
    ids=[f"{i}-{c['tool']}{'-error' if c.get('expectError') else ''}" for i, c in enumerate(SPEC["calls"])],
)
def test_inspector_calls_each_tool(inspector: Inspector, server_env: dict[str, str], call: dict[str, Any]) -> None:
    # values JSON-encoded: the Inspector JSON-parses each --tool-arg value (limit=100 is a number)
    tool_args = [f"{k}={json.dumps(v)}" for k, v in call["args"].items()]
    proc = inspector(server_env, "--method", "tools/call", "--tool-name", call["tool"], "--tool-arg", *tool_args)
    if call.get("expectError"):
        # exit 5: the tool answered isError:true; the result is still printed on stdout
        assert proc.returncode == 5, explain(proc)
        result = json.loads(proc.stdout)
        assert result["isError"] is True
        assert call["expectErrorText"] in result["content"][0]["text"]
    else:
        assert proc.returncode == 0, explain(proc)
        result = json.loads(proc.stdout)
        assert result.get("isError") is False and result["content"][0]["text"]
        assert subset(call["expectStructured"], result["structuredContent"]), result["structuredContent"]
        for key in call.get("expectKeys", []):
            assert isinstance(result["structuredContent"].get(key), str) and result["structuredContent"][key], key


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"MODELGATES_API_KEY": None}, "MODELGATES_API_KEY is not set"),
        ({"MODELGATES_API_KEY": "sk-not-the-key"}, "HTTP 401 Unauthorized"),
        ({"MODELGATES_BASE_URL": "http://127.0.0.1:9/api/v1", "MODELGATES_MAX_RETRIES": "0"}, "connection refused"),
    ],
    ids=["no-key", "wrong-key", "refused"],
)
def test_inspector_shows_configuration_errors_as_tool_errors(
    inspector: Inspector, server_env: dict[str, str], settings: dict[str, str | None], message: str
) -> None:
    env = {k: v for k, v in {**server_env, **settings}.items() if v is not None}
    proc = inspector(
        env,
        "--method",
        "tools/call",
        "--tool-name",
        "create_auth_code",
        "--tool-arg",
        'callback_url="http://localhost:3000/cb"',
    )
    assert proc.returncode == 5, explain(proc)
    assert message in json.loads(proc.stdout)["content"][0]["text"]


def subset(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(subset(v, got.get(k)) for k, v in want.items())
    return bool(want == got)


# ---------------------------------------------------------------- TypeScript SDK client


@pytest.fixture(scope="module")
def ts_report(
    node_bin: Path, script: str, server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    env_args = [a for k, v in server_env.items() for a in ("--env", f"{k}={v}")]
    argv = [
        str(node_bin / "node"),
        str(E2E / "ts_client.mjs"),
        "--spec",
        str(E2E / "spec.json"),
        *env_args,
        "--",
        script,
    ]
    proc = run(argv, client_env(node_bin, tmp_path_factory.mktemp("ts")))
    assert proc.returncode in (0, 1), explain(proc)  # 0/1: a report; anything else: the client broke
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def failed(report: dict[str, Any], pattern: str) -> list[dict[str, Any]]:
    matching = [c for c in report["checks"] if re.search(pattern, c["name"])]
    assert matching, f"no TypeScript client check matches {pattern!r}"
    return [c for c in matching if not c["ok"]]


def test_ts_sdk_client_connects_and_lists_the_tools(ts_report: dict[str, Any]) -> None:
    assert failed(ts_report, r"^(initialize|tools/list|session)$|: listed$") == [], ts_report["stderrTail"]
    assert ts_report["serverInfo"]["name"] == "mcp-modelgates"


def test_ts_sdk_every_input_and_output_schema_compiles_with_ajv(ts_report: dict[str, Any]) -> None:
    assert failed(ts_report, r": (input|output)Schema|has an object outputSchema") == []


def test_ts_sdk_structured_content_validates_against_the_output_schema(ts_report: dict[str, Any]) -> None:
    assert failed(ts_report, r"structuredContent") == []


def test_ts_sdk_every_spec_call_succeeds_or_fails_as_expected(ts_report: dict[str, Any]) -> None:
    assert failed(ts_report, r"^call #") == []
    assert ts_report["ok"], [c for c in ts_report["checks"] if not c["ok"]]


# ---------------------------------------------------------------- Claude Code


@dataclass
class Claude:
    """`claude` with a scratch HOME and project folder; in a loopback-only network namespace where
    one can be made, so that nothing it might try to reach leaves the machine."""

    node_bin: Path
    env: dict[str, str]
    home: Path
    project: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(self.node_bin / "claude"), *args]
        if _netns():
            argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up >/dev/null 2>&1; exec "$@"', "sh", *argv]
        return run(argv, {**self.env, "HOME": str(self.home), **(env or {})}, cwd=self.project)

    def approve(self, name: str) -> None:
        # Claude Code starts a project (.mcp.json) server only once approved; a user does that at
        # the trust prompt, a headless run through the user settings.
        settings = self.home / ".claude" / "settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"enabledMcpjsonServers": [name]}))


@functools.cache
def _netns() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    )


def new_claude(node_bin: Path, root: Path) -> Claude:
    home, project = root / "home", root / "project"
    home.mkdir()
    project.mkdir()
    return Claude(node_bin, client_env(node_bin, root), home, project)


@pytest.fixture(scope="module")
def claude(node_bin: Path, script: str, server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Claude:
    """A project with the server added the way a team shares it: `claude mcp add --scope project`."""
    cc = new_claude(node_bin, tmp_path_factory.mktemp("claude"))
    env_args = [a for k, v in server_env.items() for a in ("-e", f"{k}={v}")]
    proc = cc("mcp", "add", "--scope", "project", NAME, *env_args, "--", script)
    assert proc.returncode == 0, explain(proc)
    entry = json.loads((cc.project / ".mcp.json").read_text())["mcpServers"][NAME]
    assert (entry["type"], entry["command"], entry["env"]) == ("stdio", script, server_env)
    cc.approve(NAME)
    return cc


def test_claude_mcp_list_reports_connected(claude: Claude) -> None:
    proc = claude("mcp", "list")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"{NAME}: ")), "")
    assert proc.returncode == 0 and "✔ Connected" in line, explain(proc)


def test_claude_mcp_get_reports_connected(claude: Claude) -> None:
    proc = claude("mcp", "get", NAME)
    assert proc.returncode == 0 and re.search(r"Status: ✔ Connected", proc.stdout), explain(proc)


def test_claude_print_mode_registers_both_api_tools(claude: Claude) -> None:
    # No credentials: the session connects the servers, emits its init event, then stops at
    # "Not logged in" before any model request.
    proc = claude(
        "-p", "list your tools",
        "--mcp-config", str(claude.project / ".mcp.json"), "--strict-mcp-config",
        "--output-format", "stream-json", "--verbose",
    )  # fmt: skip
    events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    init = next((e for e in events if e.get("type") == "system" and e.get("subtype") == "init"), None)
    assert init is not None, explain(proc)
    assert {"name": NAME, "status": "connected"} in [
        {k: s.get(k) for k in ("name", "status")} for s in init["mcp_servers"]
    ]
    assert {
        f"mcp__{NAME}__create_auth_code",
        f"mcp__{NAME}__exchange_auth_code",
        f"mcp__{NAME}__connect_account",
    } <= set(init["tools"])


# ---------------------------------------------------------------- the README's Claude Code set-up, as written

README = (ROOT / "README.md").read_text()


def test_readme_claude_mcp_add_command_registers_the_server(node_bin: Path, script: str, tmp_path: Path) -> None:
    line = next(ln for ln in README.splitlines() if ln.startswith("claude mcp add "))
    argv = shlex.split(line)
    dashes = argv.index("--")
    assert argv[dashes + 1 :] == ["uvx", "mcp-modelgates"]
    # the installed script instead of the published package; a test key instead of the placeholder
    argv = [a.replace("sk-...", "sk-readme-check") for a in argv[1:dashes]] + ["--", script]
    cc = new_claude(node_bin, tmp_path)
    proc = cc(*argv)
    assert proc.returncode == 0, explain(proc)
    config = json.loads((cc.home / ".claude.json").read_text())
    (entry,) = [p["mcpServers"] for p in config["projects"].values() if p.get("mcpServers")]
    assert entry == {
        NAME: {"type": "stdio", "command": script, "args": [], "env": {"MODELGATES_API_KEY": "sk-readme-check"}}
    }
    proc = cc("mcp", "get", NAME)
    assert "Status: ✔ Connected" in proc.stdout, explain(proc)


def test_readme_project_mcp_json_connects_and_expands_the_key(node_bin: Path, script: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```json\n(.*?)```", README, re.S)
    (shared,) = [json.loads(b) for b in blocks if '"${MODELGATES_API_KEY}"' in b]
    entry = shared["mcpServers"][NAME]
    assert (entry["command"], entry["args"]) == ("uvx", ["mcp-modelgates"])
    entry.update(command=script, args=[])
    cc = new_claude(node_bin, tmp_path)
    (cc.project / ".mcp.json").write_text(json.dumps(shared))
    cc.approve(NAME)

    unset = cc("mcp", "list")
    assert "Missing environment variables: MODELGATES_API_KEY" in unset.stdout, explain(unset)
    proc = cc("mcp", "list", env={"MODELGATES_API_KEY": "sk-readme-check"})
    assert f"{NAME}: " in proc.stdout and "✔ Connected" in proc.stdout, explain(proc)
    assert "Missing environment variables" not in proc.stdout, explain(proc)


def test_readme_checkout_form_connects_in_claude_code(node_bin: Path, tmp_path: Path) -> None:
    """The README's set-up from a checkout: the checkout's own .venv script by absolute path."""
    line = next(ln for ln in README.splitlines() if ln.startswith("claude mcp add ") and "/.venv/bin/" in ln)
    argv = shlex.split(line)
    placeholder = argv[argv.index("--") + 1]
    assert placeholder == "/path/to/mcp-modelgates/.venv/bin/mcp-modelgates"
    script = ROOT / placeholder.removeprefix("/path/to/mcp-modelgates/")
    if not script.exists():
        pytest.skip(f"{script} is not installed: the README's set-up command makes it")
    argv = [a.replace("sk-...", "sk-readme-check").replace(placeholder, str(script)) for a in argv[1:]]
    cc = new_claude(node_bin, tmp_path)
    proc = cc(*argv)
    assert proc.returncode == 0, explain(proc)
    proc = cc("mcp", "list")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"{NAME}: ")), "")
    assert str(script) in line and "✔ Connected" in line, explain(proc)


def test_pin_checks_name_a_moved_client_and_ignore_foreign_optional_entries(tmp_path: Path) -> None:
    package = json.loads((E2E / "package.json").read_text())
    lock = json.loads((E2E / "package-lock.json").read_text())
    assert lock_disagreements(package, lock) == []
    # the registry serving one more optional dependency for another platform changes nothing
    lock["packages"]["node_modules/foreign-optional"] = {"version": "1.0.0", "optional": True, "os": ["win32"]}
    assert lock_disagreements(package, lock) == []
    moved = {**package, "dependencies": {**package["dependencies"], "@modelcontextprotocol/sdk": "1.32.3"}}
    assert lock_disagreements(moved, lock) == [
        "package.json pins @modelcontextprotocol/sdk 1.32.3, but package-lock.json has 1.32.2"
    ]
    tree = tmp_path / "node_modules"
    for name, pin in PINNED.items():
        (tree / name).mkdir(parents=True)
        (tree / name / "package.json").write_text(json.dumps({"name": name, "version": pin}))
    (tree / "foreign-optional").mkdir()
    assert installed_disagreements(tree, PINNED) == []
    (tree / "node" / "package.json").write_text(json.dumps({"name": "node", "version": "20.0.0"}))
    assert installed_disagreements(tree, PINNED) == [f"node {PINNED['node']} is pinned, but 20.0.0 is installed"]
