"""Sign-in with a ModelGates account: the HTTP transport as an OAuth 2.1 authorization server (MCP authorization).

Loaded only with MODELGATES_AUTH=oauth (by `http_app.py`, never on stdio). `sealing` seals what
clients and browsers carry, `store` keeps the single-use facts, `provider` is the SDK's provider
interface over both, `pages` the consent page, `routes` the endpoints. Each user signs in through
this server's consent page and then ModelGates; their calls use the key that sign-in created.
"""
