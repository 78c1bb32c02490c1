"""Key storage on its own: workspace resolution, every refusal of plan(), exact dotenv bytes and modes,
atomic replacement, concurrent saves (threads and processes), the keyring through a real file backend."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.core
import pytest
from keyring.backends import chainer, fail, null
from keyrings.alt.file import PlaintextKeyring

from mcp_modelgates import keystore
from mcp_modelgates.keystore import KEYRING_SERVICE, Destination, StoreError, plan, read_keyring_key, save
from tests.conftest import ROOT

NEW_KEY = "sk-new-live-key-9d2e7c4b1a"  # distinctive, so a leak anywhere is easy to find
VAR = "MODELGATES_API_KEY"


def tree(*folders: Path) -> dict[str, bytes | str]:
    """Every entry under the folders (symlinks as their target), to show that nothing was created."""
    seen: dict[str, bytes | str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                seen[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = path.read_bytes()
            else:
                seen[str(path)] = "dir"
    return seen


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / ".env").write_bytes(b"SECRET=outside\n")
    return folder


@pytest.fixture
def file_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PlaintextKeyring:
    """keyrings.alt's plaintext file backend, its file in tmp_path; the previous backend comes back after."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring" / "keyring_pass.cfg")
    keyring.set_keyring(backend)
    return backend


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: keyring.backend.KeyringBackend) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(backend)


# --- the workspace -------------------------------------------------------------------------------


def test_workspace_order_configured_then_first_file_root_then_cwd(tmp_path: Path) -> None:
    home = tmp_path / "home"
    configured, root, second, cwd = (home / name for name in ("configured", "root one", "root2", "cwd"))
    for folder in (configured, root, second, cwd):
        folder.mkdir(parents=True)
    roots = ["https://example.com/repo", "git://host/x", root.as_uri(), str(second)]

    assert keystore.resolve_workspace(str(configured), roots, cwd=cwd, home=home) == configured
    # a percent-encoded file URI (the space) after two non-file roots, which are skipped
    assert keystore.resolve_workspace(None, roots, cwd=cwd, home=home) == root
    assert keystore.resolve_workspace("", roots, cwd=cwd, home=home) == root  # empty counts as unset
    assert keystore.resolve_workspace(None, [str(second), root.as_uri()], cwd=cwd, home=home) == second
    assert keystore.resolve_workspace(None, [f"file://localhost{second}"], cwd=cwd, home=home) == second
    assert keystore.resolve_workspace(None, ["https://example.com/"], cwd=cwd, home=home) == cwd
    assert keystore.resolve_workspace(None, [], cwd=cwd, home=home) == cwd


def test_workspace_is_resolved_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    real = home / "real"
    real.mkdir(parents=True)
    (home / "link").symlink_to(real)
    monkeypatch.setenv("HOME", str(home))
    assert keystore.resolve_workspace("link", [], cwd=home, home=home) == real  # relative to cwd
    assert keystore.resolve_workspace("~/link", [], cwd=tmp_path, home=home) == real
    assert keystore.resolve_workspace(None, [], cwd=home / "link" / ".." / "real", home=home) == real


@pytest.mark.parametrize(
    ("configured", "roots", "cwd", "fragment"),
    [
        (None, [], "/", "file system root"),
        (None, [], "HOME", "home folder"),
        ("/", [], "CWD", "file system root"),
        ("HOME", [], "CWD", "home folder"),
        (None, ["file:///"], "CWD", "file system root"),
        (None, ["HOME_URI"], "CWD", "home folder"),
        ("MISSING", [], "CWD", "does not exist"),
        ("FILE", [], "CWD", "is not a folder"),
        ("${workspaceFolder}", [], "CWD", "does not exist"),  # a client that does not fill the variable
        (None, ["MISSING_URI"], "CWD", "does not exist"),  # the first root decides; no fallback to cwd
    ],
)
def test_workspace_refusals_say_how_to_set_it(
    tmp_path: Path, configured: str | None, roots: list[str], cwd: str, fragment: str
) -> None:
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    (work / "file.txt").write_text("x")
    names = {
        "HOME": str(home),
        "CWD": str(work),
        "MISSING": str(work / "missing"),
        "FILE": str(work / "file.txt"),
        "HOME_URI": home.as_uri(),
        "MISSING_URI": (work / "gone").as_uri(),
    }
    with pytest.raises(StoreError) as caught:
        keystore.resolve_workspace(
            names.get(configured, configured) if configured else configured,
            [names.get(root, root) for root in roots],
            cwd=Path(names.get(cwd, cwd)),
            home=home,
        )
    message = str(caught.value)
    assert message.startswith("MODELGATES_WORKSPACE: ")
    assert fragment in message
    assert '"env": {"MODELGATES_WORKSPACE": "${workspaceFolder}"}' in message
    assert "\n" not in message


