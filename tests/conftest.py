"""Shared fixtures: the ModelGates stand-in, settings pointed at it, and real MCP client sessions."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
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


@pytest.fixture
def fake() -> Iterator[FakeModelGates]:
    with FakeModelGates(api_key=API_KEY) as api:
        yield api


@pytest.fixture
def settings(fake: FakeModelGates) -> Settings:
    return Settings(api_key=SecretStr(API_KEY), base_url=fake.base_url, timeout=5.0, connect_timeout=2.0)


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: the 2025-11-25 handshake (Claude Code, Cursor) and the modern one."""
    return str(request.param)


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


def wire(result: Any) -> Any:
    """The JSON a client receives for a result model."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
