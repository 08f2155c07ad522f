"""A client for any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, a hosted API),
with the standard library only, and the reply cache that makes a rerun ask nothing twice.

What can go wrong with such an endpoint, and what happens:
- a reply slower than `timeout`, a 429 (rate limit, honouring Retry-After), a 5xx, a refused or
  dropped connection, an envelope that is not JSON: retried with exponential backoff;
- a reply whose content the caller's `parse` refuses (not JSON, an answer not among the choices, a
  repeated question): asked again, as a sampled model may do better;
- any other 4xx (bad key, unknown model): no retry.
When the attempts run out, `ApiError` says in one line which record, what went wrong last and how
many attempts were made. Replies are cached only once `parse` accepted them.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from hermesflow.errors import HermesFlowError, UsageError
from hermesflow.options import ApiOptions

T = TypeVar("T")
R = TypeVar("R")


class ApiError(HermesFlowError):
    """An endpoint that did not give a usable reply after every attempt."""


class BadReply(Exception):
    """Raised by a caller's `parse` for a reply it cannot use; the reason ends up in ApiError."""


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


@dataclass
class Usage:
    """What the endpoint cost: calls (with retries), tokens as the server counts them, wall time."""

    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: int = 0

    def line(self) -> str:
        return (f"{self.calls} calls ({self.retries} retries, {self.cached} answered from the cache), "
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens, {self.seconds:.1f} s")


class ChatClient:
    """POST {base_url}/chat/completions with retries; see the module docstring."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, max_tokens: int = 1024, json_schema: bool = True):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.retries, self.backoff, self.max_tokens, self.json_schema = retries, backoff, max_tokens, json_schema
        self.usage = Usage()
        self._lock = threading.Lock()  # requests may run in several threads (`in_order`)

    def count(self, **amounts: float) -> None:
        """Add to the usage counters (thread-safe)."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self.usage, name, getattr(self.usage, name) + amount)

    def ask(self, messages: list[dict], parse: Callable[[str], T], *, what: str, schema: dict | None = None) -> T:
        """The parsed content of the first reply `parse` accepts; ApiError naming `what` otherwise."""
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        if schema is not None and self.json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.count(retries=1)
            wait = None
            try:
                return parse(self._post(data))
            except _Retry as e:
                last, wait = str(e), e.wait
            except BadReply as e:
                last = f"unusable reply ({e})"
            if attempt < self.retries:
                time.sleep(wait if wait is not None else self.backoff * 2**attempt)
        raise ApiError(f"{what}: {last}; gave up after {self.retries + 1} attempts to {self.url}")

    def _post(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        start = time.perf_counter()
        self.count(calls=1)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After")
                wait = min(float(retry_after), 60.0) if retry_after and retry_after.isdigit() else None
                raise _Retry(f"HTTP {e.code} {e.reason}", wait) from None
            raise ApiError(f"{self.url}: HTTP {e.code} {e.reason} ({detail[:200]}); not retried") from None
        except TimeoutError:
            raise _Retry(f"no reply within {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"no reply within {self.timeout:g} s") from None
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise _Retry(f"cannot connect ({text})") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise _Retry(f"connection lost ({type(e).__name__})") from None
        finally:
            self.count(seconds=time.perf_counter() - start)
        try:
            envelope = json.loads(raw)
            content = envelope["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise _Retry(f"the reply is not a chat completion: {raw[:80]!r}") from None
        usage = envelope.get("usage") or {}
        self.count(prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0))
        if not isinstance(content, str):
            raise BadReply("no text content")
        return content


def api_client(options: ApiOptions) -> ChatClient:
    """The client of a verb's API options (--endpoint, --api-model, ...)."""
    if not options.endpoint or not options.api_model:
        raise UsageError("--endpoint and --api-model are required to ask a model behind an API")
    return ChatClient(options.endpoint, options.api_model, api_key=os.environ.get(options.api_key_env) or None,
                      timeout=options.timeout, retries=options.retries, backoff=options.backoff,
                      json_schema=options.json_schema)


def in_order(fn, items: Sequence[T], workers: int, desc: str, client: ChatClient | None = None) -> Iterator[R]:
    """fn(item) for each item, at most `workers` at a time in threads, yielded in the items' order
    under a progress bar (rate, time left, tokens so far). The first failure, in that order, is
    raised once the requests in flight have finished; no request starts after it."""
    bar = tqdm(total=len(items), desc=desc, dynamic_ncols=True, disable=not items)
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = deque(pool.submit(fn, item) for item in itertools.islice(pending, workers))
        try:
            while window:
                result = window.popleft().result()
                window.extend(pool.submit(fn, item) for item in itertools.islice(pending, 1))
                bar.update()
                if client is not None:
                    u = client.usage
                    bar.set_postfix_str(f"{u.prompt_tokens + u.completion_tokens} tokens, {u.retries} retries", refresh=False)
                yield result
        finally:
            bar.close()


def parse_json_object(content: str) -> dict:
    """The JSON object of a reply, also when a model wraps it in a ```json fence."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadReply(f"not JSON ({e.msg} at column {e.colno}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise BadReply(f"expected a JSON object, got {type(value).__name__}")
    return value


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    """Accepted replies by key, appended one JSON line at a time (flushed), so a killed run keeps
    every reply it had and a cut last line is ignored."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.values: dict[str, object] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.values[row["key"]] = row["value"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a kill
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> object | None:
        return self.values.get(key)

    def put(self, key: str, value: object) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            self.values[key] = value
            if f.tell() and not self._ends_with_newline():
                f.write("\n")
            f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