# --- plan(): refusals ----------------------------------------------------------------------------


def make_case(case: str, ws: Path, outside: Path) -> str:
    """Lay out the workspace for one refusal and return the env_file argument."""
    if case == "dotdot":
        return "../elsewhere/.env"
    if case == "dotdot_nested":
        (ws / "sub").mkdir()
        return "sub/../../elsewhere/.env"
    if case == "tilde":
        return "~/.env"
    if case == "absolute_elsewhere":
        return str(outside / ".env")
    if case == "symlinked_file":
        (ws / ".env").symlink_to(outside / ".env")
        return ".env"
    if case == "dangling_symlink_outside":
        (ws / ".env").symlink_to(outside / "new.env")
        return ".env"
    if case == "symlinked_parent":
        (ws / "config").symlink_to(outside)
        return "config/.env"
    if case == "symlinked_parent_deeper":
        (ws / "a").mkdir()
        (ws / "a" / "b").symlink_to(outside)
        return str(ws / "a" / "b" / "prod.env")
    if case == "symlink_to_non_dotenv_inside":
        (ws / "secrets.json").write_text("{}")
        (ws / ".env").symlink_to(ws / "secrets.json")
        return ".env"
    if case == "directory":
        (ws / ".env").mkdir()
        return ".env"
    if case == "missing_parent":
        return "nowhere/.env"
    if case == "parent_is_file":
        (ws / "notes.txt").write_text("x")
        return "notes.txt/.env"
    if case == "fifo":
        os.mkfifo(ws / ".env")
        return ".env"
    if case == "workspace_itself":
        return str(ws)
    return case  # a plain name


REFUSALS = [
    ("dotdot", "outside the workspace"),
    ("dotdot_nested", "outside the workspace"),
    ("tilde", "'~'"),
    ("absolute_elsewhere", "outside the workspace"),
    ("symlinked_file", "through a symlink"),
    ("dangling_symlink_outside", "through a symlink"),
    ("symlinked_parent", "through a symlink"),
    ("symlinked_parent_deeper", "through a symlink"),
    ("symlink_to_non_dotenv_inside", "not a dotenv file name"),
    ("directory", "is a folder"),
    ("missing_parent", "does not exist"),
    ("parent_is_file", "is not a folder"),
    ("fifo", "not a regular file"),
    ("workspace_itself", "not a dotenv file name"),
    ("config.json", "not a dotenv file name"),
    (".envrc", "not a dotenv file name"),
    ("env", "not a dotenv file name"),
    (".env.example", "not a dotenv file name"),
    (".env.", "not a dotenv file name"),
    ("..", "not a dotenv file name"),
    ("", "must name a dotenv file"),
    ("a\x00.env", "NUL"),
]


@pytest.mark.parametrize(("case", "fragment"), REFUSALS, ids=[case or "empty" for case, _ in REFUSALS])
def test_plan_refuses_and_creates_nothing(ws: Path, outside: Path, case: str, fragment: str) -> None:
    env_file = make_case(case, ws, outside)
    before = tree(ws, outside)
    with pytest.raises(StoreError) as caught:
        plan("env_file", env_file, VAR, ws)
    message = str(caught.value)
    assert message.startswith("env_file: "), message
    assert fragment in message
    assert "\n" not in message and "\x00" not in message
    assert tree(ws, outside) == before


@pytest.mark.parametrize("env_var", ["", "1KEY", "KEY-NAME", "KEY NAME", "KEY\n", "KÉY", "KEY=x"])
def test_plan_refuses_a_bad_variable_name(ws: Path, env_var: str) -> None:
    with pytest.raises(StoreError, match=r"^env_var: ") as caught:
        plan("env_file", ".env", env_var, ws)
    assert "\n" not in str(caught.value)
    assert list(ws.iterdir()) == []


