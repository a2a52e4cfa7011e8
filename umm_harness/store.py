"""Opening the tracking store: once per process, under a lock, with a clear error when it is unusable.

MLflow creates and migrates a SQLite store's schema on first use without any lock of its own
(3.17/3.18): two commands started at once on a store that does not exist yet both run the
migrations, one fails half-way, and the database may stay unusable. So every command opens the
store here first, holding an exclusive lock on a file beside the database while MLflow builds
its tracking and registry stores; later commands find the schema complete and only wait for
the lock for a moment. A server URI needs none of this: the server owns its database.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from umm_harness.core.errors import ConfigError
from umm_harness.core.file_lock import exclusive

log = logging.getLogger(__name__)

_SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (None for anything else)."""
    if not uri.startswith(_SQLITE):
        return None
    return Path(uri.removeprefix(_SQLITE).split("?", 1)[0])


def open_store() -> str:
    """Make sure the tracking store exists with a complete schema, and close the runs a killed
    earlier command left open (`interrupts.close_abandoned_runs`); returns the store's URI.

    Raises `ConfigError` (one line, before any run exists) when the store cannot be used:
    its folder is missing, the path is a folder, or the file is not an MLflow database.
    """
    from umm_harness.interrupts import close_abandoned_runs

    uri = mlflow.get_tracking_uri()
    database = sqlite_path(uri)
    if database is not None:
        _create_or_migrate(uri, database)
    close_abandoned_runs()
    return uri


def _create_or_migrate(uri: str, database: Path) -> None:
    if not database.parent.is_dir():
        raise ConfigError(f"tracking store {uri}: folder '{database.parent}' does not exist")
    if database.is_dir():
        raise ConfigError(f"tracking store {uri}: '{database}' is a folder, not a database file")
    with exclusive(database.with_name(database.name + ".lock")):
        try:
            client = MlflowClient()
            client.search_experiments(max_results=1)  # builds the tracking store: creates or migrates
            client.search_registered_models(max_results=1)  # and the registry's, on the same file
        except (MlflowException, SQLAlchemyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"tracking store {uri} is not a usable MLflow database ({reason[:200]}); "
                              f"move '{database}' away or point MLFLOW_TRACKING_URI elsewhere") from None
