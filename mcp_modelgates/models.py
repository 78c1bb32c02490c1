"""The ModelGates OAuth PKCE contract as pydantic models: the single source of truth.

Each request model is both a tool's `inputSchema` (via `tool_schema`) and the HTTP body (via
`body`); each response model is both the `outputSchema` and the parser of the API's answer.
Optional fields default to `MISSING`, so a field the caller left out is left out of the body,
while an explicit `null` (where the API allows one) is forwarded as `null`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import MISSING, AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema

from mcp_modelgates.config import is_loopback

# RFC 7636 section 4.1: the verifier (and an S256 challenge) alphabet.
PKCE_PATTERN = r"^[A-Za-z0-9._~-]{43,128}$"
# RFC 3339 date-time with seconds and an explicit offset; the API rejects minute precision.
DATETIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

SEED_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
SEED_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
SEED_CALLBACK = "https://myapp.com/auth/callback"


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _callback_url(value: str) -> str:
    _no_control(value)
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain spaces")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an absolute https URL (http only for localhost / 127.0.0.1 / [::1])")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain user info (user:password@)")
    if "#" in value:
        raise ValueError("must not contain a fragment (#...)")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError("must use https unless the host is localhost / 127.0.0.1 / [::1]")
    return value


def _future_datetime(value: str) -> str:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("is not a valid date-time") from None
    if when <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


def _auth_code(value: str) -> str:
    if "://" in value or "code=" in value:
        raise ValueError("looks like a whole callback URL; pass only the value of its `code` query parameter")
    if not value.strip():
        raise ValueError("must not be empty or whitespace")
    if any(ch.isspace() for ch in value) or _CONTROL.search(value):
        raise ValueError("must not contain whitespace or control characters")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


CallbackUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        json_schema_extra={"format": "uri"},
        description=(
            "Where the user's browser is sent back with `?code=...` after approving. An https URL; "
            "http is allowed only for localhost / 127.0.0.1 (any port) for local tools."
        ),
        examples=[SEED_CALLBACK],
    ),
    AfterValidator(_callback_url),
]
ChallengeMethod = Literal["S256", "plain"]


class _Schema(GenerateJsonSchema):
    """Wire schemas without pydantic's generated titles and with `$ref`s inlined."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> dict[str, Any]:
        result = super().generate(schema, mode=mode)
        defs = result.pop("$defs", {})
        result.pop("title", None)
        inlined: dict[str, Any] = _inline(result, defs)
        return inlined


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = dict(defs[ref.removeprefix("#/$defs/")])
            target.pop("title", None)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **rest}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


