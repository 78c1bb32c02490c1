"""mcp-modelgates: an MCP server for the ModelGates OAuth PKCE API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcp-modelgates")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
