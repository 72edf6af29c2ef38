"""Checks of the outside world before a sweep starts: storage, tracking store, cluster capacity.

Each refuses with a ``ConfigError`` (exit 2) what would otherwise fail after Ray started and
MLflow was written: a folder ``os.access`` calls writable that is not, a tracking URI whose
driver or server is missing, trials asking for resources the cluster never has. Nothing is left
behind: the write test removes its file, the database check only opens a TCP connection.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from jepa_sweeps.config import ConfigError
from jepa_sweeps.redaction import has_credentials, shorten

TIMEOUT_S = 10.0
DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # what pyarrow.fs (Ray's storage) opens


def storage_location(value: str) -> tuple[str, str | None]:
    """``(storage, problem)`` for the spec's ``storage``, without touching it: ``file://`` becomes a
    path; credentials in a URI are refused (Ray writes the storage URI into the experiment state),
    as are unknown schemes and paths that cannot be resolved (``~nobody``, NUL)."""
    if not value.strip() or value != value.strip():
        return value, "empty or surrounded by spaces"
    if has_credentials(value):
        return value, "holds credentials, which Ray would store; use the cloud SDK's environment or profile"
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() == "file":
        value = unquote(urlparse(value).path) if rest.startswith("/") else rest
        if not value.startswith("/"):
            return value, "file:// needs an absolute path (file:///srv/ray)"
    elif sep and scheme.lower() not in STORAGE_SCHEMES:
        return value, f"unsupported scheme {scheme!r} (use a path or {', '.join(STORAGE_SCHEMES)})"
    elif sep and not urlparse(value).netloc:
        return value, "names no bucket"
    if not value.partition("://")[1]:
        try:
            Path(value).expanduser().resolve()
        except (RuntimeError, ValueError, OSError) as err:
            return value, f"not a usable path ({err})"
    return value, None


def writable(folder: Path) -> str | None:
    """Why ``folder`` could not be created and written, or None: a file is really created (and
    removed) in its nearest existing ancestor, since ``os.access`` says yes to root on /proc."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".jepa-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror or err})"
    return None


def with_timeout(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` in a daemon thread; ``TimeoutError`` if it takes longer (cloud SDKs may retry for minutes)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            outcome.append((False, err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def check_storage(storage: str) -> None:
    """Local: the folder can really be made and written. URI: the bucket answers with the
    credentials this process has (environment, profile), within a bounded time."""
    key = f"storage={shorten(repr(storage))}"
    if "://" not in storage:
        problem = writable(Path(storage))
        if problem:
            raise ConfigError(f"{key}: {problem}")
        return

    def probe() -> None:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(storage)
        fs.get_file_info(inner)

    try:
        with_timeout(probe, 2 * TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - pyarrow raises OSError, ValueError, ArrowException...
        reason = shorten(" ".join(str(err).split()) or type(err).__name__, 160)
        raise ConfigError(f"{key}: not reachable with this environment's credentials ({reason})") from None


def check_tracking(uri: str) -> None:
    """Fail early (exit 2) on a tracking store that cannot work, without creating anything."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    key = f"mlflow.tracking_uri={shorten(repr(uri))}"
    if scheme in ("http", "https"):
        _check_server(uri, key)
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:////"):
            raise ConfigError(f"{key}: use sqlite:/// followed by an absolute path (sqlite:////srv/mlflow.db)")
        database = Path(uri.removeprefix("sqlite:///"))
        problem = writable(database.parent) if not database.is_dir() else f"{database} is a folder"
        if problem:
            raise ConfigError(f"{key}: {problem}")
    elif scheme.split("+")[0] in DATABASES:
        _check_database(uri, scheme, key)
    elif scheme == "databricks" or uri == "databricks":
        if not (os.environ.get("DATABRICKS_HOST") or Path("~/.databrickscfg").expanduser().is_file()):
            raise ConfigError(f"{key}: no Databricks workspace configured (DATABRICKS_HOST or ~/.databrickscfg)")
    elif scheme == "file":
        raise ConfigError(f"{key}: MLflow's file store is deprecated; use sqlite:/// and an absolute path")
    else:
        raise ConfigError(f"{key}: unsupported scheme (use sqlite:///, http(s):// or a database URI)")


def _check_server(uri: str, key: str) -> None:
    parsed = urlparse(uri)
    try:
        # urllib takes no credentials in a URL: send them as a header (as MLflow's client does).
        bare = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
        health = urllib.request.Request(f"{bare.rstrip('/')}/health")
        user, password = _userinfo(parsed.netloc)
        if user is not None:
            secret = f"{user}:{password or ''}"
            health.add_header("Authorization", f"Basic {base64.b64encode(secret.encode()).decode()}")
        with urllib.request.urlopen(health, timeout=TIMEOUT_S) as response:
            if response.status != 200:
                raise ConfigError(f"{key}: server answered {response.status}")
    except urllib.error.HTTPError as err:
        raise ConfigError(f"{key}: server answered {err.code} ({shorten(str(err.reason), 60)})") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = shorten(str(getattr(err, "reason", err)), 160)
        raise ConfigError(f"{key}: not reachable ({reason})") from None


def _userinfo(netloc: str) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user), unquote(password) if colon else None


def _check_database(uri: str, scheme: str, key: str) -> None:
    """The SQLAlchemy driver imports and the server accepts a TCP connection (no login, no write)."""
    try:
        from sqlalchemy.engine import make_url

        url = make_url(uri)
        dialect = url.get_dialect()
    except Exception as err:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError
        raise ConfigError(f"{key}: not a usable database URI ({shorten(str(err), 120)})") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = getattr(err, "name", None) or str(err)
        raise ConfigError(f"{key}: its database driver is not installed ({module}; pip install it)") from None
    host, port = url.host or "localhost", url.port or DATABASES[scheme.split("+")[0]]
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S / 2).close()
    except OSError as err:
        raise ConfigError(f"{key}: no database server at {host}:{port} ({err.strerror or err})") from None


def check_cluster(resources: Any) -> None:
    """Trials asking for more than the running cluster has (or, autoscaling, declares in
    ``resources.cluster_max`` it can grow to) would pend forever: refuse them at start."""
    import ray

    capacity = dict(ray.cluster_resources())
    for name, amount in resources.cluster_max.items():
        capacity[name] = max(capacity.get(name, 0.0), amount)
    largest = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                largest[name] = max(largest.get(name, 0.0), amount)
    r = resources
    needs = [
        ("CPU", r.driver_cpus + r.workers * r.cpus_per_worker,
         f"resources: {r.workers} worker(s) × cpus_per_worker={r.cpus_per_worker:g} + driver_cpus={r.driver_cpus:g}"),
        ("GPU", r.workers * r.gpus_per_worker, f"resources: {r.workers} worker(s) × gpus_per_worker={r.gpus_per_worker:g}"),
        *((name, amount, f"resources.driver_resources.{name}={amount:g}") for name, amount in r.driver_resources.items()),
    ]
    suffix = "; an autoscaling cluster can declare more in resources.cluster_max"
    for name, amount, why in needs:
        have = capacity.get(name, 0.0)
        if amount > 0 and amount > have + 1e-9:
            raise ConfigError(f"{why}: a trial needs {amount:g} {name}, the cluster has {have:g}{suffix}")
    if not r.cluster_max:
        for name, amount in (("CPU", r.cpus_per_worker), ("GPU", r.gpus_per_worker)):
            if amount > largest.get(name, 0.0) + 1e-9:
                raise ConfigError(
                    f"resources: one worker needs {amount:g} {name}, the largest node has {largest.get(name, 0.0):g}{suffix}"
                )
