"""The official MCP conformance suite against `mcp-modelgates --transport http`, in each key mode.

`@modelcontextprotocol/conformance` (pinned in tests/e2e/agents/package.json, with the agents:
MODELGATES_E2E_AGENTS=1) runs the server scenarios each protocol revision requires
(`--requirements 2025-11-25` and `--requirements 2026-07-28`, both of which the server speaks),
plus the pending and extension scenarios it reports beside them. Every scenario the suite knows is
classified below: APPLICABLE ones must pass every check (SUCCESS, INFO, or SKIPPED by the suite's
own judgement), except the checks listed with a reason; NOT_APPLICABLE ones need the reference
"everything" server's fixture tools, resources, prompts or capabilities, and say which. A scenario
in neither list (say, one a newer suite adds) fails the test until someone classifies it.

The suite sends no Authorization header of its own, so a small forwarding proxy on 127.0.0.1 adds
the key mode's header to each request, as a client configured with that header would, and changes
nothing else (Host and Origin pass through, so the DNS-rebinding scenario still reaches the
server's checks). In OAuth mode (MODELGATES_AUTH=oauth) that header is an access token the server
issued: the test browser (tests/browser.py) signs in once, through the consent page and the
ModelGates stand-in, before the suite runs. A new key mode is one more KEY_MODES entry.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import API_KEY
from tests.e2e.test_coding_agents import agents_bin  # the switch, and the install of the larger set
from tests.e2e.test_real_clients import explain
from tests.fake_api import FakeModelGates
from tests.test_http import HttpServer, free_port, start_server
from tests.test_oauth import oauth_env, tokens_for

__all__ = ["agents_bin"]  # a fixture, imported to be found here

TOKEN = "tok-e2e-conformance-8e2f4a6c1b3d5e7f"
REQUIREMENTS = ("2025-11-25", "2026-07-28")


@dataclass(frozen=True)
class KeyMode:
    env: Callable[[FakeModelGates, int], dict[str, str]]  # the server's settings, given its port
    authorization: Callable[[HttpServer], str]  # what each request carries, once the server runs


def signed_in(server: HttpServer) -> str:
    """Sign in once as a user would (register, consent, ModelGates, callback, /token): the access token."""
    _, tokens = anyio.run(tokens_for, server)
    return f"Bearer {tokens['access_token']}"


KEY_MODES = {
    "shared-key-with-token": KeyMode(
        lambda api, port: {
            "MODELGATES_API_KEY": API_KEY,
            "MODELGATES_BASE_URL": api.base_url,
            "MODELGATES_HTTP_TOKEN": TOKEN,
        },
        lambda server: f"Bearer {TOKEN}",
    ),
    "per-caller-keys": KeyMode(
        lambda api, port: {"MODELGATES_KEY_FROM_CLIENT": "1", "MODELGATES_BASE_URL": api.base_url},
        lambda server: f"Bearer {API_KEY}",
    ),
    "oauth-sign-in": KeyMode(lambda api, port: oauth_env(api, f"http://localhost:{port}", level="INFO"), signed_in),
}

STATELESS = "the server is stateless by design (no Mcp-Session-Id), which the suite reports as a warning"
NO_RESOURCES = "the server declares no resources"
APPLICABLE: dict[str, dict[str, str]] = {  # scenario -> checks that do not apply, with the reason
    "server-initialize": {},
    "ping": {},
    "tools-list": {},
    "prompts-list": {},
    "dns-rebinding-protection": {},  # with MODELGATES_ALLOWED_ORIGINS holding the loopback origin it sends
    "http-header-validation": {},
    "server-session-lifecycle": {},
    "server-sse-multiple-streams": {"server-sse-multiple-streams-session": STATELESS},
    "server-sse-polling": {"server-sse-polling-session": STATELESS},
    "server-stateless": {
        "sep-2575-server-rejects-undeclared-capability": "needs the fixture tool test_missing_capability",
        "sep-2575-missing-capability-http-400": "needs the fixture tool test_missing_capability",
        "sep-2575-http-server-no-independent-requests-on-stream": "needs the fixture tool test_streaming_elicitation",
        "sep-2575-server-no-log-without-loglevel": "needs the fixture tool test_logging_tool",
    },
    "caching": {
        "sep-2549-resources-list-caching-hints": NO_RESOURCES,
        "sep-2549-resources-templates-list-caching-hints": NO_RESOURCES,
    },
}

FIXTURE_TOOL = "calls a fixture tool of the reference server, which this server does not have"
FIXTURE_PROMPT = "gets a fixture prompt of the reference server; this server's one prompt is listed by prompts-list"
NOT_APPLICABLE: dict[str, str] = {
    "logging-set-level": "the server declares no logging capability",
    "completion-complete": "the server declares no completions capability",
    "tools-call-simple-text": FIXTURE_TOOL,
    "tools-call-image": FIXTURE_TOOL,
    "tools-call-audio": FIXTURE_TOOL,
    "tools-call-embedded-resource": FIXTURE_TOOL,
    "tools-call-mixed-content": FIXTURE_TOOL,
    "tools-call-with-logging": FIXTURE_TOOL,
    "tools-call-error": FIXTURE_TOOL,
    "tools-call-with-progress": FIXTURE_TOOL,
    "tools-call-sampling": FIXTURE_TOOL,
    "tools-call-elicitation": FIXTURE_TOOL,
    "elicitation-sep1034-defaults": FIXTURE_TOOL,
    "elicitation-sep1330-enums": FIXTURE_TOOL,
    "json-schema-2020-12": FIXTURE_TOOL,
    "resources-list": NO_RESOURCES,
    "resources-read-text": NO_RESOURCES,
    "resources-read-binary": NO_RESOURCES,
    "resources-templates-read": NO_RESOURCES,
    "resources-subscribe": NO_RESOURCES,
    "resources-unsubscribe": NO_RESOURCES,
    "sep-2164-resource-not-found": NO_RESOURCES,
    "prompts-get-simple": FIXTURE_PROMPT,
    "prompts-get-with-args": FIXTURE_PROMPT,
    "prompts-get-embedded-resource": FIXTURE_PROMPT,
    "prompts-get-with-image": FIXTURE_PROMPT,
    "http-custom-header-server-validation": "needs tools with x-mcp-header annotations; this server has none",
    **{
        f"input-required-result-{case}": "drives the reference server's test_input_required_result_* tools; "
        "this server asks for input only in connect_account, which the suite cannot approve"
        for case in (
            "basic-elicitation",
            "basic-sampling",
            "basic-list-roots",
            "request-state",
            "multiple-input-requests",
            "multi-round",
            "missing-input-response",
            "non-tool-request",
            "result-type",
            "unsupported-methods",
            "tampered-state",
            "capability-check",
            "ignore-extra-params",
            "validate-input",
        )
    },
    **{
        f"tasks-{case}": "the tasks extension, which the server does not declare"
        for case in (
            "lifecycle",
            "capability-negotiation",
            "wire-fields",
            "request-state-removal",
            "mrtr-input",
            "request-headers",
            "dispatch-and-envelope",
            "status-notifications",
            "required-task-error",
            "mrtr-composition",
        )
    },
    **{
        f"sep-2640-skills-{case}": "the skills extension, which the server does not serve"
        for case in ("directory", "enumeration", "manifest")
    },
}
PASSING = {"SUCCESS", "INFO", "SKIPPED"}


# ---------------------------------------------------------------- the header-adding proxy

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class AuthProxy:
    """Forwards each request on 127.0.0.1 to the server with `authorization` added, otherwise as sent."""

    def __init__(self) -> None:
        self.authorization = ""
        self.upstream = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> AuthProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="auth-proxy").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        proxy: AuthProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        headers["Authorization"] = proxy.authorization
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_HEAD = _forward


# ---------------------------------------------------------------- running the suite


def scenario_of(result_dir: str) -> str:
    """`server-<scenario>-<ISO timestamp>` -> scenario."""
    found = re.fullmatch(r"server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z", result_dir)
    assert found, result_dir
    return found.group(1)


def known_scenarios(agents_bin: Path) -> set[str]:
    """Every server scenario this version of the suite lists."""
    proc = subprocess.run(
        [str(agents_bin / "node"), str(agents_bin / "conformance"), "list", "--server"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    return set(re.findall(r"(?m)^\s+- ([a-z0-9-]+)", proc.stdout))


def unclassified(scenarios: set[str]) -> set[str]:
    return scenarios - set(APPLICABLE) - set(NOT_APPLICABLE)


def failures(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each check of an applicable scenario that did not pass and is not listed as not applying."""
    bad = []
    for scenario, checks in sorted(results.items()):
        if scenario not in APPLICABLE:
            continue
        for check in checks:
            if check["status"] not in PASSING and check["id"] not in APPLICABLE[scenario]:
                detail = check.get("errorMessage") or json.dumps(check.get("details"))[:300]
                bad.append(f"{scenario}: {check['id']} {check['status']}: {detail}")
    return bad


