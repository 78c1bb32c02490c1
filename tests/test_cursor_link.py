"""The README's "Add to Cursor" link is what scripts/cursor_link.py prints, and it decodes back to
the README's .cursor/mcp.json server entry."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
PREFIX = "cursor://anysphere.cursor-deeplink/mcp/install?"


def cursor_block() -> dict[str, Any]:
    """The README's .cursor/mcp.json example (the one using Cursor's ${env:...} form)."""
    (block,) = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", README, re.S) if "${env:" in b]
    result: dict[str, Any] = block
    return result


def script_output(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cursor_link.py"), *args], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_the_readme_shows_the_generated_link() -> None:
    link = script_output()
    assert link.startswith(PREFIX)
    assert f"[Add to Cursor]({link})" in README
    assert script_output("--markdown") == f"[Add to Cursor]({link})"
    assert f"```text\n{link}\n```" in README  # the copy to paste where cursor:// is not clickable


def test_the_link_decodes_to_the_readme_cursor_entry() -> None:
    links = set(re.findall(re.escape(PREFIX) + r"[^)\s`]+", README))
    assert len(links) == 1, links
    parts = urlsplit(links.pop())
    query = parse_qs(parts.query, strict_parsing=True)
    assert (parts.scheme, parts.netloc, parts.path) == ("cursor", "anysphere.cursor-deeplink", "/mcp/install")
    assert set(query) == {"name", "config"} and all(len(v) == 1 for v in query.values())
    config = json.loads(base64.b64decode(query["config"][0], validate=True))
    servers = cursor_block()["mcpServers"]
    assert servers == {query["name"][0]: config}
    assert config["env"] == {"MODELGATES_API_KEY": "${env:MODELGATES_API_KEY}"}  # a reference, never a key