def test_plan_refuses_an_unknown_store_and_a_missing_workspace(ws: Path) -> None:
    with pytest.raises(StoreError, match=r"^store: must be 'env_file' or 'keyring'"):
        plan("vault", ".env", VAR, ws)
    with pytest.raises(StoreError, match=r"^env_file: .*MODELGATES_WORKSPACE"):
        plan("env_file", ".env", VAR, None)
    with pytest.raises(StoreError, match=r"^env_file: the workspace"):
        plan("env_file", ".env", VAR, ws / "missing")


@pytest.mark.parametrize(
    ("env_file", "expected"),
    [
        (".env", ".env"),
        ("./.env", ".env"),
        (".env.local", ".env.local"),
        ("prod.env", "prod.env"),
        ("sub/.env", "sub/.env"),
        ("sub/../.env", ".env"),  # `..` that stays inside is harmless
        ("ABSOLUTE", "sub/.env.production"),
        ("inside_link/.env", "sub/.env"),  # a symlink inside the workspace is followed
    ],
)
def test_plan_accepts_dotenv_files_inside(ws: Path, env_file: str, expected: str) -> None:
    (ws / "sub").mkdir()
    (ws / "inside_link").symlink_to(ws / "sub")
    if env_file == "ABSOLUTE":
        env_file = str(ws / "sub" / ".env.production")
    before = tree(ws)
    destination = plan("env_file", env_file, VAR, ws)
    assert destination == Destination("env_file", VAR, ws / expected, ws)
    assert destination.path is not None and destination.path.is_absolute()
    assert destination.saved_to == str(ws / expected)
    assert tree(ws) == before


# --- save(): the dotenv file ---------------------------------------------------------------------


def test_save_creates_a_new_file_with_mode_0600(ws: Path) -> None:
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    finally:
        os.umask(old_umask)
    assert (ws / ".env").read_bytes() == f"{VAR}={NEW_KEY}\n".encode()
    assert stat.S_IMODE((ws / ".env").stat().st_mode) == 0o600
    assert sorted(p.name for p in ws.iterdir()) == [".env"]  # no temporary or lock file left


EXISTING = [
    pytest.param(
        b"# ModelGates\r\nexport MODELGATES_API_KEY=sk-old\r\nOTHER=1\r\n",
        b"# ModelGates\r\nexport MODELGATES_API_KEY=NEW\r\nOTHER=1\r\n",
        id="crlf-export-kept",
    ),
    pytest.param(
        b"A=1\n  MODELGATES_API_KEY = 'sk-old'  # prod\nB=2",
        b"A=1\n  MODELGATES_API_KEY = NEW\nB=2",
        id="spaces-around-equals-no-final-newline",
    ),
    pytest.param(b"A=1", b"A=1\nMODELGATES_API_KEY=NEW\n", id="append-after-missing-newline"),
    pytest.param(b"A=1\r\nB=2", b"A=1\r\nB=2\r\nMODELGATES_API_KEY=NEW\r\n", id="append-in-crlf-style"),
    pytest.param(b"A=1\n\n", b"A=1\n\nMODELGATES_API_KEY=NEW\n", id="append-after-blank-line"),
    pytest.param(
        b"# MODELGATES_API_KEY=commented\nMODELGATES_API_KEY_2=x\nXMODELGATES_API_KEY=y\n\tweird line  \n",
        b"# MODELGATES_API_KEY=commented\nMODELGATES_API_KEY_2=x\nXMODELGATES_API_KEY=y\n\tweird line  \nMODELGATES_API_KEY=NEW\n",
        id="lookalikes-untouched",
    ),
    pytest.param(
        b"MODELGATES_API_KEY=first\nA=\xff\xfe latin-1 \xe9\nexport MODELGATES_API_KEY=second\n",
        b"MODELGATES_API_KEY=NEW\nA=\xff\xfe latin-1 \xe9\n",
        id="duplicates-dropped-non-utf8-kept",
    ),
    pytest.param(b"", b"MODELGATES_API_KEY=NEW\n", id="empty-file"),
    pytest.param(
        b'A=1\r\nMODELGATES_API_KEY="sk-old\r\nB=not-a-line\r\nend"\r\nC=3\r\n',
        b"A=1\r\nMODELGATES_API_KEY=NEW\r\nC=3\r\n",
        id="old-value-quoted-across-lines",
    ),
    pytest.param(
        b"MODELGATES_API_KEY='x \\'\nstill the old value'\nB=2\n",
        b"MODELGATES_API_KEY=NEW\nB=2\n",
        id="escaped-quote-does-not-close",
    ),
    pytest.param(
        b"MODELGATES_API_KEY='never closed\nB=2\n",
        b"MODELGATES_API_KEY=NEW\nB=2\n",
        id="unclosed-quote-claims-no-other-line",
    ),
    pytest.param(b"\xef\xbb\xbfMODELGATES_API_KEY=old\n", b"\xef\xbb\xbfMODELGATES_API_KEY=NEW\n", id="bom"),
]


