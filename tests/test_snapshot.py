"""Every tool's wire definition is pinned in tests/snapshots/tools.json.

A schema or description change fails here until the snapshot is regenerated on purpose:
    UPDATE_SNAPSHOTS=1 pytest tests/test_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ClientFactory

pytestmark = pytest.mark.anyio

SNAPSHOT = Path(__file__).parent / "snapshots" / "tools.json"
KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


async def test_tool_definitions_match_the_snapshot(connect: ClientFactory) -> None:
    async with connect() as client:
        listed = await client.list_tools()
    tools = [
        {k: v for k, v in t.model_dump(mode="json", by_alias=True, exclude_none=True).items() if k in KEYS}
        for t in listed.tools
    ]
    current = json.dumps(tools, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), "no snapshot yet: run UPDATE_SNAPSHOTS=1 pytest tests/test_snapshot.py"
    assert current == SNAPSHOT.read_text(), "tool schemas changed: review, then UPDATE_SNAPSHOTS=1 to accept"
    for tool in tools:
        assert set(tool) == set(KEYS), f"{tool['name']} lacks part of its wire definition"


def _schemas_with(keyword: str, node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        found = [node] if keyword in node else []
        return found + [s for value in node.values() for s in _schemas_with(keyword, value)]
    if isinstance(node, list):
        return [s for value in node for s in _schemas_with(keyword, value)]
    return []


def test_every_format_stands_beside_its_type() -> None:
    """Strict JSON Schema validators (Ajv in strict mode, as Gemini CLI runs it) warn about a
    `format` with no `type` in the same schema, e.g. one placed beside an `anyOf`."""
    tools = json.loads(SNAPSHOT.read_text())
    formats = _schemas_with("format", [[t["inputSchema"], t["outputSchema"]] for t in tools])
    assert formats, "the snapshot has no format keyword: this test checks nothing"
    for schema in formats:
        assert schema.get("type") == "string", schema
