"""The admin API's and the webhooks' Prometheus metrics, registered on the process's registry
(``gateway.metrics.Metrics.registry``: what the admin port serves)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("switch_api_requests", "Admin API requests by method, route and "
                                "status", ["method", "route", "status"], registry=registry)
        self.auth_failures = Counter("switch_api_auth_failures", "Admin API requests refused "
                                     "before an operator was known, by reason (bad_credentials, "
                                     "credentials_required, unauthorized, session_expired, "
                                     "rate_limited)",
                                     ["reason"], registry=registry)
        self.console_signins = Counter("switch_console_signins", "Console sign-in attempts by "
                                       "result (ok, bad_credentials, rate_limited, csrf_failed)",
                                       ["result"], registry=registry)
        self.console_pages = Counter("switch_console_pages", "Console page requests by page and "
                                     "status", ["page", "status"], registry=registry)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("switch_webhook_deliveries", "Webhook events by webhook and "
                                  "result (delivered; failed: every attempt failed)",
                                  ["webhook", "result"], registry=registry)
        self.attempts = Counter("switch_webhook_attempts", "Webhook delivery attempts by webhook "
                                "and result (a status code, or timeout / connect_error)",
                                ["webhook", "result"], registry=registry)
        self.dropped = Counter("switch_webhook_dropped", "Webhook events dropped before any "
                               "attempt, by webhook and reason (queue_full, shutdown)",
                               ["webhook", "reason"], registry=registry)
        self.queued = Gauge("switch_webhook_queued", "Webhook events waiting for delivery",
                            ["webhook"], registry=registry)
