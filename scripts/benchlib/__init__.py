"""``scripts/bench``: Switch next to nginx on the same machine, PKI and load generator."""
