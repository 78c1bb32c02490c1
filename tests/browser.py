"""A headless test browser on httpx, for the OAuth sign-in: cookies, redirects and forms.

It keeps its own cookie jar, per host name as browsers do (ports do not separate cookies), and
sends Secure cookies over plain http to loopback hosts as browsers do for localhost (httpx's jar
would drop them). It follows redirects itself, recording every URL it went through, and stops at
the first one `stop_at` accepts without requesting it (the client's redirect URI, where no one
listens in these tests). It reads a page's form and submits it as the page's own origin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

MAX_REDIRECTS = 10


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str]
    buttons: dict[str, list[str]]  # button name -> values


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower(), {}, {}))
        elif self.forms and tag == "input" and a.get("type") == "hidden":
            self.forms[-1].fields[a.get("name", "")] = a.get("value", "")
        elif self.forms and tag == "button":
            self.forms[-1].buttons.setdefault(a.get("name", ""), []).append(a.get("value", ""))


@dataclass
class Page:
    url: str
    response: httpx.Response | None  # None when the browser stopped before requesting `url`
    visited: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.response.status_code if self.response is not None else 0

    @property
    def text(self) -> str:
        return self.response.text if self.response is not None else ""

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def form(self) -> Form:
        parser = _FormParser()
        parser.feed(self.text)
        (form,) = parser.forms
        return form


class Browser:
    def __init__(self, stop_at: Any = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.stop_at = stop_at or (lambda url: False)
        self.jar: dict[str, dict[str, tuple[str, float | None]]] = {}  # host -> name -> (value, expiry)
        self.http = httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=30)
        self.responses: list[httpx.Response] = []

    async def aclose(self) -> None:
        await self.http.aclose()

    def cookies_for(self, url: str) -> dict[str, str]:
        host = urlsplit(url).hostname or ""
        now = time.time()
        return {name: value for name, (value, exp) in self.jar.get(host, {}).items() if exp is None or exp > now}

    def _store(self, url: str, response: httpx.Response) -> None:
        host = urlsplit(url).hostname or ""
        for header in response.headers.get_list("set-cookie"):
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(header)
            except CookieError:
                continue
            for name, morsel in cookie.items():
                max_age = morsel["max-age"]
                expiry = time.time() + int(max_age) if max_age != "" else None
                if expiry is not None and int(max_age) <= 0:
                    self.jar.get(host, {}).pop(name, None)
                else:
                    self.jar.setdefault(host, {})[name] = (morsel.value, expiry)

    async def request(self, method: str, url: str, **kwargs: Any) -> Page:
        visited: list[str] = []
        for _ in range(MAX_REDIRECTS):
            if self.stop_at(url):
                return Page(url, None, visited)
            visited.append(url)
            cookies = self.cookies_for(url)
            headers = dict(kwargs.pop("headers", {}) or {})
            if cookies:
                headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            response = await self.http.request(method, url, headers=headers, **kwargs)
            self.responses.append(response)
            self._store(url, response)
            if response.status_code not in (301, 302, 303, 307, 308):
                return Page(url, response, visited)
            url = urljoin(url, response.headers["location"])
            if response.status_code in (301, 302, 303):
                method, kwargs = "GET", {}
        raise AssertionError(f"more than {MAX_REDIRECTS} redirects: {visited}")

    async def get(self, url: str) -> Page:
        return await self.request("GET", url)

    async def submit(self, page: Page, button: str, value: str, **headers: str) -> Page:
        """Submit the page's form with one button, as a browser does: from the page's own origin."""
        form = page.form()
        assert value in form.buttons.get(button, []), (button, value, form.buttons)
        parts = urlsplit(page.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        sent = {"origin": origin, "sec-fetch-site": "same-origin", "referer": page.url, **headers}
        sent = {k: v for k, v in sent.items() if v}  # a test can leave one out by passing ""
        return await self.request(
            form.method.upper(), urljoin(page.url, form.action), data={**form.fields, button: value}, headers=sent
        )