def run_suite(agents_bin: Path, url: str, revision: str, out: Path) -> dict[str, list[dict[str, Any]]]:
    """scenario -> its checks, for every scenario the suite ran for this revision."""
    proc = subprocess.run(
        [str(agents_bin / "node"), str(agents_bin / "conformance"), "server", "--url", url,
         "--requirements", revision, "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # exit 1: some scenario failed; judged below, scenario by scenario
    assert proc.returncode in (0, 1), explain(proc)
    results = {scenario_of(d.name): json.loads((d / "checks.json").read_text()) for d in out.iterdir()}
    assert results, explain(proc)
    return results


@pytest.fixture(scope="module")
def api() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture(scope="module", params=sorted(KEY_MODES))
def served(request: pytest.FixtureRequest, api: FakeModelGates) -> Iterator[tuple[str, AuthProxy]]:
    """The server in one key mode, behind the proxy that adds that mode's Authorization header."""
    mode = KEY_MODES[request.param]
    with AuthProxy() as proxy:
        # the suite sends the Origin of the URL it was given: the proxy's
        port = free_port()
        env = {**mode.env(api, port), "MODELGATES_ALLOWED_ORIGINS": f"http://127.0.0.1:{proxy.port}"}
        server: HttpServer = start_server(env, port=port)
        try:
            proxy.authorization = mode.authorization(server)
            proxy.upstream = server.port
            yield request.param, proxy
        finally:
            assert server.stop() == 0
        for secret in (API_KEY, TOKEN, *api.minted):
            assert secret not in server.stderr


@pytest.mark.parametrize("revision", REQUIREMENTS)
def test_every_applicable_scenario_passes(
    agents_bin: Path, served: tuple[str, AuthProxy], revision: str, tmp_path: Path
) -> None:
    mode, proxy = served
    results = run_suite(agents_bin, f"http://127.0.0.1:{proxy.port}/mcp", revision, tmp_path)
    assert unclassified(set(results)) == set(), f"classify these scenarios in {__name__}: APPLICABLE or NOT_APPLICABLE"
    assert failures(results) == [], f"{mode}, {revision}"
    assert {"tools-list", "dns-rebinding-protection"} <= set(results), sorted(results)


def test_every_scenario_the_suite_knows_is_classified(agents_bin: Path) -> None:
    known = known_scenarios(agents_bin)
    assert {"tools-list", "server-initialize"} <= known, sorted(known)
    assert unclassified(known) == set(), f"classify these scenarios in {__name__}: APPLICABLE or NOT_APPLICABLE"
    assert not set(APPLICABLE) & set(NOT_APPLICABLE)


def test_the_classification_catches_a_new_scenario_and_a_failing_check() -> None:
    assert unclassified({"tools-list", "some-scenario-a-newer-suite-adds"}) == {"some-scenario-a-newer-suite-adds"}
    results = {
        "tools-list": [{"id": "tools-list", "status": "FAILURE", "errorMessage": "no tools"}],
        "server-sse-polling": [{"id": "server-sse-polling-session", "status": "WARNING"}],  # listed: not applicable
        "tools-call-image": [{"id": "tools-call-image", "status": "FAILURE"}],  # a scenario that does not apply
    }
    assert failures(results) == ["tools-list: tools-list FAILURE: no tools"]
