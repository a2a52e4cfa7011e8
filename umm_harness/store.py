"""Opening the tracking store before any work, with a clear error when it is unusable.

Every command builds its tracking and registry stores here first, so a store that cannot be used
(a missing folder, a folder in the database's place, a file that is not an MLflow database) is one
`umm: error:` line before any run exists. First use of a SQLite store is serialised between
processes by the store builders of `umm_harness.sqlite_store`, which MLflow itself calls (in
`mlflow run`'s launcher too). A server URI needs none of this: the server owns its database.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from umm_harness.core.errors import ConfigError
from umm_harness.sqlite_store import database_path


def open_store() -> str:
    """Make sure the tracking store exists with a complete schema, and close the runs a killed
    earlier command left open (`interrupts.close_abandoned_runs`); returns the store's URI.

    Raises `ConfigError` (one line, before any run exists) when the store cannot be used:
    its folder is missing, the path is a folder, or the file is not an MLflow database.
    """
    from umm_harness.interrupts import close_abandoned_runs

    uri = mlflow.get_tracking_uri()
    database = database_path(uri)
    if database is not None:
        _create_or_migrate(uri, database)
    close_abandoned_runs()
    return uri


def _create_or_migrate(uri: str, database: Path) -> None:
    if not database.parent.is_dir():
        raise ConfigError(f"tracking store {uri}: folder '{database.parent}' does not exist")
    if database.is_dir():
        raise ConfigError(f"tracking store {uri}: '{database}' is a folder, not a database file")
    try:
        client = MlflowClient()
        client.search_experiments(max_results=1)  # builds the tracking store: creates or migrates
        client.search_registered_models(max_results=1)  # and the registry's, on the same file
    except (MlflowException, SQLAlchemyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"tracking store {uri} is not a usable MLflow database ({reason[:200]}); "
                          f"move '{database}' away or point MLFLOW_TRACKING_URI elsewhere") from None
