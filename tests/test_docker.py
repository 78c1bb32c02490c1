"""The Dockerfile builds, and the container answers /healthz and stops cleanly, where a docker engine is available."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _engine() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not _engine(), reason="no docker engine (docker info fails): image not built")


def test_the_image_builds_runs_answers_healthz_and_stops_with_0() -> None:
    tag = f"mcp-modelgates-test:{uuid.uuid4().hex[:8]}"
    name = f"mcp-modelgates-test-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(["docker", "build", "-q", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    port = free_port()
    try:
        run = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000"]
        started = subprocess.run([*run, "-e", "MODELGATES_KEY_FROM_CLIENT=1", tag], capture_output=True, text=True)
        assert started.returncode == 0, started.stderr
        deadline, health = time.monotonic() + 60, None
        while time.monotonic() < deadline and health is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.5)
        assert health is not None and health.json()["status"] == "ok"
        assert subprocess.run(["docker", "stop", name], capture_output=True, timeout=60).returncode == 0
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True)
        assert code.stdout.strip() == "0"
        user = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Config.User}}", tag], capture_output=True, text=True
        )
        assert user.stdout.strip() not in ("", "root", "0")
        # Exposed on 0.0.0.0 with neither a token nor per-caller keys: refused before binding.
        refused = subprocess.run(["docker", "run", "--rm", tag], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "MODELGATES_HTTP_TOKEN" in refused.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
