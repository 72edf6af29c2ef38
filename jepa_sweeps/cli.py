"""What the command-line entry points share: how bad input ends. Light on purpose (the
rehearsal script imports it without loading torch)."""

from __future__ import annotations

import sys

EXIT_USAGE = 2  # bad input: refused before anything started or was written


def usage_error(message: str) -> int:
    """Print ``error: message`` to stderr, at most three lines, each redacted and then shortened;
    the exit status to return."""
    from jepa_sweeps.redaction import shorten

    lines = [shorten(line, 300) for line in message.splitlines()[:3]] or ["bad input"]
    print("error: " + "\n".join(lines), file=sys.stderr)
    return EXIT_USAGE
