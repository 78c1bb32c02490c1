"""The pages a browser sees during sign-in: the consent page and one-message pages, with their headers.

No script runs on them. They may not be framed (`X-Frame-Options: DENY`, `frame-ancestors 'none'`),
are never cached, and the consent form may only post to this server, whose answer may only send
the browser on to ModelGates or back to the client (`form-action` also governs those redirects).
Everything a client chose (its name, its redirect URI) is escaped and shown as unverified.
"""

from __future__ import annotations

import html

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.5}"
    "button{font-size:1em;padding:.5em 1.5em;margin-right:1em}.host{font-family:monospace}"
    ".note{color:#555;font-size:.9em}"
)


def headers(form_targets: tuple[str, ...] = (), *, same_origin_referrer: bool = False) -> dict[str, str]:
    """Headers for a page; `form_targets` are the origins its form's answer may redirect to."""
    form_action = " ".join(("'self'", *form_targets)) if form_targets else "'none'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        # The consent form's POST must carry this origin (`no-referrer` would make it `Origin: null`).
        "Referrer-Policy": "same-origin" if same_origin_referrer else "no-referrer",
    }


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ModelGates: {html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def message(title: str, text: str) -> str:
    return _page(title, f"<p>{html.escape(text)}</p>")


def consent(
    *, client_name: str | None, redirect_host: str, server_host: str, request: str, client_site: str | None = None
) -> str:
    """Approve or Deny for one authorization request; `request` is its sealed form, CSRF-bound.
    `client_site` is the host of the app's metadata document, when it has one: the one part of its
    identity that is checked (its document was fetched from there and names itself by that URL)."""
    name = html.escape(client_name or "An unnamed app")
    site = (
        f" from <span class=host>{html.escape(client_site)}</span> <span class=note>(where its "
        "description is published)</span>"
        if client_site
        else ""
    )
    return _page(
        "Connect your ModelGates account",
        f"<p><strong>{name}</strong> <span class=note>(the name the app gave itself; not verified)</span>{site} "
        f"asks to use your ModelGates account through <span class=host>{html.escape(server_host)}</span>.</p>"
        "<p>If you approve, ModelGates asks you to approve a new API key for this server. The key stays on "
        "this server and is never shown to the app; its calls are made with it. You are then sent back to "
        f"<span class=host>{html.escape(redirect_host)}</span>.</p>"
        "<p class=note>Approve only if you started this sign-in from your own app just now.</p>"
        '<form method="post" action="/consent">'
        f'<input type="hidden" name="request" value="{html.escape(request)}">'
        '<button type="submit" name="action" value="approve">Approve</button>'
        '<button type="submit" name="action" value="deny">Deny</button>'
        "</form>",
    )
