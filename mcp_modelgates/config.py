"""Configuration: environment variables and command-line flags, checked once at start-up.

Everything here fails before the MCP transport opens, with a `ConfigError` whose text is one
line naming the setting. The API key is kept in a `SecretStr` and is only ever revealed to
build the Authorization header; `Settings.redact` masks it in any text that leaves the process.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from pydantic import SecretStr

DEFAULT_BASE_URL = "https://modelgates.ai/api/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRIES_CEILING = 10
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# A header value must be visible ASCII; anything else would be refused by httpx mid-call.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


class ConfigError(Exception):
    """A bad setting; its message is one line that names the setting and never holds the key."""


@dataclass(frozen=True)
class Settings:
    api_key: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    log_level: str = "INFO"
    workspace: str | None = None  # where connect_account may write a dotenv file

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def authorization(self) -> str | None:
        """The Authorization header value; never doubles a `Bearer ` prefix already present."""
        if self.api_key is None:
            return None
        raw = self.api_key.get_secret_value()
        return raw if raw.startswith("Bearer ") else f"Bearer {raw}"

    def redact(self, text: str) -> str:
        """Mask every occurrence of the configured key (an upstream may echo it back).

        The plain forms are derived here on each call rather than kept in a field, so that
        `dataclasses.asdict(settings)` or `vars(settings)` cannot reveal them."""
        if self.api_key is None:
            return text
        raw = self.api_key.get_secret_value()
        for secret in sorted({raw, raw.removeprefix("Bearer ").strip()}, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(value: str, setting: str = "MODELGATES_BASE_URL") -> str:
    """An absolute https URL (http only to loopback), without credentials, query or fragment."""
    url = value.strip()
    if not _HEADER_SAFE.fullmatch(url):
        # urlsplit silently drops tabs and newlines, so the URL checked would not be the one used.
        raise ConfigError(f"{setting} must be visible ASCII, without spaces or control characters, got {value!r}")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{setting} is not a valid URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{setting} must be an absolute http(s) URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        # Deliberately not echoed: the user info may be a credential.
        raise ConfigError(f"{setting} must not contain user info (user:password@)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"{setting} must not contain a query or fragment, got {value!r}")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(f"{setting} must use https unless the host is loopback, got {value!r}")
    return url.rstrip("/")


def _positive_seconds(value: str, setting: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{setting} must be a positive number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{setting} must be a positive number of seconds, got {value!r}")
    return seconds


def _retries(value: str, setting: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{setting} must be a whole number from 0 to {MAX_RETRIES_CEILING}, got {value!r}") from None
    if not 0 <= count <= MAX_RETRIES_CEILING:
        raise ConfigError(f"{setting} must be a whole number from 0 to {MAX_RETRIES_CEILING}, got {value!r}")
    return count


def _workspace(value: str, setting: str) -> str:
    """An existing folder; where inside it a file may go is checked per call (keystore.py)."""
    if any(ch in value for ch in "\x00\r\n"):
        raise ConfigError(f"{setting} must be a folder path without control characters")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute() or not path.is_dir():
        raise ConfigError(f"{setting} must be the absolute path of an existing folder, got {value!r}")
    return str(path)


def parse_api_key(value: str | None) -> SecretStr | None:
    """The key as a secret, None when blank; `ConfigError` (never quoting it) when unusable in a header."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    token = value.removeprefix("Bearer ")
    if not _HEADER_SAFE.fullmatch(token):
        # Never echo the value, not even in part.
        raise ConfigError("MODELGATES_API_KEY contains spaces or characters not allowed in an HTTP header")
    return SecretStr(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def build_parser(version: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcp-modelgates",
        description=(
            "MCP server (stdio) for the ModelGates OAuth PKCE API: create an authorization code "
            "and exchange it for a user-controlled API key. The API key is read from "
            "MODELGATES_API_KEY only, never from a flag."
        ),
        epilog=(
            "Environment: MODELGATES_API_KEY, MODELGATES_BASE_URL, MODELGATES_TIMEOUT, "
            "MODELGATES_CONNECT_TIMEOUT, MODELGATES_MAX_RETRIES, MODELGATES_LOG_LEVEL, MODELGATES_WORKSPACE. "
            "Flags override the environment."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mcp-modelgates {version}")
    parser.add_argument("--base-url", help=f"API base URL (env MODELGATES_BASE_URL, default {DEFAULT_BASE_URL})")
    parser.add_argument(
        "--timeout",
        help=f"overall seconds per tool call (env MODELGATES_TIMEOUT, default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--connect-timeout",
        help=f"seconds to open a connection (env MODELGATES_CONNECT_TIMEOUT, default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-retries",
        help=(
            "retries after a connection failure or a busy API "
            f"(env MODELGATES_MAX_RETRIES, default {DEFAULT_MAX_RETRIES}; 0 disables)"
        ),
    )
    parser.add_argument(
        "--workspace",
        help=(
            "folder where connect_account may write the key's dotenv file (env MODELGATES_WORKSPACE; "
            "default: the client's first root, else the working directory)"
        ),
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="stderr log level (env MODELGATES_LOG_LEVEL, default INFO)",
    )
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str], version: str = "") -> Settings:
    """Settings from flags over environment over defaults; raises `ConfigError` on the first bad one."""
    args = build_parser(version).parse_args(list(argv))

    def pick(flag: str | None, env: str) -> tuple[str | None, str]:
        if flag is not None:
            return flag, "--" + env.removeprefix("MODELGATES_").lower().replace("_", "-")
        value = environ.get(env)
        return (value if value is not None and value.strip() else None), env

    base_url, name = pick(args.base_url, "MODELGATES_BASE_URL")
    timeout, t_name = pick(args.timeout, "MODELGATES_TIMEOUT")
    connect, c_name = pick(args.connect_timeout, "MODELGATES_CONNECT_TIMEOUT")
    retries, r_name = pick(args.max_retries, "MODELGATES_MAX_RETRIES")
    workspace, w_name = pick(args.workspace, "MODELGATES_WORKSPACE")
    level = args.log_level or (environ.get("MODELGATES_LOG_LEVEL") or "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"MODELGATES_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")

    total = _positive_seconds(timeout, t_name) if timeout is not None else DEFAULT_TIMEOUT
    connect_s = _positive_seconds(connect, c_name) if connect is not None else DEFAULT_CONNECT_TIMEOUT
    return Settings(
        api_key=parse_api_key(environ.get("MODELGATES_API_KEY")),
        base_url=check_base_url(base_url, name) if base_url is not None else DEFAULT_BASE_URL,
        timeout=total,
        connect_timeout=min(connect_s, total),
        max_retries=_retries(retries, r_name) if retries is not None else DEFAULT_MAX_RETRIES,
        log_level=level,
        workspace=_workspace(workspace, w_name) if workspace is not None else None,
    )
