"""What tests share beyond fixtures: a test PKI, deployments, a gateway and its agents, a
misbehaving server. Fixtures themselves live in ``tests/conftest.py``."""
