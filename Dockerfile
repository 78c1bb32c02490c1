# mcp-modelgates as a hosted streamable HTTP server (see README, "Run it as a hosted server").
#   docker build -t mcp-modelgates .
#   docker run -p 8000:8000 -e MODELGATES_AUTH=oauth -e MODELGATES_PUBLIC_URL=https://mcp.example.com \
#     -e MODELGATES_OAUTH_SECRET mcp-modelgates          (sign-in; every replica gets the same secret)
#   docker run -p 8000:8000 -e MODELGATES_KEY_FROM_CLIENT=1 mcp-modelgates
# Settings come from the environment (MODELGATES_*, and for sign-in MODELGATES_OAUTH_ACCESS_TTL,
# MODELGATES_OAUTH_REFRESH_TTL, MODELGATES_OAUTH_STORE, MODELGATES_OAUTH_CLIENT_DOCUMENTS); the key,
# the token, the OAuth secret and the store's password are never baked in. Two replicas beside one Redis (docker compose), the
# balancer with TLS in front sending requests to either one's port 8000:
#   services:
#     redis:
#       image: redis:7
#       command: ["redis-server", "--appendonly", "yes", "--maxmemory-policy", "noeviction"]
#     mcp-1: &replica
#       image: mcp-modelgates
#       environment:
#         MODELGATES_AUTH: oauth
#         MODELGATES_PUBLIC_URL: https://mcp.example.com
#         MODELGATES_OAUTH_SECRET: ${MODELGATES_OAUTH_SECRET}
#         MODELGATES_OAUTH_STORE: redis://redis:6379/0
#       depends_on: [redis]
#     mcp-2: *replica
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY mcp_modelgates ./mcp_modelgates
# With the redis extra: replicas share their single-use facts through MODELGATES_OAUTH_STORE.
RUN pip install --no-compile '.[redis]' && rm -rf /app/*

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin modelgates
USER modelgates

EXPOSE 8000
# slim has no curl: ask /healthz with the Python that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MODELGATES_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# 0.0.0.0 inside the container only: the start-up check still demands MODELGATES_AUTH=oauth,
# MODELGATES_HTTP_TOKEN or MODELGATES_KEY_FROM_CLIENT=1. SIGTERM (docker stop) lets in-flight calls finish, then exits 0.
# The port is MODELGATES_PORT (default 8000).
ENTRYPOINT ["mcp-modelgates", "--transport", "http", "--host", "0.0.0.0"]
