"""Declaring command-line options the same way in every command: env-var defaults for cron, help from a table.

Every option `--long-name` of `emotion-batch analyze` and `emotion-batch live` can also be set as
`EMOTION_BATCH_LONG_NAME`, and its help text lives in one table per command, next to the command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

ENV_PREFIX = "EMOTION_BATCH_"


def option_factory(help_texts: Mapping[str, str], prefix: str = ENV_PREFIX) -> Callable[..., Any]:
    """A `click.option` wrapper: env var `<prefix><LONG_NAME>`, shown in --help, help text from `help_texts`."""

    def option(*decls: str, **kwargs: Any) -> Any:
        long_name = next(d for d in decls if d.startswith("--")).split("/")[0][2:]
        kwargs.setdefault("envvar", prefix + long_name.upper().replace("-", "_"))
        kwargs.setdefault("show_envvar", True)
        kwargs.setdefault("help", help_texts.get(long_name))
        if "default" in kwargs:
            kwargs.setdefault("show_default", True)
        return click.option(*decls, **kwargs)

    return option