class RequestModel(BaseModel):
    """A tool's arguments and, dumped, the request body. Unknown arguments are refused."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ResponseModel(BaseModel):
    """An API answer: undocumented extra fields are tolerated and dropped, documented ones are required."""

    model_config = ConfigDict(extra="ignore", strict=True)


def tool_schema(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    return model.model_json_schema(schema_generator=_Schema, mode=mode)


# ---------------------------------------------------------------- POST /auth/keys/code


class CreateAuthCodeRequest(RequestModel):
    callback_url: CallbackUrl
    code_challenge: (
        Annotated[
            str,
            Field(
                pattern=PKCE_PATTERN,
                description=(
                    "PKCE code challenge. For S256: base64url(SHA-256(code_verifier)) without padding "
                    "(43 characters); generate_pkce makes one."
                ),
                examples=[SEED_CHALLENGE],
            ),
        ]
        | MISSING
    ) = MISSING
    code_challenge_method: (
        Annotated[
            ChallengeMethod,
            Field(
                description="How code_challenge was derived from the verifier. Use S256; plain is discouraged.",
                examples=["S256"],
            ),
        ]
        | MISSING
    ) = MISSING
    limit: (
        Annotated[
            float,
            Field(
                strict=True,
                ge=0,
                allow_inf_nan=False,
                description="Credit limit for the API key that will be created.",
                examples=[100.0],
            ),
            AfterValidator(_finite),
        ]
        | MISSING
    ) = MISSING
    expires_at: (
        Annotated[
            # `format` beside `type: string`, not beside `anyOf`: strict validators (Ajv's strict
            # mode, as in Gemini CLI) warn about a `format` with no type next to it.
            Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None,
            Field(
                pattern=DATETIME_PATTERN,
                description=(
                    "When the created API key expires: an RFC 3339 date-time in the future with seconds "
                    "and an offset, e.g. 2027-12-31T23:59:59Z (minute precision is rejected). null: no expiry."
                ),
                examples=["2027-12-31T23:59:59Z"],
            ),
            AfterValidator(lambda v: v if v is None else _future_datetime(v)),
        ]
        | MISSING
    ) = MISSING
    key_label: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=100,
                description=(
                    "Label of the API key that will be created (at most 100 characters); defaults to the app name."
                ),
                examples=["Claude Code on my laptop"],
            ),
            AfterValidator(_no_control),
        ]
        | MISSING
    ) = MISSING
    usage_limit_type: (
        Annotated[
            Literal["daily", "weekly", "monthly"],
            Field(description="The period on which the key's `limit` resets.", examples=["monthly"]),
        ]
        | MISSING
    ) = MISSING
    workspace_id: (
        Annotated[
            str,
            Field(
                pattern=UUID_PATTERN,
                json_schema_extra={"format": "uuid"},
                description="Workspace to create the key in (a UUID; newer API versions only).",
                examples=["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
            ),
        ]
        | MISSING
    ) = MISSING


# An answer's strings end up in the result text a user reads: no terminal escapes from upstream.
PrintableStr = Annotated[str, AfterValidator(_no_control)]


class AuthCode(ResponseModel):
    id: PrintableStr = Field(description="The authorization code.", examples=["auth_code_xyz789"])
    app_id: int = Field(description="The ModelGates app the code belongs to.", examples=[12345])
    created_at: PrintableStr = Field(
        description="When the code was created (ISO 8601).", examples=["2025-08-24T10:30:00Z"]
    )


class CreateAuthCodeResponse(ResponseModel):
    data: AuthCode


# ---------------------------------------------------------------- POST /auth/keys


class ExchangeAuthCodeRequest(RequestModel):
    code: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            description=(
                "The authorization code: only the value of `code` from the callback URL "
                "(callback_url?code=...), not the whole URL. Single-use; expires 10 minutes after issue."
            ),
            examples=["auth_code_abc123def456"],
        ),
        AfterValidator(_auth_code),
    ]
    code_verifier: (
        Annotated[
            str,
            Field(
                pattern=PKCE_PATTERN,
                description=(
                    "The PKCE code verifier whose challenge was used to create the code "
                    "(RFC 7636: 43-128 characters of A-Z a-z 0-9 - . _ ~). Required when a challenge was used."
                ),
                examples=[SEED_VERIFIER],
            ),
        ]
        | MISSING
    ) = MISSING
    code_challenge_method: (
        Annotated[
            ChallengeMethod | None,
            Field(
                description="The method used when the code was created (S256 or plain); must match it.",
                examples=["S256"],
            ),
        ]
        | MISSING
    ) = MISSING


class ExchangeAuthCodeResponse(ResponseModel):
    key: PrintableStr = Field(description="The new user-controlled API key (a live secret, sk-...).")
    user_id: PrintableStr | None = Field(description="The ModelGates user the key belongs to, when known.")


# ---------------------------------------------------------------- PKCE helper (no network)


class GeneratePkceRequest(RequestModel):
    callback_url: (
        Annotated[
            CallbackUrl,
            Field(
                description=(
                    "Optional. Where the user's browser returns after approving; when given, the result "
                    "also holds the authorization_url to open."
                )
            ),
        ]
        | MISSING
    ) = MISSING
    code_challenge_method: Annotated[
        ChallengeMethod,
        Field(description="S256 (default, recommended) or plain (only if the other side cannot hash)."),
    ] = "S256"


class PkcePair(BaseModel):
    code_verifier: str = Field(description="Keep this secret until exchange_auth_code; 43 characters.")
    code_challenge: str = Field(description="Send this as code_challenge (create_auth_code or the authorization URL).")
    code_challenge_method: ChallengeMethod = Field(description="The method to pass along with the challenge.")
    authorization_url: str | MISSING = Field(
        default=MISSING,
        description="Present when callback_url was given: the page the user opens to approve.",
    )


# ---------------------------------------------------------------- the operations


@dataclass(frozen=True)
class Operation:
    """One API call: where it goes and what goes in and comes out."""

    method: Literal["POST"]
    path: str
    request: type[RequestModel]
    response: type[ResponseModel]
    requires_key: bool
    # Whether a request that may have reached the server can be sent again. An authorization
    # code is single-use: a re-sent exchange can turn a success into a 403.
    resend_safe: bool
    # Whether a success body holds a secret (the new key), so that no error text may quote it.
    secret_response: bool = False


CREATE_AUTH_CODE = Operation(
    "POST", "/auth/keys/code", CreateAuthCodeRequest, CreateAuthCodeResponse, requires_key=True, resend_safe=True
)
EXCHANGE_AUTH_CODE = Operation(
    "POST",
    "/auth/keys",
    ExchangeAuthCodeRequest,
    ExchangeAuthCodeResponse,
    requires_key=False,
    resend_safe=False,
    secret_response=True,
)


# ---------------------------------------------------------------- connect_account (local flow)

ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_CONNECT_TIMEOUT = 600.0
ConnectStatus = Literal["connected", "waiting_for_approval", "cancelled", "expired", "failed"]


class ConnectAccountRequest(RequestModel):
    store: Annotated[
        Literal["env_file", "keyring"],
        Field(
            description=(
                "Where the new key goes: env_file (default; a dotenv file in the workspace) or keyring "
                "(the OS keyring, service mcp-modelgates; needs the mcp-modelgates[keyring] extra)."
            )
        ),
    ] = "env_file"
    env_file: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            description=(
                "The dotenv file to write (.env, .env.* or *.env), relative to the workspace and inside it. "
                "Used with store env_file."
            ),
            examples=[".env"],
        ),
        AfterValidator(_no_control),
    ] = ".env"
    env_var: Annotated[
        str,
        Field(
            pattern=ENV_VAR_PATTERN,
            max_length=128,
            description="The variable (or keyring entry) that receives the key.",
            examples=["MODELGATES_API_KEY"],
        ),
    ] = "MODELGATES_API_KEY"
    flow_id: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=64,
                pattern=r"^[A-Za-z0-9_-]+$",
                description=(
                    "Continue a flow an earlier call started (it returned waiting_for_approval and this id): "
                    "returns its outcome, waiting up to timeout while it is still open."
                ),
            ),
        ]
        | MISSING
    ) = MISSING
    timeout: Annotated[
        float,
        Field(
            gt=0,
            le=MAX_CONNECT_TIMEOUT,
            allow_inf_nan=False,
            description="Seconds to wait for the user's approval in the browser (default 300, at most 600).",
        ),
    ] = 300.0


class ConnectAccountResult(BaseModel):
    status: ConnectStatus = Field(
        description=(
            "connected (key stored), waiting_for_approval (show authorization_url to the user, then call "
            "again with flow_id), cancelled (declined), expired (no approval in time) or failed (see error)."
        )
    )
    env_var: str = Field(description="The variable (or keyring entry) that receives the key.")
    saved_to: str = Field(description="Absolute path of the dotenv file, or keyring:<service>/<name>.")
    key_preview: str | MISSING = Field(
        default=MISSING, description="When connected: at most the key's last 4 characters, e.g. sk-…a1b2."
    )
    user_id: str | MISSING | None = Field(default=MISSING, description="When connected: the key's ModelGates user.")
    authorization_url: str | MISSING = Field(
        default=MISSING, description="When waiting_for_approval: the page the user opens to approve."
    )
    flow_id: str | MISSING = Field(
        default=MISSING, description="When waiting_for_approval: pass it to a later connect_account call."
    )
    error: str | MISSING = Field(default=MISSING, description="When failed, cancelled or expired: what happened.")
