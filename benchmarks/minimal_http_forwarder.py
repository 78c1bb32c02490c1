"""The HTTP twin of minimal_forwarder.py: the same one-tool `MCPServer`, served over streamable HTTP.

Stateless with JSON responses on uvicorn, as mcp-modelgates serves it, and as lean: the SDK's
own Starlette app and defaults, with the per-request INFO lines of httpx and of the SDK's
stateless transport ("Terminating session: None") silenced, as mcp-modelgates silences them.

    MODELGATES_API_KEY=sk-... MODELGATES_BASE_URL=http://127.0.0.1:8765/api/v1 \\
        python benchmarks/minimal_http_forwarder.py --port 8001
"""

from __future__ import annotations

import argparse
import logging

from minimal_forwarder import server

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    port = parser.parse_args().port
    logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
    server.run("streamable-http", host="127.0.0.1", port=port, json_response=True, stateless_http=True)
