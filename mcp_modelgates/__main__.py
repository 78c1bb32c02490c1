"""`python -m mcp_modelgates`: the same entry point as the console script."""

from mcp_modelgates.cli import main

raise SystemExit(main())
