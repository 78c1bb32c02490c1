"""Configuration: environment variables and command-line flags, checked once at start-up.

Everything here fails before the MCP transport opens, with a `ConfigError` whose text is one
line naming the setting. The API key is kept in a `SecretStr` and is only ever revealed to
build the Authorization header; `Settings.redact` masks it in any text that leaves the process.
"""

from __future__ import annotations

import argparse
import contextvars
import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from pydantic import SecretStr

DEFAULT_BASE_URL = "https://modelgates.ai/api/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRIES_CEILING = 10
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRANSPORTS = ("stdio", "http")
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_OAUTH_ACCESS_TTL = 3600
DEFAULT_OAUTH_REFRESH_TTL = 30 * 24 * 3600

# A header value must be visible ASCII; anything else would be refused by httpx mid-call.
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


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
    # the HTTP transport
    transport: str = "stdio"
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    http_token: SecretStr | None = None
    key_from_client: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # MODELGATES_AUTH=oauth: the HTTP transport is its own authorization server (mcp_modelgates.oauth)
    oauth: bool = False
    public_url: str = ""  # the origin clients reach: the issuer; the resource is this + /mcp
    oauth_secrets: tuple[SecretStr, ...] = ()  # the first seals, every one opens
    oauth_access_ttl: int = DEFAULT_OAUTH_ACCESS_TTL
    oauth_refresh_ttl: int = DEFAULT_OAUTH_REFRESH_TTL
    # MODELGATES_OAUTH_STORE: a redis:// or rediss:// URL shared by the replicas; None is this
    # process's memory. A secret (it may hold a password), as is the password on its own.
    oauth_store: SecretStr | None = None
    oauth_store_password: SecretStr | None = None
    # Client ID Metadata Documents: a client_id that is an https URL is fetched (off for a server
    # that cannot reach the internet: clients then register dynamically instead)
    oauth_client_documents: bool = True

    @property
    def keys_per_request(self) -> bool:
        """Each request brings its own ModelGates key (per-caller mode, or the signed-in user's in
        OAuth mode): the server has none of its own, and a stored one must never become shared."""
        return self.key_from_client or self.oauth

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
        """Mask every occurrence of the configured key, the HTTP token, the OAuth secrets and the key
        of the request being served (an upstream may echo any of them back), also percent-encoded,
        `\\u`-escaped or with invisible characters inside, in any mix.

        The plain forms are derived here on each call rather than kept in a field, so that
        `dataclasses.asdict(settings)` or `vars(settings)` cannot reveal them."""
        held = (self.api_key, self.http_token, _caller_key.get(), *self.oauth_secrets, self.oauth_store_password)
        raws = [s.get_secret_value() for s in held if s is not None]
        for raw in raws:
            for plain in sorted({raw, raw.removeprefix("Bearer ").strip()}, key=len, reverse=True):
                if plain:
                    text = text.replace(plain, "***")
        # Only text with an escape, a control or a non-ASCII character can hide a disguised secret
        # (the checks are ordered cheapest first: this runs on every string of every result).
        if raws and not (
            text.isascii()
            and "%" not in text
            and "\\" not in text
            and (text.isprintable() or not _CONTROL.search(text))
        ):
            text = _mask_disguised(text, {raw.removeprefix("Bearer ").strip() for raw in raws} - {""})
        return text


