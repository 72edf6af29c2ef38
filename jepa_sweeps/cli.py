"""What the command-line entry points share: how bad input ends."""

from __future__ import annotations

import sys

from jepa_sweeps.spec import redact

EXIT_USAGE = 2  # bad input: refused before anything started or was written


def usage_error(message: str) -> int:
    """Print ``error: message`` (credentials redacted) to stderr; the exit status to return."""
    print(f"error: {redact(message)}", file=sys.stderr)
    return EXIT_USAGE
