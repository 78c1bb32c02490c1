"""`python -m mcp_modelgates`: the same entry point as the console script."""

from mcp_modelgates.server import main

raise SystemExit(main())
