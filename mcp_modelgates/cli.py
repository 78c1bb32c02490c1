"""The command line on top: settings, logging with its redacting filter, the transport, exit codes.

`main` loads the settings (a bad one ends the process with one line and exit 2, before anything
opens), finds the key's source, sets up logging so that every record is masked, then serves the
MCP server on stdio, or hands it to the HTTP transport, imported only on that path.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from mcp_modelgates import __version__, keystore
from mcp_modelgates.config import ConfigError, Settings, load_settings
from mcp_modelgates.server import build_server

logger = logging.getLogger("mcp_modelgates")


class RedactingFilter(logging.Filter):
    """Masks the configured key in every record, including formatted tracebacks."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._settings.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # also when another handler formatted it first
            record.exc_text = self._settings.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._settings.redact(record.stack_info)
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(settings))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # httpx logs every request line at INFO; quiet it unless debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)


async def serve_stdio(server: Server[Any]) -> None:
    """Serve until stdin closes or SIGTERM/SIGINT arrives; in-flight calls are then cancelled."""
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stopping.set()
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        async with stdio_server() as (read_stream, write_stream):
            try:
                await server.run(read_stream, write_stream, server.create_initialization_options())
            finally:
                if stopping.is_set():
                    # The lifespan has closed the HTTP client by now. The transport's stdin reader
                    # sits in a thread that no cancellation reaches, so leave without waiting for it.
                    logging.shutdown()
                    os._exit(0)
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ, __version__)
    except ConfigError as exc:
        print(f"mcp-modelgates: {exc}", file=sys.stderr)
        return 2
    source = "from each caller's Authorization header" if settings.key_from_client else "from each user's sign-in"
    if not settings.keys_per_request:  # a stored key would make a shared key beside the callers' own
        settings, source = keystore.with_stored_key(settings)
    configure_logging(settings)  # after the key is known, so that the log masks it
    if settings.transport == "http":
        from mcp_modelgates.http_app import serve_http  # imported only on this path

        try:
            return serve_http(settings, source)
        except ConfigError as exc:  # found only now (the shared store), still before anything listens
            print(f"mcp-modelgates: {exc}", file=sys.stderr)
            return 2
    server = build_server(settings)
    logger.info("mcp-modelgates %s serving on stdio; API %s; key %s", __version__, settings.base_url, source)
    with suppress(KeyboardInterrupt):
        anyio.run(serve_stdio, server)
    return 0
