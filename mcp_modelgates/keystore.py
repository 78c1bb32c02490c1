"""Where a newly obtained API key goes: a dotenv file inside the user's workspace, or the OS keyring.

`plan()` checks a destination before any flow starts (it writes nothing); `save()` stores the key
there, atomically and under a lock; `read_keyring_key()` reads back what the keyring holds, and
`with_stored_key()` makes it the server's key when MODELGATES_API_KEY is unset. The key
never appears in an error message or a log line. `keyring` is an optional extra, imported lazily.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from mcp_modelgates.config import ConfigError, Settings, parse_api_key

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

log = logging.getLogger(__name__)

KEYRING_SERVICE = "mcp-modelgates"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

WORKSPACE_HINT = (
    "set MODELGATES_WORKSPACE (or --workspace) to the project folder; for Cursor, add "
    '"env": {"MODELGATES_WORKSPACE": "${workspaceFolder}"} to the server\'s entry in mcp.json'
)
KEYRING_EXTRA = "pip install 'mcp-modelgates[keyring]'"
# Dotenv templates are usually committed to version control: never the place for a live key.
TEMPLATE_SUFFIXES = frozenset({"example", "sample", "template", "dist"})
# Values made only of these need no quotes in any dotenv dialect (python-dotenv, Node's dotenv,
# docker compose, `set -a; . ./.env` in a POSIX shell): no spaces, `#`, quotes, `$`, `\`, `~` or globs.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_\-.:/+@%,=]+")
_NEWLINES = (b"\r\n", b"\n", b"\r")


class StoreError(Exception):
    """A destination that cannot be used; message is one line naming the argument (`env_file: ...`,
    `env_var: ...`, `store: ...`) or the setting (MODELGATES_WORKSPACE), and never holds a key."""


@dataclass(frozen=True)
class Destination:
    """A checked place for the key. Build it with `plan()`, which also fills `workspace`."""

    store: Literal["env_file", "keyring"]
    env_var: str
    path: Path | None  # absolute resolved file path for env_file; None for keyring
    workspace: Path | None = None  # the folder `path` must stay inside, re-checked by save()
    # (st_dev, st_ino) of `workspace` at plan(): save() writes only into that very folder
    workspace_id: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    @property
    def saved_to(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"keyring:{KEYRING_SERVICE}/{self.env_var}"


def _show(value: object, limit: int = 160) -> str:
    """A path or argument as one printable, quoted, bounded line for an error message."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)


# --- the workspace -------------------------------------------------------------------------------


def _root_path(root: str) -> Path | None:
    """The local folder a root names: a `file://` URI or a plain path; None for any other scheme."""
    parts = urlsplit(root)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            return None  # a file on another host is not a folder here
        return Path(unquote(parts.path)) if parts.path else None
    if len(parts.scheme) > 1:  # https:, git:, ...; a one-letter scheme is a Windows drive
        return None
    return Path(root) if root else None


def _usable_workspace(path: Path, source: str, home: Path) -> Path:
    try:
        resolved = path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise StoreError(
            f"MODELGATES_WORKSPACE: the {source} {_show(path)} cannot be resolved ({exc}); {WORKSPACE_HINT}"
        ) from None
    if not resolved.is_dir():
        what = "does not exist" if not resolved.exists() else "is not a folder"
        raise StoreError(f"MODELGATES_WORKSPACE: the {source} {_show(resolved)} {what}; {WORKSPACE_HINT}")
    if resolved == Path(resolved.anchor) or resolved == home:
        where = "the file system root" if resolved == Path(resolved.anchor) else "the home folder"
        raise StoreError(
            f"MODELGATES_WORKSPACE: the {source} is {where} ({resolved}), which is never used as a "
            f"workspace; {WORKSPACE_HINT}"
        )
    return resolved


