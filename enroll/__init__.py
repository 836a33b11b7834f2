"""The Switch authority: store, provisioning keys, issuers, profiles and the EST service.

This package imports ``config`` but never ``gateway``.
"""
