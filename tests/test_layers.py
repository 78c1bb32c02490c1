"""The package's layers: no import circle between its modules (function-level imports included),
and the MCP layer loads neither a transport nor the command line."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mcp_modelgates"


def _imports(path: Path) -> set[str]:
    """Every `mcp_modelgates.<module>` a file imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mcp_modelgates":
                found |= {f"mcp_modelgates.{alias.name}" for alias in node.names if alias.name != "__version__"}
            elif node.module.startswith("mcp_modelgates."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mcp_modelgates.")}
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        graph[name] = {module for module in _imports(path) if module != name}
    return graph


def test_the_graph_is_read_from_the_sources() -> None:
    graph = _graph()
    assert "mcp_modelgates.config" in graph["mcp_modelgates.server"]  # a module-level import
    assert "mcp_modelgates.http_app" in graph["mcp_modelgates.cli"]  # a function-level one


def test_no_import_circle_between_the_package_modules() -> None:
    try:
        order = list(TopologicalSorter(_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
    assert (
        order.index("mcp_modelgates.config") < order.index("mcp_modelgates.server") < order.index("mcp_modelgates.cli")
    )


def test_the_mcp_layer_imports_no_transport_and_no_command_line() -> None:
    graph = _graph()
    for module in ("mcp_modelgates.server", "mcp_modelgates.tools", "mcp_modelgates.calls"):
        assert not graph[module] & {"mcp_modelgates.http_app", "mcp_modelgates.cli"}, module


def test_importing_the_server_loads_neither_the_http_app_nor_the_cli() -> None:
    probe = (
        "import json, sys; import mcp_modelgates.server; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mcp_modelgates'))))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout)
    assert "mcp_modelgates.server" in loaded
    assert "mcp_modelgates.http_app" not in loaded
    assert "mcp_modelgates.cli" not in loaded
