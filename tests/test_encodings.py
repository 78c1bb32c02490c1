"""Compressed answers are held to the same size caps as plain ones: decoded bytes are counted as
they are produced, so no answer inflates in memory past the cap.

The stand-in sends gzip, deflate (zlib-wrapped and raw), `x-gzip`, nested codings (`gzip, gzip`,
`deflate, gzip`) and codings the server does not decode (`br` and `zstd`: httpx decodes them only
with packages that are not dependencies here). The bombs are a few KiB to 32 KiB on the wire and
32 to 128 MiB once decoded. In process, `tracemalloc` sees every buffer; then the installed console
script over stdio, whose peak RSS (VmHWM in /proc) is read between calls.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import subprocess
import threading
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, ClientFactory, server_command, stdio_params
from tests.fake_api import FakeModelGates, error_body

MIB = 1 << 20
CALLBACK = "https://myapp.com/auth/callback"
AUTH_CODE = {"id": "auth_code_xyz789", "app_id": 12345, "created_at": "2025-08-24T10:30:00Z"}
CREATE = ("create_auth_code", {"callback_url": CALLBACK})
EXCHANGE = ("exchange_auth_code", {"code": "auth_code_1"})
TOO_LARGE = "larger than 1024 KiB"
WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15, "raw-deflate": -15}  # zlib's window bits per coding


def _encode(data: bytes | None, codings: list[str], size: int = 0) -> bytes:
    """`data` (or `size` bytes of "x", made 1 MiB at a time) with each coding applied in order."""
    for i, coding in enumerate(codings):
        packer = zlib.compressobj(9, zlib.DEFLATED, WBITS[coding])
        if i == 0 and data is None:
            block = b"x" * MIB
            data = b"".join(packer.compress(block) for _ in range(size // MIB)) + packer.flush()
        else:
            data = packer.compress(data or b"") + packer.flush()
    return data or b""


def _header(codings: list[str]) -> str:
    return ", ".join("deflate" if c == "raw-deflate" else c for c in codings)


BOMBS = {
    "gzip": ["gzip"],
    "deflate": ["deflate"],
    "raw-deflate": ["raw-deflate"],
    "x-gzip": ["x-gzip"],
    "nested-gzip": ["gzip", "gzip"],
    "deflate-then-gzip": ["deflate", "gzip"],
}


@functools.cache
def bomb(name: str) -> bytes:
    codings = BOMBS[name]
    return _encode(None, codings, (128 if len(codings) > 1 else 32) * MIB)


def _text(result: Any) -> str:
    return str(result.content[0].text)


@contextlib.contextmanager
def _peak_traced() -> Any:
    """The peak of Python allocations inside the block, in bytes: `peak[0]` once it has ended."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
        peak[0] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- bombs stop at the cap


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
@pytest.mark.parametrize("name", list(BOMBS))
async def test_a_compressed_success_answer_is_refused_at_the_cap_without_inflating(
    fake: FakeModelGates, connect: ClientFactory, name: str, chunked: bool
) -> None:
    body = bomb(name)
    assert len(body) < 64 * 1024  # small on the wire: only counting decoded bytes can refuse it
    headers = {"Content-Type": "application/json", "Content-Encoding": _header(BOMBS[name])}
    fake.reply(200, body=body, headers=headers, chunked=chunked)
    async with connect(max_retries=0) as client:
        with _peak_traced() as peak:
            started = time.monotonic()
            result = await client.call_tool(*CREATE)
            elapsed = time.monotonic() - started
    text = _text(result)
    assert result.is_error is True and TOO_LARGE in text and "refused" in text, text
    assert peak[0] < 8 * MIB, f"peak {peak[0] / MIB:.1f} MiB while refusing {name}"
    assert elapsed < 5.0
    assert fake.requests[0].headers["accept-encoding"] == "identity"  # it asked for no coding at all


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["gzip", "nested-gzip"])
@pytest.mark.parametrize("call", [CREATE, EXCHANGE], ids=["create", "exchange"])
async def test_a_compressed_error_answer_is_read_only_as_far_as_its_excerpt(
    fake: FakeModelGates, connect: ClientFactory, name: str, call: tuple[str, dict[str, Any]]
) -> None:
    fake.reply(502, body=bomb(name), headers={"Content-Encoding": _header(BOMBS[name])}, chunked=True)
    async with connect(max_retries=0) as client:
        with _peak_traced() as peak:
            result = await client.call_tool(*call)
    text = _text(result)
    assert result.is_error is True and "HTTP 502" in text and "'xxxxxxxx" in text and len(text) < 800, text
    assert peak[0] < 8 * MIB, f"peak {peak[0] / MIB:.1f} MiB for an error answer's excerpt"


# ---------------------------------------------------------------- honest answers still decode