@pytest.mark.parametrize(("old", "new"), EXISTING)
def test_save_into_an_existing_file_changes_only_the_variable(ws: Path, old: bytes, new: bytes) -> None:
    (ws / ".env").write_bytes(old)
    (ws / ".env").chmod(0o600)
    assert save(plan("env_file", ".env", VAR, ws), NEW_KEY) == ""  # nothing else changed
    assert (ws / ".env").read_bytes() == new.replace(b"NEW", NEW_KEY.encode())
    assert stat.S_IMODE((ws / ".env").stat().st_mode) == 0o600
    assert sorted(p.name for p in ws.iterdir()) == [".env"]


def test_save_through_a_symlink_inside_writes_the_target(ws: Path) -> None:
    (ws / "config").mkdir()
    (ws / "config" / ".env").write_bytes(b"A=1\n")
    (ws / ".env").symlink_to("config/.env")
    save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    assert (ws / ".env").is_symlink()
    assert (ws / "config" / ".env").read_bytes() == f"A=1\n{VAR}={NEW_KEY}\n".encode()


@pytest.mark.parametrize(
    ("key", "written"),
    [
        ("sk-or-v1-0a9F_b.c:d/e+f@g%h,i=j", "sk-or-v1-0a9F_b.c:d/e+f@g%h,i=j"),
        ('sk-a b#c$HOME`x`"q"~', "'sk-a b#c$HOME`x`\"q\"~'"),
        ("sk-it's", '"sk-it\'s"'),
    ],
)
def test_values_read_back_exactly_by_a_shell(ws: Path, key: str, written: str) -> None:
    save(plan("env_file", ".env", VAR, ws), key)
    assert (ws / ".env").read_bytes() == f"{VAR}={written}\n".encode()
    shell = subprocess.run(
        ["sh", "-c", f'set -a; . ./.env; printf %s "${VAR}"'], cwd=ws, capture_output=True, text=True, check=True
    )
    assert shell.stdout == key


@pytest.mark.parametrize("key", ["", "sk-new\nINJECTED=1", "sk-ключ", "sk-\x1b[2J", "sk-'\\\""])
def test_a_key_no_dotenv_file_can_hold_exactly_is_refused_unwritten(ws: Path, key: str) -> None:
    (ws / ".env").write_bytes(b"A=1\n")
    with pytest.raises(StoreError, match=r"^env_file: ") as caught:
        save(plan("env_file", ".env", VAR, ws), key)
    assert key not in str(caught.value) or not key
    assert (ws / ".env").read_bytes() == b"A=1\n"


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    ws: Path, monkeypatch: pytest.MonkeyPatch, existing: bool, failing: str
) -> None:
    old = b"# keep me\r\nMODELGATES_API_KEY=sk-old\r\nA=1"
    if existing:
        (ws / ".env").write_bytes(old)
    destination = plan("env_file", ".env", VAR, ws)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore.os, failing, broken)
    with pytest.raises(StoreError) as caught:
        save(destination, NEW_KEY)
    monkeypatch.undo()
    assert str(caught.value).startswith("env_file: cannot write ")
    assert NEW_KEY not in str(caught.value)
    assert sorted(p.name for p in ws.iterdir()) == ([".env"] if existing else [])
    if existing:
        assert (ws / ".env").read_bytes() == old


