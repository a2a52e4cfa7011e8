"""MLflow's own SQLite stores, built under a file lock: an MLflow store plugin for `sqlite:` URIs.

MLflow (3.17, 3.18) creates and migrates a SQLite store's schema when a process first builds its
tracking or registry store, without any lock between processes: two commands started at once on
a store that does not exist yet both run the migrations, one fails half-way, and the database
may stay unusable. Every MLflow process of this environment builds its stores through these
builders (`pyproject.toml` registers them for the `sqlite` scheme), so `mlflow run` opening the
store before the entry point starts, `mlflow ui`, `mlflow models serve` and every `umm` command
take turns: the first builds the schema while holding an exclusive lock on `<database>.lock`,
the others find it complete. A process builds each store once, so the lock costs one `flock`.

This module is loaded while `mlflow` itself is being imported: it imports MLflow only inside the
builders.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from umm_harness.core.file_lock import exclusive

_PREFIX = "sqlite:///"


def database_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for anything else (in-memory included)."""
    if not uri.startswith(_PREFIX):
        return None
    path = uri.removeprefix(_PREFIX).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _schema_lock(uri: str) -> AbstractContextManager[None]:
    database = database_path(uri)
    if database is None or not database.parent.is_dir():  # nothing to share, or MLflow will say what is wrong
        return nullcontext()
    return exclusive(database.with_name(database.name + ".lock"),
                     waiting=f"waiting for another process to finish setting up {database}")


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    """MLflow's SQLAlchemy tracking store for `store_uri`, exactly as MLflow builds it."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    with _schema_lock(store_uri):
        return _get_sqlalchemy_store(store_uri, artifact_uri)


def registry_store(store_uri: str, tracking_uri: str | None = None) -> Any:
    """MLflow's SQLAlchemy model-registry store for `store_uri`, exactly as MLflow builds it."""
    from mlflow.tracking._model_registry.utils import _get_sqlalchemy_store

    with _schema_lock(store_uri):
        return _get_sqlalchemy_store(store_uri)
