"""``python -m gateway.cli``: how the supervisor starts its worker processes."""

from gateway.cli import main

raise SystemExit(main())