@pytest.mark.parametrize("swap", ["file", "parent", "parent-inside", "workspace"])
def test_save_rechecks_for_a_symlink_swapped_in_since_plan(ws: Path, outside: Path, swap: str) -> None:
    (ws / "config").mkdir()
    (ws / "config" / ".env").write_bytes(b"A=1\n")
    destination = plan("env_file", "config/.env", VAR, ws)
    if swap == "file":
        (ws / "config" / ".env").unlink()
        (ws / "config" / ".env").symlink_to(outside / ".env")
    elif swap == "parent":
        (ws / "config").rename(ws / "moved")
        (ws / "config").symlink_to(outside)
    elif swap == "parent-inside":  # still inside, but not the file plan() checked
        (ws / "config").rename(ws / "moved")
        (ws / "config").symlink_to(ws / "moved")
    else:  # another folder now has the workspace's name, with the same layout
        ws.rename(ws.with_name("project.moved"))
        (ws / "config").mkdir(parents=True)
        (ws / "config" / ".env").write_bytes(b"A=1\n")
    before = tree(ws, outside)
    with pytest.raises(StoreError, match=r"^env_file: .* changed since the flow started"):
        save(destination, NEW_KEY)
    assert tree(ws, outside) == before
    assert (outside / ".env").read_bytes() == b"SECRET=outside\n"


def holds_key(data: bytes, key: str = NEW_KEY) -> bool:
    """Whether `data` holds any 6-character run of `key`: part of a key is a leak too."""
    return any(key[i : i + 6].encode() in data for i in range(len(key) - 5))


def key_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and holds_key(p.read_bytes())]


def test_a_folder_flipped_for_a_symlink_during_saves_never_puts_the_key_outside(ws: Path, outside: Path) -> None:
    """Someone who may rename entries in the workspace swaps `config` for a symlink to a folder
    outside and back, as fast as it can, while saves run: each lands inside or is refused."""
    (ws / "config").mkdir()
    destination = plan("env_file", "config/.env", VAR, ws)
    stop = threading.Event()

    def flip() -> None:
        config, real = ws / "config", ws / "config.real"
        while not stop.is_set():
            config.rename(real)
            config.symlink_to(outside)
            time.sleep(0)  # let a save run in either state
            config.unlink()
            real.rename(config)
            time.sleep(0)

    saved: list[str] = []
    refused: list[str] = []
    flipper = threading.Thread(target=flip)
    deadline = time.monotonic() + 60
    flipper.start()
    try:
        for i in range(300):
            if time.monotonic() > deadline:
                break
            try:  # a variable of its own per save: every save that succeeds leaves its own line
                save(dataclasses.replace(destination, env_var=f"KEY_{i}"), f"{NEW_KEY}-{i}")
            except StoreError as exc:
                refused.append(str(exc))
            else:
                saved.append(f"KEY_{i}={NEW_KEY}-{i}")
    finally:
        stop.set()
        flipper.join(timeout=10)
    assert key_files(outside) == []
    assert (outside / ".env").read_bytes() == b"SECRET=outside\n"
    assert sorted(p.name for p in outside.iterdir()) == [".env"]
    assert [m for m in refused if not m.startswith("env_file: ") or "changed since the flow started" not in m] == []
    written = (ws / "config" / ".env").read_text().splitlines() if saved else []
    assert sorted(written) == sorted(saved)  # each success landed inside; no refusal left a line
    assert sorted(p.name for p in ws.iterdir()) == ["config"] and not (ws / "config").is_symlink()
    save(destination, NEW_KEY)  # once the path holds still, the same destination works
    assert f"{VAR}={NEW_KEY}" in (ws / "config" / ".env").read_text().splitlines()


