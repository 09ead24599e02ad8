"""Injected faults and the optional rate limiter: how the emulator misbehaves on purpose.

To add a fault: its kind in `FaultKind`, its fields on `FaultRule` (the control endpoint and
`Emulator.inject_fault` take them from there), what it does in `FaultRule.strike`, and a row in the
package README's fault table.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import orjson

FaultKind = Literal["status", "latency", "omit_rows", "malformed", "drop"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


class FaultSpecError(ValueError):
    """An inject_fault / rate-limit request is invalid; the message names the bad field."""


Answer = tuple[int, bytes, dict[str, str]]  # (HTTP status, body, headers)


def _json_answer(status: int, value: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, orjson.dumps(value), {"Content-Type": "application/json", **(headers or {})}


@dataclass(frozen=True, slots=True)
class Strike:
    """What misbehaviour does to one API request. `fault` names it in the request log (a fault kind or
    `rate_limit`); `answer` replaces the request's answer; `drop` closes the connection unanswered;
    otherwise the request is handled, a `labelrow` GET answer leaving out its last `omit` rows."""

    fault: str | None = None
    answer: Answer | None = None
    drop: bool = False
    omit: int = 0


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


# How a spec's value becomes a field's, by the field's annotation; a spec names `remaining` `count`.
_CONVERT: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "str | None": _optional_str}
_SPEC_NAME = {"remaining": "count"}


@dataclass(slots=True)
class FaultRule:
    """Applies to the next `remaining` API requests that match every given criterion.

    kinds: `status` (answer `status`, with `Retry-After: retry_after` if set, instead of handling the
    request), `latency` (sleep `latency_s`, then handle normally), `omit_rows` (a `labelrow` GET answer
    leaves out its last `omit` rows), `malformed` (HTTP 200 with a body that is not JSON), `drop` (close the
    connection unanswered).
    `path` is an fnmatch pattern on the URL path (`/public`, `/v2/public/projects/*`).
    """

    kind: FaultKind
    remaining: int = 1
    path: str | None = None
    query_type: str | None = None
    query_method: str | None = None
    status: int = 503
    retry_after: str | None = None
    latency_s: float = 0.0
    omit: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultSpecError(f"kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.remaining < 1:
            raise FaultSpecError("count must be at least 1")
        if not 100 <= self.status <= 599:
            raise FaultSpecError(f"status must be an HTTP status, got {self.status}")
        if self.omit < 1:
            raise FaultSpecError("omit must be at least 1")

    def matches(self, path: str, query_type: str | None, query_method: str | None) -> bool:
        if self.path is not None and not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.query_type is not None and self.query_type != query_type:
            return False
        return self.query_method is None or self.query_method == query_method

    def strike(self) -> Strike:
        """What this fault does to the request it is spent on."""
        if self.kind == "latency":
            time.sleep(self.latency_s)
            return Strike(self.kind)
        if self.kind == "status":
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            answer = _json_answer(self.status, {"message": f"injected fault: HTTP {self.status}"}, extra)
            return Strike(self.kind, answer=answer)
        if self.kind == "malformed":
            return Strike(
                self.kind, answer=(200, b"<html>injected fault: not JSON", {"Content-Type": "text/html"})
            )
        if self.kind == "drop":
            return Strike(self.kind, drop=True)
        return Strike(self.kind, omit=self.omit)  # omit_rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FaultRule:
        """A rule from a fault spec: the fields' names (`count` for `remaining`), every one but `kind`
        optional."""
        names = {_SPEC_NAME.get(f.name, f.name): f for f in fields(cls)}
        unknown = set(spec) - set(names)
        if unknown:
            raise FaultSpecError(f"unknown fault fields {sorted(unknown)}; known: {sorted(names)}")
        if "kind" not in spec:
            raise FaultSpecError("a fault needs 'kind'")
        try:
            values = {
                names[key].name: _CONVERT.get(str(names[key].type), lambda v: v)(value)
                for key, value in spec.items()
            }
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise FaultSpecError(str(exc)) from exc


class FaultBook:
    """The queue of armed faults; the first armed rule that matches a request is spent on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def armed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_dict() for rule in self._rules]

    def take(self, path: str, query_type: str | None, query_method: str | None) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(path, query_type, query_method):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                    return rule
        return None


def strike(
    path: str,
    query_type: str | None,
    query_method: str | None,
    *,
    latency_s: float,
    limiter: RateLimiter,
    book: FaultBook,
) -> Strike:
    """How the emulator misbehaves on one API request, in this order: its fixed latency (`latency_s`), an
    empty rate-limit bucket (429), then the first armed fault that matches."""
    if latency_s:
        time.sleep(latency_s)
    if not limiter.admit():
        retry_after = limiter.retry_after
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return Strike("rate_limit", answer=_json_answer(429, {"message": "rate limit exceeded"}, headers))
    rule = book.take(path, query_type, query_method)
    return Strike() if rule is None else rule.strike()


class RateLimiter:
    """A token bucket over all API requests; off until configured. An empty bucket answers 429."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate_per_s: float | None = None
        self.burst = 1
        self.retry_after: str | None = "1"
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def configure(
        self, rate_per_s: float | None, *, burst: int = 1, retry_after: int | str | None = 1
    ) -> None:
        if rate_per_s is not None and rate_per_s < 0:
            raise FaultSpecError("rate_per_s must be >= 0 (or null to turn the limiter off)")
        if burst < 1:
            raise FaultSpecError("burst must be at least 1")
        with self._lock:
            self.rate_per_s = rate_per_s
            self.burst = burst
            self.retry_after = None if retry_after is None else str(retry_after)
            self._tokens = float(burst)
            self._stamp = time.monotonic()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"rate_per_s": self.rate_per_s, "burst": self.burst, "retry_after": self.retry_after}

    def admit(self) -> bool:
        """Take a token; False means answer 429."""
        with self._lock:
            if self.rate_per_s is None:
                return True
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False
