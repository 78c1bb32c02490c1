"""server.json against the official registry schema, and one version everywhere."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import version

import jsonschema

from mcp_modelgates import __version__
from tests.conftest import ROOT, server_command

# The official registry schema, carried with the tests: tests/registry/README.md says where it comes from.
SCHEMA = ROOT / "tests" / "registry" / "server.schema.json"
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
SERVER_JSON = json.loads((ROOT / "server.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_server_json_is_valid_against_the_registry_schema() -> None:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "tests/registry/server.schema.json was edited"
    schema = json.loads(raw)
    assert schema["$id"] == SERVER_JSON["$schema"]
    jsonschema.Draft7Validator(schema).validate(SERVER_JSON)


def test_the_registry_schema_catches_a_broken_server_json() -> None:
    broken = {**SERVER_JSON, "packages": [{**SERVER_JSON["packages"][0], "transport": {"type": "carrier-pigeon"}}]}
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_bytes())).iter_errors(broken))
    assert errors, "the schema accepted an unknown transport type"


def test_server_json_describes_the_pypi_package_and_secret_key() -> None:
    assert SERVER_JSON["$schema"] == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
    assert SERVER_JSON["name"] == "io.github.ModelGatesTeam/mcp-modelgates"
    (package,) = SERVER_JSON["packages"]
    assert (package["registryType"], package["identifier"], package["runtimeHint"]) == ("pypi", "mcp-modelgates", "uvx")
    assert package["transport"] == {"type": "stdio"}
    env = {v["name"]: v for v in package["environmentVariables"]}
    assert env["MODELGATES_API_KEY"]["isSecret"] is True
    assert {"MODELGATES_BASE_URL", "MODELGATES_TIMEOUT", "MODELGATES_MAX_RETRIES"} <= set(env)


def test_readme_carries_the_registry_ownership_line() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"<!-- mcp-name: {SERVER_JSON['name']} -->" in readme


def _server_info() -> dict[str, str]:
    """serverInfo as a client sees it: one initialize over stdio, then EOF ends the server."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATES_")}
    out = subprocess.run(
        server_command(), input=json.dumps(init) + "\n", capture_output=True, text=True, env=env, timeout=30, check=True
    )
    info: dict[str, str] = json.loads(out.stdout.splitlines()[0])["result"]["serverInfo"]
    return info


def test_one_version_everywhere() -> None:
    expected = PYPROJECT["project"]["version"]
    cli = subprocess.run([*server_command(), "--version"], capture_output=True, text=True, check=True)
    server_info = _server_info()
    assert server_info["name"] == "mcp-modelgates"
    assert {
        "pyproject": expected,
        "installed metadata": version("mcp-modelgates"),
        "__version__": __version__,
        "server.json": SERVER_JSON["version"],
        "server.json package": SERVER_JSON["packages"][0]["version"],
        "--version": cli.stdout.strip().removeprefix("mcp-modelgates "),
        "serverInfo": server_info["version"],
    } == dict.fromkeys(
        [
            "pyproject",
            "installed metadata",
            "__version__",
            "server.json",
            "server.json package",
            "--version",
            "serverInfo",
        ],
        expected,
    )


def test_python_dash_m_runs_the_same_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "mcp_modelgates", "--version"], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, f"mcp-modelgates {__version__}")


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README holds exactly two set-up commands"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
