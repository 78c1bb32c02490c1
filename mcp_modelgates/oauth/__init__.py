"""Sign-in with a ModelGates account: the HTTP transport as an OAuth 2.1 authorization server (MCP authorization).

Loaded only with MODELGATES_AUTH=oauth (by `http_app.py`, never on stdio). `sealing` seals what
clients and browsers carry, `store` keeps the single-use facts (in memory, or `redis_store` in a
Redis shared by the replicas, MODELGATES_OAUTH_STORE), `client_documents` fetches the metadata
documents of clients named by a URL, `provider` is the SDK's provider interface over them, `pages`
the consent page, `routes` the endpoints. Each user signs in through
this server's consent page and then ModelGates; their calls use the key that sign-in created.
"""
