#!/usr/bin/env python3
"""Print the "Add to Cursor" install link the README shows.

Cursor's MCP install deeplink carries one server entry of `.cursor/mcp.json` as base64 JSON in its
`config` parameter; Cursor writes that entry into the user's MCP settings under `name`. Generated
here rather than pasted, and tests/test_cursor_link.py decodes the README's link back to the
README's `.cursor/mcp.json` entry, so the two cannot drift apart.

    python scripts/cursor_link.py             # the link
    python scripts/cursor_link.py --markdown  # the README line
"""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any
from urllib.parse import urlencode

NAME = "modelgates"
# The same entry as the README's .cursor/mcp.json; Cursor fills ${env:...} from the user's environment,
# so the link carries no key.
ENTRY: dict[str, Any] = {
    "command": "uvx",
    "args": ["mcp-modelgates"],
    "env": {"MODELGATES_API_KEY": "${env:MODELGATES_API_KEY}"},
}


def install_link(name: str = NAME, entry: dict[str, Any] = ENTRY) -> str:
    config = base64.b64encode(json.dumps(entry, separators=(",", ":")).encode()).decode()
    # urlencode escapes base64's "+", "/" and "=", which a query string would otherwise garble
    return "cursor://anysphere.cursor-deeplink/mcp/install?" + urlencode({"name": name, "config": config})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--markdown", action="store_true", help="print the README's markdown link")
    link = install_link()
    print(f"[Add to Cursor]({link})" if parser.parse_args().markdown else link)


if __name__ == "__main__":
    main()
