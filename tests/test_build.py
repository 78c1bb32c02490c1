"""The package as a user gets it: a wheel and an sdist that build cleanly, a wheel that installs and
runs in a fresh environment (pip, uvx), and the lowest dependency versions pyproject.toml allows.

Installs come from the package index through pip and uv (their caches make reruns quick); every
venv is made under pytest's tmp dir, never in the source tree.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from packaging.requirements import Requirement

from tests.conftest import API_KEY, ROOT, wire
from tests.fake_api import FakeModelGates

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
BIN = Path(sys.executable).parent
TIMEOUT = 600


def sh(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def tool(name: str) -> str:
    """A tool from the [test] extra, next to this interpreter."""
    path = shutil.which(name, path=str(BIN))
    assert path, f"{name} is not installed next to {sys.executable} (pip install -e '.[test]')"
    return path


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build`: the sdist, then the wheel built from that sdist (so the sdist is complete)."""
    out = tmp_path_factory.mktemp("dist")
    proc = sh(sys.executable, "-m", "build", "--installer", "uv", "--outdir", out, ROOT)
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert [p.name for p in wheels] == [f"mcp_modelgates-{VERSION}-py3-none-any.whl"]
    assert [p.name for p in sdists] == [f"mcp_modelgates-{VERSION}.tar.gz"]
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_the_package_and_py_typed_but_no_tests(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = whl.namelist()
        metadata = whl.read(f"mcp_modelgates-{VERSION}.dist-info/METADATA").decode()
        entry_points = whl.read(f"mcp_modelgates-{VERSION}.dist-info/entry_points.txt").decode()
    assert "mcp_modelgates/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"mcp_modelgates", f"mcp_modelgates-{VERSION}.dist-info"}, names
    assert "mcp-modelgates = mcp_modelgates.cli:main" in entry_points
    requires = [Requirement(ln.split(": ", 1)[1]) for ln in metadata.splitlines() if ln.startswith("Requires-Dist: ")]
    declared = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    assert sorted(str(r) for r in requires if r.marker is None) == sorted(map(str, declared))


def test_sdist_holds_the_sources_and_tests_but_nothing_installed_or_built(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    needed = ["pyproject.toml", "README.md", "LICENSE", "server.json", "mcp_modelgates/py.typed", "tests/fake_api.py"]
    needed += ["scripts/cursor_link.py", "tests/e2e/package-lock.json"]
    assert [n for n in needed if n not in names] == []
    unwanted = [n for n in names if re.search(r"(^|/)(node_modules|\.venv|__pycache__|\.mypy_cache|dist)(/|$)", n)]
    assert unwanted == []


def test_pip_install_of_the_wheel_in_a_fresh_venv_runs(dist: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    sh(venv / "bin" / "python", "-m", "pip", "install", "-q", dist["wheel"])
    help_text = sh(venv / "bin" / "mcp-modelgates", "--help").stdout
    assert help_text.startswith("usage: mcp-modelgates") and "MODELGATES_BASE_URL" in help_text
    assert sh(venv / "bin" / "mcp-modelgates", "--version").stdout.strip() == f"mcp-modelgates {VERSION}"


def test_uvx_runs_the_wheel(dist: dict[str, Path]) -> None:
    # --refresh-package: never a tool environment cached from an earlier wheel of the same version
    proc = sh(
        tool("uvx"), "--refresh-package", "mcp-modelgates", "--from", dist["wheel"], "mcp-modelgates", "--version"
    )
    assert proc.stdout.strip() == f"mcp-modelgates {VERSION}"


def test_uvx_runs_the_checkout_as_the_readme_shows() -> None:
    """`uvx --from /path/to/checkout mcp-modelgates`, the README's form for a clone."""
    readme = (ROOT / "README.md").read_text()
    assert "uvx --from /path/to/mcp-modelgates mcp-modelgates" in readme
    proc = sh(tool("uvx"), "--refresh-package", "mcp-modelgates", "--from", ROOT, "mcp-modelgates", "--version")
    assert proc.stdout.strip() == f"mcp-modelgates {VERSION}"


def lower_bound(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,.*)?", requirement)
    assert match, f"{requirement}: every dependency needs a tested lower bound"
    name, low = match.group(1), match.group(2)
    return name.lower(), low + ".0" * (2 - low.count("."))  # "2.3" is installed as 2.3.0


@pytest.mark.anyio
async def test_lowest_allowed_dependencies_serve_the_same_tools(dist: dict[str, Path], tmp_path: Path) -> None:
    """Installs the wheel with each direct dependency at its lower bound, then drives that venv's
    console script over stdio: the same tool definitions as the snapshot, and both API tools work."""
    venv = tmp_path / "lowest"
    uv = tool("uv")
    sh(uv, "venv", "-q", "--python", sys.executable, venv)
    deps = PYPROJECT["project"]["dependencies"]
    # the dependencies named directly, so that lowest-direct takes each one's lower bound
    sh(
        uv,
        "pip",
        "install",
        "-q",
        "--python",
        venv / "bin" / "python",
        "--resolution",
        "lowest-direct",
        dist["wheel"],
        *deps,
    )
    frozen = sh(uv, "pip", "freeze", "--python", venv / "bin" / "python").stdout
    installed = dict(line.lower().split("==", 1) for line in frozen.splitlines() if "==" in line)
    assert {name: installed.get(name) for name, _ in map(lower_bound, deps)} == dict(map(lower_bound, deps))

    snapshot = json.loads((ROOT / "tests" / "snapshots" / "tools.json").read_text())
    keys = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    with FakeModelGates(api_key=API_KEY) as fake:
        params = StdioServerParameters(
            command=str(venv / "bin" / "mcp-modelgates"),
            env={"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url, "PATH": "/usr/bin:/bin"},
        )
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            pair = await session.call_tool("generate_pkce", {})
            verifier = wire(pair)["structuredContent"]["code_verifier"]
            challenge = wire(pair)["structuredContent"]["code_challenge"]
            created = wire(
                await session.call_tool(
                    "create_auth_code",
                    {
                        "callback_url": "http://localhost:3000/cb",
                        "code_challenge": challenge,
                        "code_challenge_method": "S256",
                    },
                )
            )
            code = created["structuredContent"]["data"]["id"]
            args = {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
            exchanged = wire(await session.call_tool("exchange_auth_code", args))
            reused = wire(await session.call_tool("exchange_auth_code", args))
    tools = [{k: v for k, v in wire(t).items() if k in keys} for t in listed.tools]
    assert tools == snapshot
    assert exchanged["structuredContent"]["user_id"] == "user_2abc" and not exchanged.get("isError")
    assert reused["isError"] is True and "HTTP 403" in reused["content"][0]["text"]
