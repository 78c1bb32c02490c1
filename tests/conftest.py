"""Shared fixtures: the ModelGates stand-in, settings pointed at it, and real MCP client sessions."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import SecretStr

from mcp_modelgates.config import Settings
from mcp_modelgates.server import build_server
from tests.fake_api import FakeModelGates

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-test-key-4f1c9a7e2b"  # a distinctive value, so a leak anywhere is easy to find

ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _log_everything_to_catch_key_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """Every test runs with all loggers at DEBUG (httpx and httpcore too), so that the check in
    `pytest_runtest_makereport` below sees every line the code could log."""
    for name in (None, "httpx", "httpcore", "mcp_modelgates"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail any test whose captured logs, stdout or stderr hold the configured test key."""
    report: pytest.TestReport = yield
    # Sections accumulate over setup, call and teardown: judge each phase on its own output.
    leaked = [title for title, content in report.sections if title.endswith(report.when) and API_KEY in content]
    if leaked and not report.failed:
        report.outcome = "failed"
        report.longrepr = f"the configured API key appeared in: {', '.join(leaked)}"
    return report


@pytest.fixture
def fake() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as api:
        yield api


@pytest.fixture
def settings(fake: FakeModelGates) -> Settings:
    return Settings(api_key=SecretStr(API_KEY), base_url=fake.base_url, timeout=5.0, connect_timeout=2.0)


ERAS = ("legacy", "auto")
# Only where the protocol era changes the wire (e.g. the modern era's `_meta` stamp on results):
# `@BOTH_ERAS` runs a test once per era. Everything else runs once, in the default era below.
BOTH_ERAS = pytest.mark.parametrize("mode", ERAS)


@pytest.fixture
def mode() -> str:
    """The protocol era of `connect`: the 2025-11-25 handshake that Claude Code and Cursor speak.
    Override with `@BOTH_ERAS` or `@pytest.mark.parametrize("mode", ["auto"])`."""
    return "legacy"


@pytest.fixture
def connect(settings: Settings, mode: str) -> ClientFactory:
    """`async with connect(**overrides) as client`: an in-memory MCP session with the real server."""

    @asynccontextmanager
    async def _connect(**overrides: Any) -> AsyncIterator[Client]:
        server = build_server(dataclasses.replace(settings, **overrides), backoff_base=0.01)
        async with Client(server, mode=mode) as client:  # type: ignore[arg-type]
            yield client

    return _connect


def server_command() -> list[str]:
    """The installed console script, as a user's client would launch it."""
    script = shutil.which("mcp-modelgates", path=str(Path(sys.executable).parent)) or shutil.which("mcp-modelgates")
    if script is None:
        pytest.fail("the mcp-modelgates console script is not installed (pip install -e '.[test]')")
    return [script]


def stdio_params(env: dict[str, str], args: list[str] | None = None) -> StdioServerParameters:
    command, *rest = server_command()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATES_")}
    return StdioServerParameters(command=command, args=[*rest, *(args or [])], env={**base, **env})


@dataclasses.dataclass
class StdioRun:
    stdout_lines: list[bytes]
    stderr: bytes
    returncode: int
    seconds_to_exit: float  # from closing stdin (or SIGTERM) to the process ending


def run_stdio(
    payload: bytes,
    env: dict[str, str],
    answers: set[int],
    *,
    timeout: float = 30.0,
    stop: str = "eof",
    before_stop: Callable[[], None] | None = None,
) -> StdioRun:
    """Write `payload` to the console script, wait until every id in `answers` has a reply on stdout
    (and `before_stop` has returned), then stop it (`stop`: "eof" closes stdin, "sigterm" sends
    SIGTERM). Both output pipes are drained by threads, so a chatty DEBUG log never blocks it."""
    proc = subprocess.Popen(
        server_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    err = bytearray()
    changed = threading.Condition()

    def answered() -> set[int]:
        ids = set()
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError):
                ids.add(json.loads(line).get("id"))
        return ids

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with changed:
                lines.append(line)
                changed.notify_all()

    readers = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr.read() if proc.stderr else b""), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.stdin.write(payload)
        proc.stdin.flush()
        with changed:
            changed.wait_for(lambda: answers <= answered(), timeout)
        if before_stop is not None:
            before_stop()
        started = time.monotonic()
        if stop == "eof":
            proc.stdin.close()
        else:
            proc.terminate()
        returncode = proc.wait(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    missing = answers - answered()
    assert not missing, f"no answer on stdout for ids {sorted(missing)}; stderr tail: {bytes(err[-2000:])!r}"
    return StdioRun(lines, bytes(err), returncode, seconds)


def wire(result: Any) -> Any:
    """The JSON a client receives for a result model."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
