"""End-to-end tests with third-party MCP clients (see test_real_clients.py)."""