def resolve_workspace(
    configured: str | None, roots: Sequence[str], cwd: Path | None = None, home: Path | None = None
) -> Path:
    """The workspace: `configured` (MODELGATES_WORKSPACE / --workspace) when set; else the first root
    (MCP roots/list gives `file://` URIs: accept file URIs and plain paths, ignore non-file roots);
    else cwd. `/` and the home folder itself are never a workspace: StoreError saying how to set
    MODELGATES_WORKSPACE (for Cursor: "env": {"MODELGATES_WORKSPACE": "${workspaceFolder}"} in mcp.json).
    A configured path that does not exist or is not a directory is a StoreError too. Returns a resolved absolute path.

    An empty `configured` counts as unset. The chosen source decides: a first root that is not a
    folder here is an error, not a reason to fall back to the working directory.
    """
    base = cwd if cwd is not None else Path.cwd()
    try:
        home_dir = (home if home is not None else Path.home()).resolve()
    except (OSError, RuntimeError):  # no home folder known: nothing to compare with
        home_dir = Path(base.anchor or "/")
    if configured:
        return _usable_workspace(base / Path(configured).expanduser(), "configured workspace", home_dir)
    for root in roots:
        path = _root_path(root)
        if path is not None:
            return _usable_workspace(base / path, "client's first root", home_dir)
    return _usable_workspace(base, "server's working directory", home_dir)


# --- planning ------------------------------------------------------------------------------------


