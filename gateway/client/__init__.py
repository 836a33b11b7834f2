"""Client-side tools: the reference agent, the EST client, the load generator and its report, the
echo upstream. They speak to Switch over the network only and import no server module (checked by
import-linter, see ``pyproject.toml``)."""
