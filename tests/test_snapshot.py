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