@pytest.mark.anyio
@pytest.mark.parametrize(
    "codings",
    [[], ["gzip"], ["x-gzip"], ["deflate"], ["raw-deflate"], ["gzip", "gzip"], ["deflate", "gzip", "gzip"]],
    ids=lambda c: "+".join(c) or "identity",
)
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_an_honest_compressed_answer_is_decoded(
    fake: FakeModelGates, connect: ClientFactory, codings: list[str], chunked: bool
) -> None:
    plain = json.dumps({"data": AUTH_CODE}).encode()
    header = _header(codings) or "identity"
    fake.reply(200, body=_encode(plain, codings), headers={"Content-Encoding": header}, chunked=chunked)
    refusal = _encode(json.dumps(error_body(400, "callback_url is bad")).encode(), codings)
    fake.reply(400, body=refusal, headers={"Content-Encoding": header}, chunked=chunked)
    async with connect(max_retries=0) as client:
        ok = await client.call_tool(*CREATE)
        refused = await client.call_tool(*CREATE)
    assert ok.is_error is False and ok.structured_content == {"data": AUTH_CODE}, _text(ok)
    assert "HTTP 400 Bad Request: callback_url is bad (error code 400)" in _text(refused)


@pytest.mark.anyio
async def test_a_compressed_answer_just_under_the_cap_is_accepted(fake: FakeModelGates, connect: ClientFactory) -> None:
    plain = json.dumps({"data": AUTH_CODE, "padding": "x" * (MIB - 200)}).encode()
    assert len(plain) < MIB
    fake.reply(200, body=_encode(plain, ["gzip", "gzip"]), headers={"Content-Encoding": "gzip, gzip"})
    async with connect() as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is False and result.structured_content == {"data": AUTH_CODE}


# ---------------------------------------------------------------- codings that are not decoded


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("br", "does not decode ('br')"),
        ("zstd", "does not decode ('zstd')"),
        ("gzip, compress", "does not decode ('compress')"),
        ("gzip, gzip, gzip, gzip", "4 layers of content coding (at most 3 are decoded)"),
        ("x-" + "a" * 40, "does not decode (an unknown name)"),  # a long name is not quoted (a cut could halve a key)
    ],
)
async def test_a_coding_that_is_not_decoded_is_refused_by_name(
    fake: FakeModelGates, connect: ClientFactory, header: str, says: str
) -> None:
    fake.reply(200, body=b"\x1f\x8b" + b"\x00" * 4000, headers={"Content-Encoding": header})
    fake.reply(503, body=b"\x28\xb5\x2f\xfd" + b"\x00" * 4000, headers={"Content-Encoding": header})
    async with connect(max_retries=0) as client:
        refused = await client.call_tool(*CREATE)
        busy = await client.call_tool(*CREATE)
    assert refused.is_error is True and says in _text(refused) and "refused" in _text(refused), _text(refused)
    # an error answer keeps its status and hint; its body is described, not quoted as bytes
    assert "HTTP 503" in _text(busy) and "not shown" in _text(busy) and says.split(" (")[0] in _text(busy)


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["gzip", "deflate"])
async def test_a_corrupt_coding_is_a_clear_error(fake: FakeModelGates, connect: ClientFactory, header: str) -> None:
    good = _encode(json.dumps({"data": AUTH_CODE}).encode(), ["gzip"])
    fake.reply(200, body=good[:12] + b"\xff" * 40 + good[52:], headers={"Content-Encoding": header})
    async with connect(max_retries=0) as client:
        result = await client.call_tool(*CREATE)
    assert result.is_error is True and "could not be decoded" in _text(result), _text(result)


# ---------------------------------------------------------------- the console script's peak RSS


class _StdioServer:
    """The console script over stdio, one request at a time, so its VmHWM can be read between calls."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            server_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.err = bytearray()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = self.proc.stdout, self.proc.stderr
        threading.Thread(target=lambda: [self.lines.put(line) for line in out], daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(err.read()), daemon=True).start()
        self._id = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._id += 1
        self.proc.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}).encode() + b"\n"
        )
        self.proc.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = json.loads(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self._id:
                result: dict[str, Any] = message["result"]
                return result
        raise AssertionError(f"no answer to {method}; stderr tail: {bytes(self.err[-2000:])!r}")

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        return str(self.request("tools/call", {"name": name, "arguments": arguments})["content"][0]["text"])

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM line")

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's peak RSS")
def test_the_servers_peak_memory_stays_flat_through_compressed_bombs(fake: FakeModelGates) -> None:
    bombs = [(name, bomb(name)) for name in ("gzip", "deflate", "nested-gzip", "deflate-then-gzip")]
    env = stdio_params(
        {"MODELGATES_API_KEY": API_KEY, "MODELGATES_BASE_URL": fake.base_url, "MODELGATES_MAX_RETRIES": "0"}
    ).env
    server = _StdioServer(env)
    try:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        server.request("initialize", init)
        fake.reply(200, {"data": AUTH_CODE}, headers={"Content-Encoding": "identity"})
        assert "auth_code_xyz789" in server.call(*CREATE)  # warm: httpx is imported at the first call
        baseline = server.peak_rss_mib()
        seen = []
        for name, body in bombs:
            fake.reply(200, body=body, headers={"Content-Encoding": _header(BOMBS[name])}, chunked=True)
            seen.append((name, server.call(*CREATE), server.peak_rss_mib() - baseline))
        fake.reply(502, body=bomb("nested-gzip"), headers={"Content-Encoding": "gzip, gzip"})
        seen.append(("error answer", server.call(*EXCHANGE), server.peak_rss_mib() - baseline))
    finally:
        assert server.close() == 0
    for name, text, growth in seen:
        assert (TOO_LARGE in text) or ("HTTP 502" in text and name == "error answer"), (name, text)
        assert growth < 24, f"the server's peak RSS grew {growth:.0f} MiB ({name})"
