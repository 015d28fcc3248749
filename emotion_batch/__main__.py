"""`python -m emotion_batch` runs the CLI (same as the `emotion-batch` command)."""

from .cli import main

main()