@pytest.mark.parametrize("when", ["before-the-lock", "while-writing"])
def test_a_folder_moved_out_of_the_workspace_mid_save_keeps_no_key_there(
    ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The folder, already open, is renamed to a place outside the workspace: an open descriptor
    follows it there, so the save must notice before writing, or take the file back."""
    (ws / "config").mkdir()
    (ws / "config" / ".env").write_bytes(b"A=1\n")
    destination = plan("env_file", "config/.env", VAR, ws)
    moved = outside / "config"
    if when == "before-the-lock":
        lock = keystore._folder_lock

        @contextlib.contextmanager
        def moving_lock(dir_fd: int) -> Iterator[None]:
            (ws / "config").rename(moved)
            with lock(dir_fd):
                yield

        monkeypatch.setattr(keystore, "_folder_lock", moving_lock)
    else:
        render = keystore.updated_dotenv

        def moving_render(old: bytes | None, env_var: str, value: str) -> bytes:
            (ws / "config").rename(moved)
            return render(old, env_var, value)

        monkeypatch.setattr(keystore, "updated_dotenv", moving_render)
    with pytest.raises(StoreError) as caught:
        save(destination, NEW_KEY)
    message = str(caught.value)
    assert message.startswith("env_file: ") and repr(str(ws / "config" / ".env")) in message
    assert NEW_KEY not in message and "\n" not in message
    assert key_files(outside) == [] and key_files(ws) == []
    if when == "before-the-lock":
        assert "changed since the flow started" in message
        assert [p.name for p in moved.iterdir()] == [".env"]
        assert (moved / ".env").read_bytes() == b"A=1\n"  # nothing was written
    else:
        assert "moved out of the workspace during the save; the key was not left there" in message
        assert list(moved.iterdir()) == []  # no private folder left either


# The "Environments" section of GitHub's Python.gitignore (github/gitignore), copied: it ignores
# `.env` anywhere, but no `*.tmp` and no other dotenv name.
STOCK_PYTHON_GITIGNORE = """\
# Environments
.env
.envrc
.venv
env/
venv/
ENV/
env.bak/
venv.bak/
"""

# Saves once, dying by SIGKILL just before the Nth file-system call of the save (a write is cut
# short first: all but its last 8 bytes go out); N = 0 runs to the end and prints the count.
CRASHING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mcp_modelgates import keystore
    ws, env_file, key, crash_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    destination = keystore.plan("env_file", env_file, "MODELGATES_API_KEY", ws)
    calls = 0
    def crashing(name, real):
        def call(*args, **kwargs):
            global calls
            calls += 1
            if calls == crash_at:
                if name == "write":
                    real(args[0], bytes(args[1])[:-8])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    for name in ("open", "mkdir", "write", "fsync", "fchmod", "fchown", "replace", "rename", "unlink", "rmdir"):
        setattr(os, name, crashing(name, getattr(os, name)))
    keystore.save(destination, key)
    print(calls)
    """
)


