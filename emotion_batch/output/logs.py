"""Logging for the command line: rich on a terminal, plain timestamped lines everywhere else.

Cron mail and log files must not contain colour codes or progress-bar redraws, so the non-terminal format is
deliberately plain. Only the `emotion_batch` logger is configured; the root logger is left to the host.
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOGGER_NAME = "emotion_batch"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


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
    logger.addHandler(screen)

    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
        file_handler.setLevel(min(level, logging.INFO))
        logger.addHandler(file_handler)
