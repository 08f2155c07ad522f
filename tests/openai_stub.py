"""A test double of an OpenAI-compatible chat endpoint on 127.0.0.1 that misbehaves on request.

`StubEndpoint` runs `http.server` in a thread. Each request takes the next behaviour from `plan`
(or from `plan_for[key]`, key = the caption or question it is about); when none is left it answers
well. Behaviours: "ok", "slow" (answers after `slow_seconds`), "429", "500", "401", "envelope"
(a body that is not JSON), "not-json" (content that is not JSON), "not-a-choice", "repeat" (a
repeated question). Good answers: questions about the world words of a caption; a judge's answer
is the first choice, or `judge_answers[question]`.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHAPES = ("circle", "square", "triangle")


def questions_about(caption: str) -> list[dict]:
    named = [s for s in SHAPES if re.search(rf"\b{s}s?\b", caption)]
    absent = next(s for s in SHAPES if s not in named)
    qs = [{"question": f"is there a {s}?", "choices": ["yes", "no"], "answer": "yes", "element": s, "element_type": "object"}
          for s in named]
    qs.append({"question": f"is there a {absent}?", "choices": ["yes", "no"], "answer": "no", "element": absent,
               "element_type": "object"})
    return qs


class StubEndpoint:
    def __init__(self):
        self.plan: list[str] = []
        self.plan_for: dict[str, list[str]] = {}
        self.judge_answers: dict[str, str] = {}
        self.slow_seconds = 1.0
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                try:
                    stub.respond(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def key_of(body: dict) -> tuple[str, str]:
        """("questions", caption) or ("judge", question) of a request."""
        content = body["messages"][-1]["content"]
        if isinstance(content, str):
            return "questions", content.removeprefix("Caption: ")
        text = next(part["text"] for part in content if part["type"] == "text")
        return "judge", text.split("\n")[0].removeprefix("Question: ")

    def respond(self, handler, body):
        kind, key = self.key_of(body)
        queue = self.plan_for.get(key) or self.plan
        behaviour = queue.pop(0) if queue else "ok"
        if behaviour == "slow":
            time.sleep(self.slow_seconds)
        if behaviour in ("429", "500", "401"):
            handler.send_response(int(behaviour))
            handler.send_header("Content-Type", "application/json")
            handler.end_headers()
            handler.wfile.write(b'{"error": {"message": "planned failure"}}')
            return
        if behaviour == "envelope":
            self._send(handler, b"<html>502 bad gateway</html>")
            return
        if kind == "questions":
            reply = {"questions": questions_about(key)}
            if behaviour == "not-a-choice":
                reply["questions"][0]["answer"] = "maybe"
            if behaviour == "repeat":
                reply["questions"].append(dict(reply["questions"][0]))
        else:
            choices = re.search(r"Choices: (.*)", next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"))
            options = [c.strip() for c in choices.group(1).split("|")]
            answer = self.judge_answers.get(key, options[0])
            reply = {"answer": "maybe" if behaviour == "not-a-choice" else answer}
        content = "{not json" if behaviour == "not-json" else json.dumps(reply)
        envelope = {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        self._send(handler, json.dumps(envelope).encode())

    @staticmethod
    def _send(handler, data: bytes):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def refused_url() -> str:
    """A loopback URL where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
