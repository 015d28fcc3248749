"""Logging for the command line: rich on a terminal, plain timestamped lines everywhere else.

Cron mail and log files must not contain colour codes or progress-bar redraws, so the non-terminal format is
deliberately plain. Only the `emotion_batch` logger is configured; the root logger is left to the host.

Every record's message is escaped before any handler writes it: control characters (a newline or an ANSI escape
in a file name) become visible escapes ("\\n", "\\x1b"), so a hostile or odd name can neither forge a log line
nor recolour a terminal. Intentional multi-line messages keep their line breaks as indented continuation lines.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

LOGGER_NAME = "emotion_batch"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# C0 and C1 control characters and DEL, plus the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A newline inside an argument that starts an indented line (a list a message spells out, one item a line).
_LIST_BREAK = "\n  "


def escape_control(text: str) -> str:
    r"""`text` with every control character as a visible escape: "a\nb\x1b[31m" -> "a\\nb\\x1b[31m"."""
    return _CONTROL.sub(
        lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text
    )


def _escape_argument(value: object) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value)
    return _LIST_BREAK.join(escape_control(part) for part in text.split(_LIST_BREAK))


def _continuation(line: str) -> str:
    """A line after a message's first starts with white space, so it can never pass for a record of its own."""
    return line if not line or line[0] in " \t" else f"  {line}"


def _lines(text: str) -> str:
    first, *rest = text.split("\n")
    return "\n".join([first, *map(_continuation, rest)])


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with control characters escaped (see EscapeControl)."""
    template = str(record.msg)
    template = "\n".join(escape_control(line) for line in template.split("\n"))
    args = record.args
    if not args:
        return _lines(template)
    safe: Any
    if isinstance(args, dict):
        safe = {key: _escape_argument(value) for key, value in args.items()}
    else:
        safe = tuple(_escape_argument(value) for value in args)
    try:
        return _lines(template % safe)
    except (TypeError, ValueError, KeyError):  # e.g. "%d" given a str: format as logging would, then escape
        return _lines("\n".join(escape_control(line) for line in record.getMessage().split("\n")))


class EscapeControl(logging.Filter):
    """Makes a record safe to write as plain text: no control character from a file name or an error reaches
    the log (each becomes a visible escape such as "\\n" or "\\x1b"), and every line after a message's first
    starts with white space, so no name can forge a log line or recolour a terminal.

    The message template's own line breaks are kept, and so are those of an argument that starts indented
    lines (a list, one item a line); every other line break in an argument is escaped. Idempotent.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = safe_message(record)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            lines = record.exc_text.split("\n")
            record.exc_text = "\n".join(_continuation(escape_control(line)) for line in lines)
        return True


def configure(
    level: int, interactive: bool, console: Any = None, log_file: str | os.PathLike[str] | None = None
) -> None:
    """Send `emotion_batch` log records to the terminal (rich) or stderr (plain), and optionally to a file."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(min(level, logging.INFO) if log_file else level)
    logger.propagate = False

    if interactive:
        from rich.logging import RichHandler

        screen: logging.Handler = RichHandler(
            console=console, show_path=False, markup=False, log_time_format="%X"
        )
    else:
        screen = logging.StreamHandler()
        screen.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
    screen.setLevel(level)
    screen.addFilter(EscapeControl())
    logger.addHandler(screen)

    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
        file_handler.setLevel(min(level, logging.INFO))
        file_handler.addFilter(EscapeControl())
        logger.addHandler(file_handler)
