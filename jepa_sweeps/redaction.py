"""Credentials in URIs: stripped from everything printed, logged, tagged or stored.

A tracking URI may carry ``user:password@`` (or a token as the user), a storage URI an access
key, a URL a signed query. ``redact`` is applied to every text that leaves the process — before
it is shortened, so a cut never leaves a password's prefix — and ``hide_credentials`` takes them
out of the tracking URI the runner hands to Ray and Tune (whose experiment state is pickled to
storage): MLflow then takes them from where it always looks (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``; for a database URI, ``MLFLOW_TRACKING_URI``) in the runner's own
process.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# scheme:// then one token (up to whitespace or a quote); the user info ends at the token's LAST
# '@': a password may hold a raw '@', '/', '?' or '#'. An '@' in a path or query is masked too.
_URI = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://[^\s'\"<>`]*@")
_SECRET_QUERY = re.compile(
    r"([?&;][^=&#\s]*(?:token|key|secret|password|passwd|pwd|sig|signature|credential|auth)[^=&#\s]*=)[^&#\s'\"<>]*",
    re.IGNORECASE,
)
_HEADER = re.compile(r"((?:Authorization|Proxy-Authorization)['\"]?\s*[:=]\s*['\"]?(?:Basic|Bearer|Token)\s+)[^\s'\",}]+",
                     re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URI's user info (``user:password@``, a token, an access key),
    secret-looking query values and Authorization header values replaced by ``***``."""
    text = _URI.sub(rf"\1://{MASK}@", text)
    text = _SECRET_QUERY.sub(rf"\1{MASK}", text)
    return _HEADER.sub(rf"\1{MASK}", text)


def shorten(text: str, limit: int = 80) -> str:
    """Redacted, then cut to ``limit`` characters (in this order: a cut could split a password)."""
    text = redact(text)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def has_credentials(uri: str) -> bool:
    return redact(uri) != uri


def credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user info, user, password)``, user and password percent-decoded."""
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return uri, None, None
    user, colon, password = userinfo.partition(":")
    return parts._replace(netloc=host).geturl(), unquote(user), unquote(password) if colon else None


def hide_credentials(uri: str) -> str:
    """The form of tracking URI ``uri`` that may be printed, pickled and passed to Ray.

    An http(s) URI's user and password move to ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` of this
    process, where MLflow's client reads them, and the bare URI works as it is. A database URI
    cannot take its password from elsewhere: the whole URI goes to ``MLFLOW_TRACKING_URI`` and the
    redacted form is returned, which ``connectable`` turns back into the real one here.
    """
    if not has_credentials(uri):
        return uri
    if urlsplit(uri).scheme in ("http", "https"):
        bare, user, password = credentials(uri)
        os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        else:  # a token as the user part: MLflow sends it as a bearer token
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ["MLFLOW_TRACKING_TOKEN"] = user or ""
        return bare
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return redact(uri)


def connectable(uri: str) -> str:
    """The URI to open a client with: ``uri`` itself, or the real one ``hide_credentials`` kept
    in this process's environment when ``uri`` is its redacted form."""
    real = os.environ.get("MLFLOW_TRACKING_URI", "")
    return real if real and uri != real and redact(real) == uri else uri


class _RedactingRecords:
    """A log record factory whose records carry redacted messages, whoever logs them."""

    def __init__(self, factory: logging.LogRecordFactory) -> None:  # type: ignore[valid-type]
        self.factory = factory

    def __call__(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self.factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record


def redact_logs() -> None:
    """Every log record of this process (MLflow's, Ray's, ours) redacted when it is made."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecords):
        logging.setLogRecordFactory(_RedactingRecords(factory))
