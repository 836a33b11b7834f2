"""What every command shares: the default of ``-c``, who acts locally, the clock, and the
configuration loaded from ``-c`` (one that does not load stops the command: ``config_invalid``)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
from pathlib import Path

from config.check import format_problems
from config.errors import ConfigError
from config.load import load_config
from config.model import SwitchConfig
from gateway.cli.exits import CliExit


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_config() -> str:
    return os.environ.get("SWITCH_CONFIG", "switch.toml")


def local_actor() -> str:
    """Who acts in a command run on the store itself: ``local:<OS user>``, the user this process
    runs as (its effective uid, not $USER or $LOGNAME, which the caller chooses). There is no
    option to say otherwise: whoever can run the command on the store could as well write the
    database directly, so a name they typed would prove nothing and only mislead the audit log.
    Through the API (``--server``) the actor is the token's operator, set by the server."""
    uid = os.geteuid()
    try:
        return f"local:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"local:uid-{uid}"


def config_missing(path: object) -> CliExit | None:
    """The refusal of a command whose configuration file does not exist (exit 5), saying how to
    name one; None when ``path`` exists."""
    if Path(str(path)).exists():
        return None
    named = ("$SWITCH_CONFIG" if os.environ.get("SWITCH_CONFIG") == str(path)
             else "-c" if str(path) != "switch.toml" else "the default, ./switch.toml")
    return CliExit("config_missing",
                   f"no configuration at {path} ({named}): name one with -c FILE or "
                   "$SWITCH_CONFIG, or create a deployment with `switch init DIR`")


def config_invalid(path: object, exc: ConfigError, note: str = "") -> CliExit:
    """The refusal of a command whose configuration does not load (exit 5); ``config_missing``
    when there is no file at all."""
    return config_missing(path) or CliExit(
        "config_invalid", f"{path} does not load{note}:\n{format_problems(exc.problems)}")


def load(args: argparse.Namespace) -> SwitchConfig:
    path = Path(args.config)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise config_invalid(path, exc) from exc
