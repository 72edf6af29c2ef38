"""What the command-line entry points share: how bad input ends. Light on purpose (the
rehearsal script imports it without loading torch)."""

from __future__ import annotations

import sys

EXIT_USAGE = 2  # bad input: refused before anything started or was written


def usage_error(message: str) -> int:
    """Print ``error: message`` (credentials redacted) to stderr; the exit status to return."""
    from jepa_sweeps.spec import redact

    print(f"error: {redact(message)}", file=sys.stderr)
    return EXIT_USAGE