def _is_dotenv_name(name: str) -> bool:
    if name == ".env":
        return True
    if name.startswith(".env."):
        suffix = name[len(".env.") :]
        return bool(suffix) and suffix.lower() not in TEMPLATE_SUFFIXES
    return name.endswith(".env") and len(name) > len(".env")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _plan_env_file(env_file: str, env_var: str, workspace: Path | None) -> Destination:
    if workspace is None:
        raise StoreError(f"env_file: there is no workspace to write into; {WORKSPACE_HINT}")
    if not env_file or not env_file.strip():
        raise StoreError("env_file: must name a dotenv file such as '.env'")
    if "\x00" in env_file:
        raise StoreError("env_file: must not contain a NUL character")
    if env_file.startswith("~"):
        raise StoreError(
            f"env_file: {_show(env_file)} starts with '~', which is not expanded; give a path inside the "
            f"workspace {_show(workspace)}, relative to it"
        )
    try:
        folder = workspace.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"env_file: the workspace {_show(workspace)} cannot be used ({exc})") from None
    if not folder.is_dir():
        raise StoreError(f"env_file: the workspace {_show(folder)} is not a folder")
    given = Path(env_file)
    if not _is_dotenv_name(given.name):
        raise StoreError(
            f"env_file: {_show(env_file)} is not a dotenv file name; use '.env', '.env.<name>' or '<name>.env' "
            f"(templates such as '.env.example' are refused: they are usually committed)"
        )
    target = folder / given  # an absolute `given` replaces `folder`
    try:
        resolved = target.resolve()  # follows every symlink, including a dangling one at the end
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long...
        raise StoreError(f"env_file: {_show(env_file)} cannot be resolved ({exc})") from None
    if not _inside(resolved, folder):
        via = " through a symlink" if _inside(Path(os.path.normpath(target)), folder) else ""
        raise StoreError(
            f"env_file: {_show(env_file)} resolves{via} to {_show(resolved)}, outside the workspace {_show(folder)}; "
            "only files inside the workspace are written"
        )
    if not _is_dotenv_name(resolved.name):
        raise StoreError(
            f"env_file: {_show(env_file)} is a symlink to {_show(resolved.name)}, which is not a dotenv file name"
        )
    parent = resolved.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise StoreError(f"env_file: the folder {_show(parent)} {what}; create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"env_file: the folder {_show(parent)} is not writable")
    if resolved.exists() or resolved.is_symlink():
        if resolved.is_dir():
            raise StoreError(f"env_file: {_show(resolved)} is a folder, not a file")
        if not resolved.is_file():
            raise StoreError(f"env_file: {_show(resolved)} is not a regular file")
        if not os.access(resolved, os.R_OK):
            raise StoreError(f"env_file: {_show(resolved)} is not readable")
    info = folder.stat()
    return Destination("env_file", env_var, resolved, folder, (info.st_dev, info.st_ino))


def plan(store: str, env_file: str, env_var: str, workspace: Path | None) -> Destination:
    """Check everything BEFORE a flow starts (no file written, nothing created): env_var matches the
    pattern; for env_file: workspace required; relative paths resolve against the workspace; refuse `~`,
    absolute paths outside it, `..` escapes, a symlink (the file itself or any parent inside the
    workspace) that resolves outside it, a name that is not a dotenv file (`.env`, `.env.*`, `*.env`),
    a path that is a directory, a parent folder that does not exist. For keyring: the `keyring` package
    is importable (it is an optional extra: import lazily, inside functions only, never at module import)
    and a usable backend exists (not keyring.backends.fail.Keyring / chainer with no backends / priority
    < 1 ...); otherwise StoreError suggesting `store: "env_file"` and `pip install 'mcp-modelgates[keyring]'`
    when the package is missing.

    Also refused: dotenv templates (`.env.example`, `.sample`, `.template`, `.dist`), a folder that is
    not writable, a file that is not a regular readable file. A symlink that stays inside the workspace
    is followed: `path` is where the bytes land, and save() reaches it following no symlink. Keyring
    backends are accepted with any priority above 0 (a plugin below 1, such as keyrings.alt's file
    backend, is one the user installed on purpose), except keyrings.alt's EncryptedKeyring, which
    would ask for a password on the terminal.
    """
    if store not in ("env_file", "keyring"):
        raise StoreError(f"store: must be 'env_file' or 'keyring', not {_show(store, 40)}")
    if not re.fullmatch(ENV_VAR_PATTERN, env_var):
        raise StoreError(
            f"env_var: {_show(env_var, 60)} is not a variable name (letters, digits, _; not a digit first)"
        )
    if store == "keyring":
        _keyring_backend()
        return Destination("keyring", env_var, None)
    return _plan_env_file(env_file, env_var, workspace)


# --- the keyring ---------------------------------------------------------------------------------


def _prompts_for_password(backend: KeyringBackend) -> bool:
    kind = type(backend)
    return kind.__module__.startswith("keyrings.alt") and kind.__name__ == "EncryptedKeyring"


def _keyring_backend() -> KeyringBackend:
    """The active keyring backend if it can store a key without a person at a terminal."""
    advice = 'use store: "env_file" instead'
    try:
        import keyring
        from keyring.backends import chainer, fail
    except ImportError:
        raise StoreError(f"store: the keyring package is not installed ({KEYRING_EXTRA}); or {advice}") from None
    name = "none"
    try:
        backend = keyring.get_keyring()
        name = f"{type(backend).__module__}.{type(backend).__name__}"
        if isinstance(backend, chainer.ChainerBackend):
            chained: list[KeyringBackend] = list(backend.backends)
            usable = bool(chained) and not any(map(_prompts_for_password, chained))
        else:
            usable = (
                not isinstance(backend, fail.Keyring)
                and float(backend.priority) > 0
                and not _prompts_for_password(backend)
            )
    except Exception as exc:  # a backend whose priority check raises is not viable
        log.debug("keyring backend check failed: %s", type(exc).__name__)
        usable = False
    if not usable:
        raise StoreError(
            f"store: no usable OS keyring on this machine (keyring backend: {name}; a headless Linux box "
            f"has none without a Secret Service); {advice}"
        )
    return backend


def read_keyring_key(env_var: str = "MODELGATES_API_KEY") -> str | None:
    """The key `connect_account` stored in the keyring, or None (keyring not installed, no backend, no
    entry, any keyring error). Imports keyring lazily. Never logs the key."""
    try:
        backend = _keyring_backend()
        value = backend.get_password(KEYRING_SERVICE, env_var)
    except Exception as exc:  # StoreError or any backend failure: the keyring is simply not a source
        log.debug("no key from the keyring (%s)", type(exc).__name__)
        return None
    return value if isinstance(value, str) and value else None


def with_stored_key(settings: Settings) -> tuple[Settings, str]:
    """The key from MODELGATES_API_KEY, else the keyring entry connect_account saved (the keyring
    package is imported only then); and a description of where it came from, never the key."""
    if settings.api_key is not None:
        return settings, "from MODELGATES_API_KEY"
    stored = read_keyring_key()
    if stored is None:
        return settings, "NOT set (create_auth_code will refuse)"
    try:
        key = parse_api_key(stored)
    except ConfigError:
        return settings, "NOT set (the keyring entry is not a usable key)"
    entry = f"keyring:{KEYRING_SERVICE}/MODELGATES_API_KEY"
    return replace(settings, api_key=key), f"from the OS keyring ({entry})"


def _save_keyring(destination: Destination, key: str) -> None:
    backend = _keyring_backend()
    try:
        backend.set_password(KEYRING_SERVICE, destination.env_var, key)
    except Exception as exc:
        detail = str(exc) if key not in str(exc) else "details withheld"
        raise StoreError(
            f"store: the keyring refused the key ({type(exc).__name__}: {_show(detail, 120)}); "
            'use store: "env_file" instead'
        ) from None
    log.info("saved %s to %s", destination.env_var, destination.saved_to)


# --- the dotenv file -----------------------------------------------------------------------------


def dotenv_value(key: str) -> str:
    """`key` as a dotenv value that every common parser reads back exactly: bare when it is made of
    safe characters (an `sk-...` key is), else single-quoted, else double-quoted when that is exact."""
    if not key or any(not (" " <= ch <= "~") for ch in key):
        raise StoreError("env_file: the new key is not printable ASCII, so it was not written to a dotenv file")
    if _BARE_VALUE.fullmatch(key):
        return key
    if "'" not in key and "\\" not in key:
        return f"'{key}'"
    if not any(ch in key for ch in '"\\$`'):
        return f'"{key}"'
    raise StoreError('env_file: the new key holds both quotes and backslashes; use store: "keyring" for it')


def _line_ending(data: bytes) -> bytes:
    """The file's first line ending, so that an appended line matches the file's style."""
    index = data.find(b"\n")
    cr = data.find(b"\r")
    if cr != -1 and (index == -1 or cr < index):
        return b"\r\n" if data[cr : cr + 2] == b"\r\n" else b"\r"
    return b"\n"


def _continued_lines(lines: list[bytes], index: int, rest: bytes) -> int:
    """How many lines after `lines[index]` belong to the quoted value that `rest` (the text after
    `VAR=`) opens and does not close: python-dotenv and Node's dotenv read such a value across lines.
    0 when the quote closes on its own line, or never closes (then nothing more is claimed)."""
    quote = rest[:1]
    if quote not in (b'"', b"'", b"`"):
        return 0
    closing = re.compile(rb"(?<!\\)" + re.escape(quote))  # an escaped quote does not close it
    if closing.search(rest, 1):
        return 0
    for offset, line in enumerate(lines[index + 1 :], 1):
        if closing.search(line):
            return offset
    return 0


def updated_dotenv(old: bytes | None, env_var: str, value: str) -> bytes:
    """The file's new bytes: the first `VAR=` / `export VAR=` line (spaces around `=` allowed) gets the
    new value, keeping its indent, `export ` and separator; later lines that set the same variable are
    dropped (parsers differ on whether the first or the last one wins, so the new key must be the only
    one), as are the further lines of an old value quoted across lines. Without such a line one is
    appended. Every other byte stays as it was."""
    if not old:
        return f"{env_var}={value}\n".encode("ascii")
    assignment = re.compile(
        rb"(?P<lead>(?:\xef\xbb\xbf)?[ \t]*(?:export[ \t]+)?)"
        + re.escape(env_var.encode("ascii"))
        + rb"(?P<sep>[ \t]*=[ \t]*)"
    )
    lines = old.splitlines(keepends=True)
    out: list[bytes] = []
    replaced = False
    index = 0
    while index < len(lines):
        line = lines[index]
        match = assignment.match(line)
        if match is None:
            out.append(line)
            index += 1
            continue
        body = line.rstrip(b"\r\n")
        skip = _continued_lines(lines, index, body[match.end() :])
        if not replaced:  # a later duplicate would shadow (or be shadowed by) the new key: dropped
            last = lines[index + skip]
            ending = last[len(last.rstrip(b"\r\n")) :]
            out.append(
                match.group("lead") + env_var.encode("ascii") + match.group("sep") + value.encode("ascii") + ending
            )
            replaced = True
        index += 1 + skip
    if not replaced:
        newline = _line_ending(old)
        if not old.endswith(_NEWLINES):
            out.append(newline)
        out.append(f"{env_var}={value}".encode("ascii") + newline)
    return b"".join(out)


if sys.platform == "win32":  # pragma: no cover - no flock; one process at a time is all we can do

    @contextlib.contextmanager
    def _folder_lock(dir_fd: int) -> Iterator[None]:
        yield

else:
    import fcntl

    @contextlib.contextmanager
    def _folder_lock(dir_fd: int) -> Iterator[None]:
        """An exclusive flock on the folder itself: it serialises read-modify-replace across threads
        (each holds its own open descriptor) and processes, and leaves no lock file behind."""
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(dir_fd, fcntl.LOCK_UN)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A folder on the way to the file, opened without following a symlink in its place.
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | _CLOEXEC
# The new content is first written to a file named `.env` inside a private folder with this name
# beside the target: any gitignore that ignores `.env` (GitHub's Python one does; none ignores
# `*.tmp`) ignores it at every moment, whatever the target is called.
_SAVE_FOLDER = ".mcp-modelgates-save."
_SAVE_FOLDER_NAME = re.compile(re.escape(_SAVE_FOLDER) + r"[0-9a-f]{12}")
_STAGED = ".env"
# Earlier versions staged `<target>.<12 hex>.tmp` beside the target; a crash could leave one behind.
_OLD_TEMPORARY = re.compile(r"(?P<target>.+)\.[0-9a-f]{12}\.tmp")
_MAX_CLIMB = 256  # folders climbed back towards the workspace before giving up


def _changed(path: Path) -> StoreError:
    return StoreError(
        f"env_file: {_show(path)} changed since the flow started (a symlink now leads elsewhere, or a folder "
        "on the way was moved or removed); nothing was written"
    )


def _open_folder(destination: Destination, path: Path) -> tuple[int, os.stat_result]:
    """The file's folder, opened from the workspace one component at a time, none of them through a
    symlink; and the workspace as it is now. plan() resolved `path`, so a symlink met here was
    swapped in since: the descriptor is the folder inside the workspace whatever the path does."""
    workspace = destination.workspace or path.parent
    try:
        parts = path.parent.relative_to(workspace).parts
    except ValueError:
        raise _changed(path) from None
    if not _is_dotenv_name(path.name) or any(part in ("", ".", "..") for part in parts):
        raise _changed(path)
    try:
        fd = os.open(workspace, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    except OSError as exc:
        raise StoreError(f"env_file: cannot open the workspace {_show(workspace)} ({exc.strerror})") from None
    try:
        top = os.fstat(fd)
        if destination.workspace_id is not None and destination.workspace_id != (top.st_dev, top.st_ino):
            raise _changed(path)  # another folder now has the workspace's name
        for part in parts:
            try:
                child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                raise _changed(path) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
                    raise _changed(path) from None
                raise StoreError(f"env_file: cannot open the folder {_show(path.parent)} ({exc.strerror})") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, top


def _within(dir_fd: int, workspace: os.stat_result) -> bool:
    """Whether the open folder is, right now, the workspace or below it: climbing `..` from it meets
    the workspace. A folder moved out of the workspace after it was opened does not."""
    fd = os.dup(dir_fd)
    try:
        for _ in range(_MAX_CLIMB):
            here = os.fstat(fd)
            if os.path.samestat(here, workspace):
                return True
            parent = os.open("..", _FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            if os.path.samestat(os.fstat(fd), here):  # the root is its own parent
                return False
        return False
    except OSError:  # a folder on the way up that cannot be opened is not the workspace's
        return False
    finally:
        os.close(fd)


def _remove_save_folder(name: str, dir_fd: int) -> None:
    fd = os.open(name, _FOLDER_FLAGS, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _clean_leftovers(dir_fd: int) -> None:
    """Remove what a save killed part-way left in this folder (a private save folder, or an earlier
    version's temporary file), when this user owns it. Called under the folder lock, so no save in
    progress can own one. Best effort: a leftover that cannot be removed stays."""
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        old = _OLD_TEMPORARY.fullmatch(name)
        ours = _SAVE_FOLDER_NAME.fullmatch(name) is not None
        if not ours and (old is None or not _is_dotenv_name(old["target"])):
            continue
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if info.st_uid != os.geteuid():
                continue
            if ours and stat.S_ISDIR(info.st_mode):
                _remove_save_folder(name, dir_fd)
            elif not ours and stat.S_ISREG(info.st_mode):
                os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            log.debug("could not remove the leftover %s (%s)", _show(name), exc.strerror)


def _read_existing(name: str, dir_fd: int, path: Path) -> tuple[bytes | None, os.stat_result | None]:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file is now a symlink
            raise _changed(path) from None
        raise StoreError(f"env_file: cannot read {_show(path)} ({exc.strerror}); nothing was written") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"env_file: {_show(path)} is not a regular file; nothing was written")
        return file.read(), info


def _write_staged(folder_fd: int, data: bytes, previous: os.stat_result | None) -> None:
    fd = os.open(_STAGED, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600, dir_fd=folder_fd)
    try:
        if previous is not None:
            with contextlib.suppress(OSError):  # only root can give a file away; keep ours then
                os.fchown(fd, previous.st_uid, previous.st_gid)
        os.fchmod(fd, 0o600)  # a live key is for its owner alone, whatever the old file allowed
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(name: str, dir_fd: int, data: bytes, previous: os.stat_result | None) -> None:
    """Write `data` to `.env` in a fresh private folder (0700) beside `name`, fsync it, and rename it
    over `name`; the private folder goes again. A crash at any point leaves the old or the new file,
    and at most a private folder that the next save removes."""
    folder = f"{_SAVE_FOLDER}{secrets.token_hex(6)}"
    os.mkdir(folder, 0o700, dir_fd=dir_fd)
    try:
        folder_fd = os.open(folder, _FOLDER_FLAGS, dir_fd=dir_fd)
        try:
            if os.fstat(folder_fd).st_uid != os.geteuid():  # swapped for someone else's since mkdir
                raise OSError(errno.EPERM, "the private folder is not ours")
            os.fchmod(folder_fd, 0o700)  # the umask may have left it unusable, never wider
            try:
                _write_staged(folder_fd, data, previous)
                os.replace(_STAGED, name, src_dir_fd=folder_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(_STAGED, dir_fd=folder_fd)
                raise
        finally:
            os.close(folder_fd)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(folder, dir_fd=dir_fd)
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows
        os.fsync(dir_fd)


def _tightened(path: Path, previous: os.stat_result | None) -> str:
    mode = stat.S_IMODE(previous.st_mode) if previous is not None else 0o600
    if not mode & 0o077:
        return ""
    return f"The mode of {path} was tightened from {mode:04o} to 0600, so that only its owner can read the key."


def _save_env_file(destination: Destination, key: str) -> str:
    path = destination.path
    if path is None:
        raise StoreError("env_file: the destination has no file path")
    value = dotenv_value(key)
    dir_fd, workspace = _open_folder(destination, path)
    try:
        with _folder_lock(dir_fd):
            if not _within(dir_fd, workspace):
                raise _changed(path)
            _clean_leftovers(dir_fd)
            old, previous = _read_existing(path.name, dir_fd, path)
            try:
                _replace(path.name, dir_fd, updated_dotenv(old, destination.env_var, value), previous)
            except OSError as exc:
                raise StoreError(
                    f"env_file: cannot write {_show(path)} ({exc.strerror or type(exc).__name__}); "
                    "the file is unchanged"
                ) from None
            if not _within(dir_fd, workspace):  # the folder was moved out while the file was written
                with contextlib.suppress(OSError):
                    os.unlink(path.name, dir_fd=dir_fd)
                raise StoreError(
                    f"env_file: the folder of {_show(path)} was moved out of the workspace during the save; "
                    "the key was not left there"
                )
    finally:
        os.close(dir_fd)
    log.info("saved %s to %s", destination.env_var, path)
    return _tightened(path, previous)


def save(destination: Destination, key: str) -> str:
    """Store the key; return a sentence for the user about what else changed ("" when nothing did).

    env_file: the file ends up with mode 0600 (an existing file keeps its owner where allowed; a
    wider mode is tightened, and the sentence says so); an existing file keeps every other line
    byte for byte (line endings, comments, missing final newline...); an existing `VAR=` or
    `export VAR=` line (also with spaces around `=`) for env_var is replaced (keeping its indent,
    `export ` prefix and separator; later duplicate lines for it are dropped), else one line is
    appended (after a newline when the file did not end with one; in the file's own line ending).
    The value is bare, or quoted when it needs it, so that dotenv parsers read it back exactly.

    The folder is reached from the workspace one component at a time without following a symlink,
    so the bytes land inside the workspace whatever happens to the path meanwhile; a symlink or a
    moved folder there is a StoreError. The new content goes to `.env` in a private folder beside
    the file, fsync'd and renamed over it, so a crash leaves the old or the new file and no key in
    a file that a gitignore with `.env` misses; the next save removes such leftovers. An exclusive
    flock on the folder spans read-modify-replace, so concurrent saves (threads or processes) lose
    no line. keyring: keyring.set_password(KEYRING_SERVICE, env_var, key). Errors -> StoreError
    (never containing the key). The key is never logged. Synchronous: call it from a worker thread
    in async code."""
    if destination.store == "keyring":
        _save_keyring(destination, key)
        return ""
    return _save_env_file(destination, key)
