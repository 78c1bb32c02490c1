"""Configuration: flags over environment over defaults, and bad settings stop the server early."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mcp_modelgates.config import (
    DEFAULT_BASE_URL,
    ConfigError,
    load_settings,
)
from tests.conftest import API_KEY, server_command


def test_defaults() -> None:
    s = load_settings([], {})
    assert (s.api_key, s.base_url, s.timeout, s.connect_timeout, s.max_retries) == (None, DEFAULT_BASE_URL, 30, 10, 2)


def test_environment_and_flags_override() -> None:
    env = {
        "MODELGATES_API_KEY": API_KEY,
        "MODELGATES_BASE_URL": "https://api.example.test/v1/",
        "MODELGATES_TIMEOUT": "12.5",
        "MODELGATES_MAX_RETRIES": "0",
    }
    s = load_settings([], env)
    assert (s.base_url, s.timeout, s.max_retries) == ("https://api.example.test/v1", 12.5, 0)
    assert s.authorization == f"Bearer {API_KEY}"
    s = load_settings(["--base-url", "http://127.0.0.1:8765/api/v1", "--timeout", "3", "--max-retries", "5"], env)
    assert (s.base_url, s.timeout, s.connect_timeout, s.max_retries) == ("http://127.0.0.1:8765/api/v1", 3, 3, 5)


def test_workspace_from_environment_or_flag(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert load_settings([], {}).workspace is None
    assert load_settings([], {"MODELGATES_WORKSPACE": str(first)}).workspace == str(first)
    assert load_settings(["--workspace", str(second)], {"MODELGATES_WORKSPACE": str(first)}).workspace == str(second)
    with pytest.raises(ConfigError, match="MODELGATES_WORKSPACE"):
        load_settings([], {"MODELGATES_WORKSPACE": str(tmp_path / "file")})


def test_key_is_masked_everywhere_it_could_print() -> None:
    s = load_settings([], {"MODELGATES_API_KEY": API_KEY})
    assert API_KEY not in repr(s) and API_KEY not in str(s)
    assert s.redact(f"echo {API_KEY} and Bearer {API_KEY}") == "echo *** and Bearer ***"
    assert load_settings([], {"MODELGATES_API_KEY": f"Bearer {API_KEY}"}).authorization == f"Bearer {API_KEY}"
    assert load_settings([], {"MODELGATES_API_KEY": "  "}).api_key is None


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--timeout", "0"], {}, "--timeout"),
        (["--timeout", "abc"], {}, "--timeout"),
        ([], {"MODELGATES_TIMEOUT": "-1"}, "MODELGATES_TIMEOUT"),
        ([], {"MODELGATES_TIMEOUT": "nan"}, "MODELGATES_TIMEOUT"),
        ([], {"MODELGATES_TIMEOUT": "inf"}, "MODELGATES_TIMEOUT"),
        ([], {"MODELGATES_CONNECT_TIMEOUT": "0"}, "MODELGATES_CONNECT_TIMEOUT"),
        ([], {"MODELGATES_MAX_RETRIES": "-1"}, "MODELGATES_MAX_RETRIES"),
        ([], {"MODELGATES_MAX_RETRIES": "two"}, "MODELGATES_MAX_RETRIES"),
        ([], {"MODELGATES_BASE_URL": "not a url"}, "MODELGATES_BASE_URL"),
        ([], {"MODELGATES_BASE_URL": "ftp://modelgates.ai/api/v1"}, "MODELGATES_BASE_URL"),
        ([], {"MODELGATES_BASE_URL": "http://modelgates.ai/api/v1"}, "MODELGATES_BASE_URL"),
        ([], {"MODELGATES_BASE_URL": "https://modelgates.ai/api/v1?x=1"}, "MODELGATES_BASE_URL"),
        ([], {"MODELGATES_BASE_URL": "https://modelgates.ai/api/v1#frag"}, "MODELGATES_BASE_URL"),
        (["--base-url", "https://user:pw@modelgates.ai"], {}, "--base-url"),
        ([], {"MODELGATES_LOG_LEVEL": "LOUD"}, "MODELGATES_LOG_LEVEL"),
        ([], {"MODELGATES_API_KEY": "sk bad key"}, "MODELGATES_API_KEY"),
        (["--unknown"], {}, "--unknown"),
        ([], {"MODELGATES_WORKSPACE": "/no/such/folder"}, "MODELGATES_WORKSPACE"),
        (["--workspace", "relative/folder"], {}, "--workspace"),
    ],
)
def test_bad_settings_raise_one_line_naming_the_setting(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    message = str(info.value)
    assert names in message and "\n" not in message
    assert "pw" not in message and "sk bad key" not in message


@pytest.mark.parametrize(
    "host", ["http://localhost:1234/api/v1", "http://127.0.0.1/api", "http://[::1]:80/api", "http://127.5.6.7"]
)
def test_plain_http_is_allowed_only_for_loopback(host: str) -> None:
    assert load_settings(["--base-url", host], {}).base_url == host.rstrip("/")


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--timeout", "0"], {}, "--timeout"),
        ([], {"MODELGATES_BASE_URL": "http://example.com"}, "MODELGATES_BASE_URL"),
        ([], {"MODELGATES_API_KEY": "sk\x01secret"}, "MODELGATES_API_KEY"),
    ],
)
def test_console_script_refuses_bad_settings_before_the_transport_opens(
    argv: list[str], env: dict[str, str], names: str
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATES_")}
    proc = subprocess.run(
        [*server_command(), *argv], env={**base, **env}, input="", capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stdout == ""  # nothing on the JSON-RPC channel
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcp-modelgates: ") and names in lines[0]
    assert "Traceback" not in proc.stderr and "secret" not in proc.stderr


def test_help_lists_flags_and_environment() -> None:
    proc = subprocess.run([*server_command(), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for word in ("--base-url", "--timeout", "--max-retries", "--version", "MODELGATES_API_KEY"):
        assert word in proc.stdout