# A disguised secret lies inside one run of text between ASCII spaces: escapes and invisible
# characters hold none. Within a run, secrets are looked for with every non-ASCII character and
# ASCII control dropped (zero-width and bidi characters, soft hyphens, NULs: what `excerpt` turns
# into spaces) and `%XX` and `\\uXXXX` escapes decoded, also escapes of escapes (`%252D`, or the
# `\\\\u002d` of a repr). Secrets are visible ASCII, so nothing non-ASCII can be part of one.
_RUN = re.compile(r"[^ \t\n\r]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_U_ESCAPE = re.compile(r"\\+u([0-9A-Fa-f]{4})")
_INVISIBLE = bytes([*range(0x20), *range(0x7F, 0x100)])
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPE_DEPTH = 3


def _unescaped(word: str) -> str:
    """`word` as a reader of its escapes would see it, invisible and non-ASCII characters dropped."""
    for _ in range(_ESCAPE_DEPTH):
        if "\\" in word:
            word = _U_ESCAPE.sub(lambda m: chr(int(m[1], 16)), word)
        raw = word.encode("ascii", "ignore").translate(None, _INVISIBLE)
        word = unquote_to_bytes(raw).decode("latin-1") if b"%" in raw else raw.decode("ascii")
        if "%" not in word and "\\" not in word:
            break
    return word.encode("ascii", "ignore").translate(None, _INVISIBLE).decode("ascii")


def _mask_disguised(text: str, secrets: set[str]) -> str:
    pieces: list[str] = []
    last = 0
    for run in _RUN.finditer(text):
        word = run.group()
        if word.isascii() and word.isprintable() and "%" not in word and "\\" not in word:
            continue
        unescaped = _unescaped(word)
        if any(secret in unescaped for secret in secrets):
            pieces += [text[last : run.start()], _mask_run(word, secrets)]
            last = run.end()
    return "".join([*pieces, text[last:]]) if pieces else text


def _mask_run(word: str, secrets: set[str]) -> str:
    """`word` with each span that reads as a secret replaced by `***`; all of it when a secret was
    seen but cannot be placed here (escapes of escapes, escapes broken up by invisible characters)."""
    chars: list[str] = []
    spans: list[tuple[int, int]] = []  # where in `word` each character of `chars` came from
    i = 0
    while i < len(word):
        ch, end = word[i], i + 1
        if ch == "%" and len(hexa := word[i + 1 : i + 3]) == 2 and _HEX.issuperset(hexa):
            ch, end = chr(int(hexa, 16)), i + 3
        elif ch == "\\":
            u = i + 1
            while word.startswith("\\", u):
                u += 1
            if word.startswith("u", u) and len(hexa := word[u + 1 : u + 5]) == 4 and _HEX.issuperset(hexa):
                ch, end = chr(int(hexa, 16)), u + 5
        if " " <= ch <= "~":
            chars.append(ch)
            spans.append((i, end))
        i = end
    plain = "".join(chars)
    cuts: list[tuple[int, int]] = []
    for secret in secrets:
        at = plain.find(secret)
        while at >= 0:
            cuts.append((spans[at][0], spans[at + len(secret) - 1][1]))
            at = plain.find(secret, at + len(secret))
    if not cuts:
        return "***"
    out: list[str] = []
    last = 0
    for start, end in sorted(cuts):
        if start >= last:
            out += [word[last:start], "***"]
        last = max(last, end)
    return "".join([*out, word[last:]])


# The key a caller of the HTTP transport sent with the request being served (in OAuth mode: the
# key sealed in the request's access token, the signed-in user's).
# Set by the HTTP layer for one request only (a contextvar: concurrent requests never see each
# other's), read by the client for that request's calls and by `Settings.redact`. Never stored.
_caller_key: contextvars.ContextVar[SecretStr | None] = contextvars.ContextVar("caller_key", default=None)


@contextmanager
def caller_key_for_request(key: SecretStr | None) -> Iterator[None]:
    token = _caller_key.set(key)
    try:
        yield
    finally:
        _caller_key.reset(token)


def caller_key() -> SecretStr | None:
    """The key sent by the caller of the request being served, if any (per-caller key mode)."""
    return _caller_key.get()


# Keys the identities below, fresh per process: an identity tells callers apart here and nowhere
# else, and nothing kept in memory can be checked against a guessed key.
_IDENTITY_KEY = os.urandom(16)


def caller_identity(settings: Settings) -> bytes:
    """Who a call counts against for per-caller limits: a keyed hash of the credential it uses (the
    key that came with the request, else the server's token, else its key), never the credential
    itself; b"" for a caller with none (they are told apart by nothing, so they share one)."""
    secret = _caller_key.get() or settings.http_token or settings.api_key
    if secret is None:
        return b""
    return hashlib.blake2b(secret.get_secret_value().encode(), key=_IDENTITY_KEY, digest_size=16).digest()


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
    if not HEADER_SAFE.fullmatch(url):
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
    if not HEADER_SAFE.fullmatch(token):
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
            "MCP server (stdio or streamable HTTP) for the ModelGates OAuth PKCE API: create an "
            "authorization code and exchange it for a user-controlled API key. The API key is read "
            "from MODELGATES_API_KEY only, never from a flag."
        ),
        epilog=(
            "Environment: MODELGATES_API_KEY, MODELGATES_BASE_URL, MODELGATES_TIMEOUT, "
            "MODELGATES_CONNECT_TIMEOUT, MODELGATES_MAX_RETRIES, MODELGATES_LOG_LEVEL, MODELGATES_WORKSPACE; for "
            "--transport http also MODELGATES_TRANSPORT, MODELGATES_HOST, MODELGATES_PORT, "
            "MODELGATES_HTTP_TOKEN, MODELGATES_KEY_FROM_CLIENT, MODELGATES_ALLOWED_HOSTS, "
            "MODELGATES_ALLOWED_ORIGINS; for OAuth sign-in (MODELGATES_AUTH=oauth) MODELGATES_PUBLIC_URL, "
            "MODELGATES_OAUTH_SECRET, MODELGATES_OAUTH_ACCESS_TTL, MODELGATES_OAUTH_REFRESH_TTL, "
            "MODELGATES_OAUTH_STORE, MODELGATES_OAUTH_CLIENT_DOCUMENTS. "
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
    parser.add_argument(
        "--transport",
        type=str.lower,
        choices=TRANSPORTS,
        help="stdio (one client that launches the server) or http (streamable HTTP at /mcp) "
        "(env MODELGATES_TRANSPORT, default stdio)",
    )
    parser.add_argument(
        "--host",
        help=f"address to listen on with --transport http (env MODELGATES_HOST, default {DEFAULT_HTTP_HOST}); "
        "a non-loopback address needs MODELGATES_HTTP_TOKEN, MODELGATES_KEY_FROM_CLIENT=1 or MODELGATES_AUTH=oauth",
    )
    parser.add_argument(
        "--port", help=f"port to listen on with --transport http (env MODELGATES_PORT, default {DEFAULT_HTTP_PORT})"
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
    api_key = parse_api_key(environ.get("MODELGATES_API_KEY"))
    return Settings(
        api_key=api_key,
        base_url=check_base_url(base_url, name) if base_url is not None else DEFAULT_BASE_URL,
        timeout=total,
        connect_timeout=min(connect_s, total),
        max_retries=_retries(retries, r_name) if retries is not None else DEFAULT_MAX_RETRIES,
        log_level=level,
        workspace=_workspace(workspace, w_name) if workspace is not None else None,
        **_http_settings(args, environ, pick, has_api_key=api_key is not None),
    )


# ---------------------------------------------------------------- the HTTP transport

_HOST = re.compile(r"[A-Za-z0-9._:%-]+")
_ORIGIN = re.compile(r"https?://[^/\s?#@]+")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
MIN_TOKEN_CHARS = 16


def _port(value: str, setting: str) -> int:
    if not value.strip().isascii() or not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"{setting} must be a port number from 1 to 65535, got {value!r}")
    return int(value)


def _http_token(value: str | None) -> SecretStr | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not HEADER_SAFE.fullmatch(value) or len(value) < MIN_TOKEN_CHARS:
        # Never echo the value, not even in part.
        raise ConfigError(
            f"MODELGATES_HTTP_TOKEN must be at least {MIN_TOKEN_CHARS} visible ASCII characters without spaces"
        )
    return SecretStr(value)


def _listed(value: str | None, setting: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    items = tuple(item.strip().rstrip("/") for item in (value or "").split(",") if item.strip())
    for item in items:
        if not pattern.fullmatch(item):
            raise ConfigError(f"{setting} must be a comma-separated list, got the bad entry {item!r}")
    return items


def _http_settings(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    pick: Callable[[str | None, str], tuple[str | None, str]],
    *,
    has_api_key: bool,
) -> dict[str, Any]:
    """The HTTP transport's settings, refusing any combination that would expose a key."""
    transport, t_name = pick(args.transport, "MODELGATES_TRANSPORT")
    transport = (transport or "stdio").strip().lower()
    if transport not in TRANSPORTS:
        raise ConfigError(f"{t_name} must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    host, h_name = pick(args.host, "MODELGATES_HOST")
    host = (host or DEFAULT_HTTP_HOST).strip()
    if not _HOST.fullmatch(host):
        raise ConfigError(f"{h_name} must be an IP address or host name, got {host!r}")
    port, p_name = pick(args.port, "MODELGATES_PORT")
    flag = (environ.get("MODELGATES_KEY_FROM_CLIENT") or "").strip().lower()
    if flag not in _TRUE + _FALSE:
        raise ConfigError(f"MODELGATES_KEY_FROM_CLIENT must be 1 or 0, got {flag!r}")
    key_from_client = flag in _TRUE
    token = _http_token(environ.get("MODELGATES_HTTP_TOKEN"))
    if key_from_client and has_api_key:
        raise ConfigError(
            "MODELGATES_KEY_FROM_CLIENT=1 and MODELGATES_API_KEY are both set: choose one key mode "
            "(each caller's own key, or one shared key)"
        )
    if key_from_client and token is not None:
        raise ConfigError(
            "MODELGATES_KEY_FROM_CLIENT=1 and MODELGATES_HTTP_TOKEN are both set: with per-caller keys the "
            "Authorization header carries each caller's ModelGates key; unset one"
        )
    if key_from_client and transport != "http":
        raise ConfigError("MODELGATES_KEY_FROM_CLIENT=1 needs --transport http (MODELGATES_TRANSPORT)")
    oauth = _oauth_settings(environ, transport, has_api_key=has_api_key, token=token, key_from_client=key_from_client)
    if transport == "http" and not is_loopback(host) and token is None and not key_from_client and not oauth:
        raise ConfigError(
            f"{h_name} {host} is not a loopback address: set MODELGATES_HTTP_TOKEN (shared key), "
            "MODELGATES_KEY_FROM_CLIENT=1 (each caller's own key) or MODELGATES_AUTH=oauth (sign-in), "
            "so that not just anyone can use it"
        )
    return {
        **oauth,
        "transport": transport,
        "http_host": host,
        "http_port": _port(port, p_name) if port is not None else DEFAULT_HTTP_PORT,
        "http_token": token,
        "key_from_client": key_from_client,
        "allowed_hosts": _listed(environ.get("MODELGATES_ALLOWED_HOSTS"), "MODELGATES_ALLOWED_HOSTS", _HOST),
        "allowed_origins": _listed(environ.get("MODELGATES_ALLOWED_ORIGINS"), "MODELGATES_ALLOWED_ORIGINS", _ORIGIN),
    }


# ---------------------------------------------------------------- OAuth sign-in (MODELGATES_AUTH=oauth)

OAUTH_SETTINGS = (
    "MODELGATES_PUBLIC_URL",
    "MODELGATES_OAUTH_SECRET",
    "MODELGATES_OAUTH_ACCESS_TTL",
    "MODELGATES_OAUTH_REFRESH_TTL",
    "MODELGATES_OAUTH_STORE",
    "MODELGATES_OAUTH_CLIENT_DOCUMENTS",
)
MIN_SECRET_CHARS = 32


def check_public_url(value: str, setting: str = "MODELGATES_PUBLIC_URL") -> str:
    """An origin: https (http only for a loopback host), without user info, path, query or fragment.

    It becomes the issuer, which clients compare as a plain string, so it is kept in the one form
    URL parsers render it in: lower case, no default port, no trailing slash."""
    url = check_base_url(value, setting)
    parts = urlsplit(url)
    if parts.path:
        raise ConfigError(f"{setting} must be an origin without a path (e.g. https://mcp.example.com), got {value!r}")
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    default = ":443" if scheme == "https" else ":80"
    return f"{scheme}://{netloc.removesuffix(default)}"


def _oauth_secrets(value: str | None) -> tuple[SecretStr, ...]:
    items = [item.strip() for item in (value or "").split(",")]
    if not any(items):
        raise ConfigError("MODELGATES_OAUTH_SECRET is required with MODELGATES_AUTH=oauth (at least 32 characters)")
    if not all(HEADER_SAFE.fullmatch(item) and len(item) >= MIN_SECRET_CHARS for item in items):
        # Never echo the value, not even in part.
        raise ConfigError(
            f"MODELGATES_OAUTH_SECRET must be comma-separated secrets of at least {MIN_SECRET_CHARS} visible "
            "ASCII characters each, without spaces"
        )
    return tuple(SecretStr(item) for item in items)


STORE_SCHEMES = ("redis", "rediss")


def _store_url(value: str | None) -> tuple[SecretStr | None, SecretStr | None]:
    """MODELGATES_OAUTH_STORE as (the URL, its password), both secret; (None, None) when unset.

    Only what this server reads from it: scheme, user info, host, port and a database number. A
    query is refused, since the client library would take any name in it as a connection option,
    `ssl_cert_reqs=none` (no TLS check) among them. Never echoed: it may hold a password."""
    if value is None or not value.strip():
        return None, None
    url = value.strip()
    setting = "MODELGATES_OAUTH_STORE"
    example = "redis://host:6379/0 or rediss://host:6380/0"
    if not HEADER_SAFE.fullmatch(url):
        raise ConfigError(f"{setting} must be a URL without spaces or control characters ({example})")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{setting} is not a valid URL ({example})") from None
    if parts.scheme.lower() not in STORE_SCHEMES or not host:
        raise ConfigError(f"{setting} must be a redis:// or rediss:// (TLS) URL with a host ({example})")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{setting} takes no query or fragment: connection options are this server's ({example})")
    if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]{1,5}", parts.path):
        raise ConfigError(f"{setting}'s path must be a database number, as in {example}")
    password = unquote(parts.password) if parts.password else None
    return SecretStr(url), (SecretStr(password) if password else None)


def store_location(url: str) -> str:
    """The store's URL without its user info, for logs and messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _whole_seconds(value: str | None, setting: str, default: int) -> int:
    if value is None or not value.strip():
        return default
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{setting} must be a whole number of seconds, at least 1, got {value!r}")
    return int(text)


def _oauth_settings(
    environ: Mapping[str, str], transport: str, *, has_api_key: bool, token: SecretStr | None, key_from_client: bool
) -> dict[str, Any]:
    """The OAuth mode's settings; each other key mode, and OAuth settings without it, are refused."""
    mode = (environ.get("MODELGATES_AUTH") or "").strip().lower()
    if mode not in ("", "oauth"):
        raise ConfigError(f"MODELGATES_AUTH must be oauth (or unset), got {mode!r}")
    if not mode:
        stray = [name for name in OAUTH_SETTINGS if (environ.get(name) or "").strip()]
        if stray:
            raise ConfigError(
                f"{stray[0]} is set but MODELGATES_AUTH is not oauth: set MODELGATES_AUTH=oauth or unset it"
            )
        return {}
    others = [
        name
        for name, present in (
            ("MODELGATES_API_KEY", has_api_key),
            ("MODELGATES_HTTP_TOKEN", token is not None),
            ("MODELGATES_KEY_FROM_CLIENT", key_from_client),
        )
        if present
    ]
    if others:
        raise ConfigError(
            f"MODELGATES_AUTH=oauth and {' and '.join(others)} are set: with sign-in each user's calls use "
            "the key their sign-in created; unset " + ("it" if len(others) == 1 else "them")
        )
    if transport != "http":
        raise ConfigError("MODELGATES_AUTH=oauth needs --transport http (MODELGATES_TRANSPORT)")
    public = environ.get("MODELGATES_PUBLIC_URL")
    if public is None or not public.strip():
        raise ConfigError(
            "MODELGATES_PUBLIC_URL is required with MODELGATES_AUTH=oauth: the origin clients reach, "
            "e.g. https://mcp.example.com"
        )
    store, store_password = _store_url(environ.get("MODELGATES_OAUTH_STORE"))
    documents = (environ.get("MODELGATES_OAUTH_CLIENT_DOCUMENTS") or "").strip().lower()
    if documents not in (*_TRUE, *_FALSE):
        raise ConfigError(f"MODELGATES_OAUTH_CLIENT_DOCUMENTS must be 1 or 0, got {documents!r}")
    return {
        "oauth_client_documents": documents in ("", *_TRUE),
        "oauth": True,
        "oauth_store": store,
        "oauth_store_password": store_password,
        "public_url": check_public_url(public),
        "oauth_secrets": _oauth_secrets(environ.get("MODELGATES_OAUTH_SECRET")),
        "oauth_access_ttl": _whole_seconds(
            environ.get("MODELGATES_OAUTH_ACCESS_TTL"), "MODELGATES_OAUTH_ACCESS_TTL", DEFAULT_OAUTH_ACCESS_TTL
        ),
        "oauth_refresh_ttl": _whole_seconds(
            environ.get("MODELGATES_OAUTH_REFRESH_TTL"), "MODELGATES_OAUTH_REFRESH_TTL", DEFAULT_OAUTH_REFRESH_TTL
        ),
    }
