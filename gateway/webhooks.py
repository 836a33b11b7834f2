"""Webhook delivery: each ``[[webhooks]]`` entry gets the events it subscribed to as signed JSON
POSTs (``gateway.webhook_events``), from a bounded queue, retried with back-off, never in the
way of what caused them.

Theory of operation. ``emit`` is called after the change it reports was committed (by the API's
handlers, and by the enroll listener once a batch that filed a request held for approval is
stored); it builds the event and puts it on each subscribed webhook's queue with ``send_nowait``:
it never waits and never fails. A full queue (``MAX_QUEUE`` events) drops the event, counted
(``switch_webhook_dropped{reason="queue_full"}``) and logged. Each webhook has one delivery task
(``run`` owns them): events go out one at a time, in order; an attempt that gets no 2xx within
the webhook's ``timeout`` is retried after a full-jitter exponential back-off (1 s doubling to
30 s, ``MAX_ATTEMPTS`` attempts in all, about a minute and a half), except a 4xx other than 408
and 429: the receiver refused the event itself and retrying cannot help. A receiver that is
down therefore delays its own later events and nothing else.

Which process sends: the one where the change was committed (the API's process for operators'
actions, the worker that answered the enrollment for ``request.pending``). Each event is emitted
once, by one process, whatever the number of workers or hosts. Queues live in memory: events
still queued when the process stops are dropped (counted, ``reason="shutdown"``); a receiver
that must not miss anything reconciles from the audit log (``GET /api/v1/audit``). Commands run
locally on the store (``switch keys ...`` without ``--server``) send no webhooks.

Logs name a webhook by its ``name`` and its URL's scheme, host and port only: a receiver's URL
path often holds a secret of its own.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import structlog
import trio

from config.model import Webhook
from config.tls_material import read_password_file
from gateway import webhook_events
from gateway.api.metrics import WebhookMetrics
from gateway.webhook_events import WebhookEvent

log = structlog.get_logger("switch.webhooks")

MAX_QUEUE = 1000
MAX_ATTEMPTS = 6
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


def retry_delay(attempt: int, *, first_s: float = FIRST_RETRY_S, max_s: float = MAX_RETRY_S
                ) -> float:
    """Full jitter: uniform in [0, min(max, first * 2^(attempt-1))] after attempt ``attempt``."""
    return random.uniform(0, min(max_s, first_s * 2 ** (attempt - 1)))


def retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def where(url: str) -> str:
    """The URL's scheme, host and port: what logs show of it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@attrs.define(eq=False)
class _Target:
    hook: Webhook
    secret: bytes = attrs.field(repr=False)
    send: trio.MemorySendChannel[WebhookEvent]
    receive: trio.MemoryReceiveChannel[WebhookEvent]


class Webhooks:
    """The process's webhooks. ``emit`` from any task; ``run`` is the one task that delivers
    (start it in the nursery that outlives the listeners: queued events go out while they
    drain)."""

    def __init__(self, hooks: Sequence[Webhook], metrics: WebhookMetrics, *,
                 max_queue: int = MAX_QUEUE, max_attempts: int = MAX_ATTEMPTS,
                 first_retry_s: float = FIRST_RETRY_S) -> None:
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.first_retry_s = first_retry_s
        self.targets: list[_Target] = []
        for hook in hooks:
            send, receive = trio.open_memory_channel[WebhookEvent](max_queue)
            # Read once, at start (the loader checked it); ``webhooks`` is restart-only.
            self.targets.append(_Target(hook, read_password_file(hook.secret_file), send, receive))
            metrics.queued.labels(hook.name).set(0)

    def emit(self, event: str, *, tenant: str | None, actor: str,
             data: Mapping[str, Any]) -> None:
        """Queue ``event`` for every webhook subscribed to it. Never blocks, never raises."""
        targets = [t for t in self.targets if event in t.hook.events]
        if not targets:
            return
        made = WebhookEvent.new(event, tenant=tenant, actor=actor, data=data)
        for target in targets:
            name = target.hook.name
            try:
                target.send.send_nowait(made)
            except trio.WouldBlock:
                self._dropped(name, made, "queue_full")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._dropped(name, made, "shutdown")
            else:
                self.metrics.queued.labels(name).inc()

    def _dropped(self, name: str, event: WebhookEvent, reason: str) -> None:
        self.metrics.dropped.labels(name, reason).inc()
        log.warning("webhook_dropped", webhook=name, event_type=event.type, event_id=event.id,
                    reason=reason)

    async def run(self) -> None:
        if not self.targets:
            return
        try:
            async with trio.open_nursery() as nursery:
                for target in self.targets:
                    nursery.start_soon(self._deliver_all, target)
        finally:
            for target in self.targets:
                while True:
                    try:
                        event = target.receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    self.metrics.queued.labels(target.hook.name).dec()
                    self._dropped(target.hook.name, event, "shutdown")
                target.receive.close()  # later emits count as dropped

    async def _deliver_all(self, target: _Target) -> None:
        hook = target.hook
        # The system's CAs unless ca_file names others (not httpx's bundled certifi list).
        verify = ssl.create_default_context(
            cafile=str(hook.ca_file) if hook.ca_file is not None else None)
        async with httpx.AsyncClient(verify=verify, timeout=hook.timeout_s,
                                     follow_redirects=False, trust_env=False) as client:
            async for event in target.receive:
                self.metrics.queued.labels(hook.name).dec()
                try:
                    await self._deliver(client, target, event)
                except Exception:  # noqa: BLE001 - a webhook's bug must not stop the server
                    self.metrics.deliveries.labels(hook.name, "failed").inc()
                    log.exception("webhook_delivery_failed", webhook=hook.name,
                                  event_type=event.type, event_id=event.id)

    async def _deliver(self, client: httpx.AsyncClient, target: _Target,
                       event: WebhookEvent) -> None:
        hook, body = target.hook, event.body()
        result = "failed"
        for attempt in range(1, self.max_attempts + 1):
            outcome = await self._attempt(client, target, event, body, attempt)
            self.metrics.attempts.labels(hook.name, outcome).inc()
            if outcome.startswith("2"):
                result = "delivered"
                break
            if outcome.isdigit() and not retryable(int(outcome)):
                break
            if attempt < self.max_attempts:
                await trio.sleep(retry_delay(attempt, first_s=self.first_retry_s))
        self.metrics.deliveries.labels(hook.name, result).inc()
        log_event = log.info if result == "delivered" else log.warning
        log_event("webhook_delivery", webhook=hook.name, to=where(hook.url),
                  event_type=event.type, event_id=event.id, result=result, attempts=attempt,
                  last=outcome)

    async def _attempt(self, client: httpx.AsyncClient, target: _Target, event: WebhookEvent,
                       body: bytes, attempt: int) -> str:
        """One POST: its status code as text, or ``timeout`` / ``connect_error``."""
        hook = target.hook
        try:
            with trio.fail_after(hook.timeout_s):
                response = await client.post(hook.url, content=body, headers=webhook_events.headers(
                    event, body, target.secret, attempt))
        except (trio.TooSlowError, httpx.TimeoutException):
            return "timeout"
        except httpx.HTTPError:
            return "connect_error"
        return str(response.status_code)
