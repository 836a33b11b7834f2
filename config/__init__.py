"""Switch configuration: the model, loading from TOML, validation and checks.

This package imports neither ``gateway`` nor ``enroll``.
"""
