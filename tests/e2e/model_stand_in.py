"""A stand-in model API on 127.0.0.1 for driving coding agents offline in the e2e tests.

It speaks what the agents speak: OpenAI's Responses API (`POST .../responses`, Codex), OpenAI's
chat completions (`POST .../chat/completions`, Copilot CLI and opencode) and Gemini's
`generateContent` / `streamGenerateContent` (Gemini CLI), streamed or not as asked. It plays a
script of tool calls: a turn holding n tool results is answered with a call of `calls[n]` (the
agent's tool whose name ends in that name: each agent names a server's tools its own way,
`mcp__modelgates__x`, `mcp_modelgates_x`, `modelgates-x`, `modelgates_x`), and once the script is
played, with the text `reply`. Arguments may be computed from the last tool result. Every request
is recorded, so a test can read the tools the agent offered (its view of the server's tools) and
the tool results it sent back.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "Done: the tool answered."
Arguments = dict[str, Any] | Callable[[str], dict[str, Any]]  # fixed, or from the last tool result


@dataclass
class Turn:
    api: str  # "responses", "chat" or "gemini"
    path: str
    body: dict[str, Any]

    def tool_names(self) -> list[str]:
        """The function tools offered to the model in this request."""
        tools = self.body.get("tools") or []
        if self.api == "gemini":
            return [d["name"] for t in tools for d in t.get("functionDeclarations", [])]
        names = []
        for tool in tools:
            if self.api == "chat":
                names.append(tool.get("function", {}).get("name", ""))
            elif tool.get("type") == "namespace":  # Responses API: tools grouped under a namespace
                names += [f"{tool.get('name', '')}__{t.get('name', '')}" for t in tool.get("tools", [])]
            else:
                names.append(tool.get("name", ""))
        return names

    def tool_results(self) -> list[str]:
        """The text of each tool result the agent sent back in this request."""
        out: list[str] = []
        if self.api == "responses":
            for item in self.body.get("input") or []:
                if isinstance(item, dict) and item.get("type", "").endswith("call_output"):
                    out.append(_text(item.get("output")))
        elif self.api == "chat":
            for message in self.body.get("messages") or []:
                if message.get("role") == "tool":
                    out.append(_text(message.get("content")))
        else:
            for content in self.body.get("contents") or []:
                for part in content.get("parts") or []:
                    if "functionResponse" in part:
                        out.append(json.dumps(part["functionResponse"].get("response")))
        return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v.get("text", v) if isinstance(v, dict) else v) for v in value)
    return json.dumps(value)


@dataclass
class ModelStandIn:
    calls: list[tuple[str, Arguments]] = field(default_factory=list)
    reply: str = REPLY
    turns: list[Turn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.stand_in = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="model-stand-in")

    def __enter__(self) -> ModelStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def offered(self) -> list[str]:
        """The tool names of the first request that offered any tools."""
        return next((t.tool_names() for t in self.turns if t.tool_names()), [])

    def results(self) -> list[str]:
        return [r for t in self.turns for r in t.tool_results()]

    # ------------------------------------------------------------ answers
    def answer(self, turn: Turn) -> tuple[str, str, dict[str, Any]]:
        """("call", the agent's name of the tool, arguments) or ("text", reply, {}) for this turn."""
        self.turns.append(turn)
        results = turn.tool_results()
        if len(results) >= len(self.calls):
            return "text", self.reply, {}
        tool, arguments = self.calls[len(results)]
        target = next((n for n in turn.tool_names() if re.search(rf"(^|[^a-z]){re.escape(tool)}$", n)), None)
        if target is None:  # the agent did not offer the tool: nothing to call
            return "text", f"no tool named {tool} was offered", {}
        return "call", target, arguments(results[-1]) if callable(arguments) else arguments


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def stand_in(self) -> ModelStandIn:
        return self.server.stand_in  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:  # model lists: one model, whatever it is called
        if self.path.rstrip("/").endswith("/models"):
            self._json({"object": "list", "data": [{"id": "stand-in", "object": "model", "owned_by": "tests"}]})
        else:
            self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?")[0]
        if path.endswith("/responses"):
            self._responses(body)
        elif path.endswith("/chat/completions"):
            self._chat(body)
        elif ":generateContent" in path or ":streamGenerateContent" in path:
            self._gemini(body, stream=":streamGenerateContent" in path)
        elif ":countTokens" in path:
            self._json({"totalTokens": 1})
        else:
            self._json({"error": {"message": f"no stand-in for {path}"}}, 404)

    # ------------------------------------------------------------ OpenAI Responses API
    def _responses(self, body: dict[str, Any]) -> None:
        kind, value, arguments = self.stand_in.answer(Turn("responses", self.path, body))
        if kind == "call":
            name, namespace = value, None
            for tool in body.get("tools") or []:  # a namespaced tool is called by namespace + name
                for sub in tool.get("tools", []) if tool.get("type") == "namespace" else []:
                    if f"{tool.get('name', '')}__{sub.get('name', '')}" == value:
                        name, namespace = sub.get("name"), tool.get("name")
            item: dict[str, Any] = {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": name,
                "arguments": json.dumps(arguments),
                "status": "completed",
            }
            if namespace is not None:
                item["namespace"] = namespace
        else:
            item = {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": value, "annotations": []}],
            }
        response = {"id": "resp_1", "object": "response", "status": "completed", "model": body.get("model", "")}
        usage = {
            "input_tokens": 1,
            "output_tokens": 1,
            "total_tokens": 2,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if not body.get("stream"):
            self._json({**response, "output": [item], "usage": usage})
            return
        self._sse(
            [
                ("response.created", {"type": "response.created", "response": {**response, "status": "in_progress"}}),
                ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}),
                ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
                (
                    "response.completed",
                    {"type": "response.completed", "response": {**response, "output": [item], "usage": usage}},
                ),
            ]
        )

    # ------------------------------------------------------------ OpenAI chat completions
    def _chat(self, body: dict[str, Any]) -> None:
        kind, value, arguments = self.stand_in.answer(Turn("chat", self.path, body))
        if kind == "call":
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": value, "arguments": json.dumps(arguments)},
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": value}, "stop"
        base = {"id": "chatcmpl-1", "created": 1, "model": body.get("model", "stand-in")}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            self._json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        chunk = {**base, "object": "chat.completion.chunk"}
        self._sse(
            [
                (None, {**chunk, "choices": [{"index": 0, "delta": message, "finish_reason": None}]}),
                (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}),
            ],
            done=True,
        )

    # ------------------------------------------------------------ Gemini
    def _gemini(self, body: dict[str, Any], stream: bool) -> None:
        kind, value, arguments = self.stand_in.answer(Turn("gemini", self.path, body))
        if kind == "call":
            part: dict[str, Any] = {"functionCall": {"name": value, "args": arguments}}
        else:
            part = {"text": value}
        answer = {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
            "modelVersion": "stand-in",
        }
        if stream:
            self._sse([(None, answer)])
        else:
            self._json(answer)

    # ------------------------------------------------------------ wire
    def _json(self, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, Any]], done: bool = False) -> None:
        def lines() -> Iterator[bytes]:
            for name, payload in events:
                yield (f"event: {name}\n" if name else "").encode() + f"data: {json.dumps(payload)}\n\n".encode()
            if done:
                yield b"data: [DONE]\n\n"

        data = b"".join(lines())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
