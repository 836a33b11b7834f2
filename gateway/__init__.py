"""The Switch gateway: listeners, per-tenant TLS, peer checks, live sessions, relay and the CLI."""