def git(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git in `ws`, blind to the machine's own configuration (a global excludes file would judge too)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=ws, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("env_file", [".env", "config/.env.local"])
def test_a_save_killed_at_any_step_leaves_no_key_that_git_would_pick_up(tmp_path: Path, env_file: str) -> None:
    old = b"# settings\nOTHER=1\n"
    new = old + f"{VAR}={NEW_KEY}\n".encode()

    def project(name: str) -> Path:
        ws = tmp_path / name
        (ws / "config").mkdir(parents=True)
        assert git(ws, "init", "-q").returncode == 0
        (ws / ".gitignore").write_text(STOCK_PYTHON_GITIGNORE)
        (ws / env_file).write_bytes(old)
        return ws

    def crash(ws: Path, crash_at: int) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-c", CRASHING_SAVE, str(ws), env_file, NEW_KEY, str(crash_at)]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)

    whole = crash(project("whole"), 0)
    assert whole.returncode == 0, whole.stderr
    steps = int(whole.stdout)
    assert 5 < steps < 80
    staged_seen = 0
    for crash_at in range(1, steps + 1):
        ws = project(f"crash{crash_at}")
        target = ws / env_file
        died = crash(ws, crash_at)
        assert died.returncode == -signal.SIGKILL, (crash_at, died.stderr)
        assert target.read_bytes() in (old, new), crash_at  # the old file or the new one, never a mix
        others = [p for p in key_files(ws) if p != target]
        staged_seen += bool(others)
        relative = [str(p.relative_to(ws)) for p in others]
        judged = git(ws, "check-ignore", "--", *relative).stdout.split() if relative else []
        assert sorted(judged) == sorted(relative), (crash_at, "git would pick up", set(relative) - set(judged))
        # The next save cleans up after the crashed one.
        save(plan("env_file", env_file, VAR, ws), NEW_KEY)
        assert target.read_bytes() == new
        left = {str(p.relative_to(ws)) for p in ws.rglob("*") if p.relative_to(ws).parts[0] != ".git"}
        assert left == {".gitignore", "config", env_file}, crash_at
    assert staged_seen > 0  # some crashes did catch the new key on its way


def test_leftovers_of_crashed_saves_are_removed_and_nothing_else(ws: Path) -> None:
    (ws / ".env").write_bytes(b"A=1\n")
    staged = ws / ".mcp-modelgates-save.0123456789ab"
    staged.mkdir(mode=0o700)
    (staged / ".env").write_bytes(b"A=1\nMODELGATES_API_KEY=sk-half-writ")
    (ws / ".mcp-modelgates-save.ba9876543210").mkdir()  # a crash after the rename: empty
    (ws / ".env.5f3a9c0e1b2d.tmp").write_bytes(b"MODELGATES_API_KEY=sk-half")  # an earlier version's
    (ws / "prod.env.00ff00ff00ff.tmp").write_bytes(b"MODELGATES_API_KEY=sk-half")
    kept = [".env.backup.tmp", "notes.5f3a9c0e1b2d.tmp", ".env.example.5f3a9c0e1b2d.tmp", ".mcp-modelgates-save.mine"]
    for name in kept:
        (ws / name).write_bytes(b"not a leftover of a save")
    if os.geteuid() == 0:  # someone else's leftover is theirs to remove
        theirs = ws / ".mcp-modelgates-save.00000000abcd"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        kept.append(theirs.name)
    save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    assert sorted(p.name for p in ws.iterdir()) == sorted([".env", *kept])
    assert (ws / ".env").read_bytes() == f"A=1\n{VAR}={NEW_KEY}\n".encode()


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o604, 0o620, 0o600, 0o400])
def test_a_file_that_holds_the_key_is_readable_by_its_owner_alone(ws: Path, mode: int) -> None:
    env = ws / ".env"
    env.write_bytes(b"A=1\n")
    env.chmod(mode)
    note = save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    tightened = f"The mode of {env} was tightened from {mode:04o} to 0600, so that only its owner can read the key."
    assert note == (tightened if mode & 0o077 else "")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_another_user_owns_keeps_its_owner_and_becomes_0600(ws: Path) -> None:
    """Root saving into a user's workspace (a container, say): the file stays the user's."""
    env = ws / ".env"
    env.write_bytes(b"A=1\n")
    os.chown(env, 65534, 65534)
    env.chmod(0o666)
    save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    info = env.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o600)


def test_concurrent_saves_from_threads_keep_both_lines(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each save waits inside its read-modify-replace for the other to arrive: without the lock both
    would read the same old bytes and the later rename would drop the earlier line."""
    (ws / ".env").write_bytes(b"KEEP=1\n")
    render = keystore.updated_dotenv
    arrived = threading.Semaphore(0)

    def slow_render(old: bytes | None, env_var: str, value: str) -> bytes:
        arrived.release()
        arrived.acquire(timeout=0.5)  # returns at once if the other save is inside too
        return render(old, env_var, value)

    monkeypatch.setattr(keystore, "updated_dotenv", slow_render)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            save(plan("env_file", ".env", name, ws), f"sk-{name.lower()}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("FIRST_KEY", "SECOND_KEY")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    lines = (ws / ".env").read_bytes().splitlines()
    assert lines[0] == b"KEEP=1"
    assert sorted(lines[1:]) == [b"FIRST_KEY=sk-first_key", b"SECOND_KEY=sk-second_key"]


def test_concurrent_saves_from_processes_keep_every_line(ws: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from mcp_modelgates import keystore
        render = keystore.updated_dotenv
        def slow(old, env_var, value):
            time.sleep(0.02)  # widen the read-modify-replace window
            return render(old, env_var, value)
        keystore.updated_dotenv = slow
        ws, prefix = Path(sys.argv[1]), sys.argv[2]
        for i in range(6):
            keystore.save(keystore.plan("env_file", ".env", f"{prefix}_{i}", ws), f"sk-{prefix}-{i}")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(ws), prefix], cwd=ROOT, stderr=subprocess.PIPE)
        for prefix in ("P", "Q", "R")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    lines = sorted((ws / ".env").read_bytes().splitlines())
    assert lines == sorted(f"{p}_{i}=sk-{p}-{i}".encode() for p in "PQR" for i in range(6))


# --- the keyring ---------------------------------------------------------------------------------


def test_keyring_round_trip_through_a_file_backend(file_keyring: PlaintextKeyring, tmp_path: Path) -> None:
    destination = plan("keyring", ".env", "TEAM_KEY", None)  # env_file and workspace play no part
    assert destination == Destination("keyring", "TEAM_KEY", None)
    assert destination.saved_to == f"keyring:{KEYRING_SERVICE}/TEAM_KEY"
    assert read_keyring_key("TEAM_KEY") is None
    save(destination, NEW_KEY)
    assert read_keyring_key("TEAM_KEY") == NEW_KEY
    assert read_keyring_key() is None  # the default name has no entry
    assert keyring.get_password("mcp-modelgates", "TEAM_KEY") == NEW_KEY
    assert Path(file_keyring.file_path).is_file()
    assert not any(p.name.startswith(".env") for p in tmp_path.rglob("*"))


def test_keyring_plan_refuses_where_no_backend_works(monkeypatch: pytest.MonkeyPatch) -> None:
    for backend in (fail.Keyring(), null.Keyring()):
        use_backend(monkeypatch, backend)
        with pytest.raises(StoreError) as caught:
            plan("keyring", ".env", VAR, None)
        message = str(caught.value)
        assert message.startswith("store: no usable OS keyring")
        assert 'store: "env_file"' in message and type(backend).__module__ in message
        assert read_keyring_key() is None
    # a chainer with nothing to chain (what a headless box without plugins would give)
    monkeypatch.setattr(keyring.backend, "_limit", lambda backend: False)
    use_backend(monkeypatch, chainer.ChainerBackend())
    with pytest.raises(StoreError, match=r"^store: no usable OS keyring"):
        plan("keyring", ".env", VAR, None)


def test_keyring_not_installed_suggests_the_extra_and_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)  # `import keyring` now raises ImportError
    with pytest.raises(StoreError) as caught:
        plan("keyring", ".env", VAR, None)
    assert str(caught.value) == (
        "store: the keyring package is not installed (pip install 'mcp-modelgates[keyring]'); "
        'or use store: "env_file" instead'
    )
    assert read_keyring_key() is None


def test_keyring_errors_become_store_errors_without_the_key(
    file_keyring: PlaintextKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = plan("keyring", ".env", VAR, None)

    def refuse(service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"locked, cannot store {password}")

    monkeypatch.setattr(file_keyring, "set_password", refuse)
    with pytest.raises(StoreError, match=r"^store: the keyring refused the key \(PasswordSetError") as caught:
        save(destination, NEW_KEY)
    assert NEW_KEY not in str(caught.value)

    def broken(service: str, username: str) -> str:
        raise keyring.errors.KeyringLocked("locked")

    monkeypatch.setattr(file_keyring, "get_password", broken)
    assert read_keyring_key() is None


def test_the_key_is_never_logged(
    ws: Path, file_keyring: PlaintextKeyring, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    (ws / ".env").write_bytes(f"{VAR}=sk-old\n".encode())
    save(plan("env_file", ".env", VAR, ws), NEW_KEY)
    save(plan("keyring", "", VAR, None), NEW_KEY)
    assert read_keyring_key() == NEW_KEY
    use_backend(monkeypatch, fail.Keyring())
    assert read_keyring_key() is None
    messages = [record.getMessage() for record in caplog.records]
    assert f"saved {VAR} to {ws / '.env'}" in messages
    assert f"saved {VAR} to keyring:{KEYRING_SERVICE}/{VAR}" in messages
    assert all(NEW_KEY not in message for message in messages)
    assert NEW_KEY not in caplog.text


def test_importing_the_module_does_not_import_keyring() -> None:
    code = "import sys, mcp_modelgates.keystore; print('keyring' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


@pytest.fixture(autouse=True)
def _no_stray_keyring_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own keyring choice must not leak into these tests."""
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
