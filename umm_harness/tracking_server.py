"""A shared MLflow tracking server on 127.0.0.1: PostgreSQL for runs and the registry, a local
folder for artifacts (served through the server, `mlflow-artifacts:/`).

Everything lives in one folder (default `.umm/server`):

- `postgres/` — the PostgreSQL cluster (Debian's `postgresql` package; `initdb` + `pg_ctl`),
  listening on 127.0.0.1 only, no Unix socket, password (scram-sha-256) authentication;
- `artifacts/` — the server's `--artifacts-destination`;
- `mlflow.log`, `postgres.log` — what the two servers print;
- `server.json` (mode 0600) — ports, pids and the database password.

PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres` system
user (Debian's package creates it) and its commands run through `runuser`. The database
password reaches `mlflow server` through `PGPASSWORD` (libpq reads it), never a command line.

    python -m umm_harness.tracking_server start [--dir .umm/server] [--port 5000]
    python -m umm_harness.tracking_server stop  [--dir .umm/server]
    python -m umm_harness.tracking_server status [--dir .umm/server]

`start` prints `MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`; evaluations and training log
there once that variable is exported. In Python, `TrackingServer(folder)` is a context manager
(used by the tests) and `restart_mlflow()` bounces only the MLflow process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from umm_harness.core.ports import free_port

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(".umm/server")
DB_USER = "umm"
DB_NAME = "mlflow"
_STATE = "server.json"
_PG_SYSTEM_USER = "postgres"


class ServerError(RuntimeError):
    """The tracking server (or its database) could not be started or reached."""


def postgres_bin_dir() -> Path | None:
    """Where `initdb`, `pg_ctl` and `postgres` are: `UMM_PG_BIN`, Debian's
    /usr/lib/postgresql/<newest>/bin, or PATH. None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if os.environ.get("UMM_PG_BIN"):
        candidates.append(Path(os.environ["UMM_PG_BIN"]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def _wait_http(url: str, process: subprocess.Popen | None, timeout: float, log_file: Path | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file and log_file.exists() else ""
            raise ServerError(f"mlflow server exited with code {process.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise ServerError(f"mlflow server at {url} did not become healthy within {timeout:.0f} s"
                      + (f" (see {log_file})" if log_file else ""))


class TrackingServer:
    """A PostgreSQL-backed `mlflow server` on 127.0.0.1, all of it inside `folder`."""

    def __init__(self, folder: str | Path = DEFAULT_DIR, port: int | None = None, pg_port: int | None = None,
                 startup_timeout: float = 120.0):
        self.folder = Path(folder).resolve()
        self.port = port
        self.pg_port = pg_port
        self.startup_timeout = startup_timeout
        self.password: str | None = None
        self.pg_data: Path | None = None
        self.mlflow_process: subprocess.Popen | None = None
        self.mlflow_pid: int | None = None
        self.bin = postgres_bin_dir()

    # -- paths and state --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    @property
    def mlflow_log(self) -> Path:
        return self.folder / "mlflow.log"

    @property
    def backend_store_uri(self) -> str:
        """The database URI without its password (libpq takes it from PGPASSWORD)."""
        # psycopg2 named explicitly: SQLAlchemy 2.1's plain `postgresql://` means psycopg 3.
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"

    def _state_path(self) -> Path:
        return self.folder / _STATE

    def _save_state(self) -> None:
        state = {"port": self.port, "pg_port": self.pg_port, "pg_data": str(self.pg_data),
                 "password": self.password, "mlflow_pid": self.mlflow_pid, "url": self.url}
        path = self._state_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)

    def _load_state(self) -> bool:
        path = self._state_path()
        if not path.is_file():
            return False
        state = json.loads(path.read_text())
        self.port, self.pg_port = state["port"], state["pg_port"]
        self.pg_data = Path(state["pg_data"]) if state.get("pg_data") else None
        self.password, self.mlflow_pid = state.get("password"), state.get("mlflow_pid")
        return True

    # -- PostgreSQL -------------------------------------------------------------------------

    def _as_pg_user(self, args: list[str]) -> list[str]:
        """Run a PostgreSQL server command as the `postgres` system user when we are root."""
        if not _is_root():
            return args
        return ["runuser", "-u", _PG_SYSTEM_USER, "--", *args]

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        assert self.bin is not None
        done = subprocess.run(self._as_pg_user([str(self.bin / tool), *args]), capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8"})
        if check and done.returncode != 0:
            raise ServerError(f"{tool} {' '.join(args[:2])} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def _pg_data_dir(self) -> Path:
        """`folder/postgres`, or (as root, when the `postgres` user cannot reach `folder`, e.g. a
        0700 pytest tmp dir) a private folder in the system temp dir that it owns."""
        wanted = self.folder / "postgres"
        wanted.mkdir(parents=True, exist_ok=True)
        if not _is_root():
            return wanted
        self._chown_pg(wanted)
        reachable = subprocess.run(["runuser", "-u", _PG_SYSTEM_USER, "--", "test", "-w", str(wanted)],
                                   capture_output=True).returncode == 0
        if reachable:
            return wanted
        wanted.rmdir()
        return Path(tempfile.mkdtemp(prefix="umm-postgres-"))

    def _chown_pg(self, path: Path) -> None:
        if _is_root():
            entry = pwd.getpwnam(_PG_SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _init_cluster(self) -> None:
        if self.bin is None:
            raise ServerError("PostgreSQL is not installed (no initdb/pg_ctl found); on Debian: "
                              "apt-get install postgresql")
        if _is_root():
            try:
                pwd.getpwnam(_PG_SYSTEM_USER)
            except KeyError:
                raise ServerError("running as root, PostgreSQL needs the 'postgres' system user "
                                  "(Debian's postgresql package creates it)") from None
        self.pg_data = self._pg_data_dir()
        self.pg_data.mkdir(parents=True, exist_ok=True)
        self.pg_data.chmod(0o700)
        self._chown_pg(self.pg_data)
        self.password = secrets.token_urlsafe(24)
        with tempfile.NamedTemporaryFile("w", delete=False, prefix="umm-pw-") as pwfile:
            pwfile.write(self.password + "\n")
        self._chown_pg(Path(pwfile.name))
        try:
            self._pg("initdb", "-D", str(self.pg_data), "-U", DB_USER, f"--pwfile={pwfile.name}",
                     "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8")
        finally:
            os.unlink(pwfile.name)

    def _pg_log(self) -> Path:
        assert self.pg_data is not None
        return self.pg_data / "postgres.log"  # inside the data dir: always writable by its owner

    def _start_postgres(self) -> None:
        assert self.pg_data is not None
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.pg_port} -c unix_socket_directories='' "
                   "-c max_connections=50 -c shared_buffers=32MB -c fsync=on")
        self._pg("pg_ctl", "start", "-D", str(self.pg_data), "-w", "-t", "60", "-o", options,
                 "-l", str(self._pg_log()))

    def _stop_postgres(self) -> None:
        if self.bin is None or self.pg_data is None or not (self.pg_data / "postmaster.pid").exists():
            return
        self._pg("pg_ctl", "stop", "-D", str(self.pg_data), "-m", "fast", "-w", "-t", "60", check=False)

    def _create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user=DB_USER,
                                              password=self.password, dbname="postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            connection.close()

    # -- MLflow -----------------------------------------------------------------------------

    def _mlflow_env(self) -> dict[str, str]:
        env = {**os.environ, "PGPASSWORD": self.password or "",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 7 background workers on a small machine
        env.pop("MLFLOW_TRACKING_URI", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start_mlflow(self) -> None:
        """Start (or restart) only the `mlflow server` process; PostgreSQL must be up."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow_cli) if mlflow_cli.is_file() else "mlflow", "server",
                   "--backend-store-uri", self.backend_store_uri,
                   "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.mlflow_log.open("ab") as out:
            self.mlflow_process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=self._mlflow_env(),
                                                   cwd=self.folder, start_new_session=True)
        self.mlflow_pid = self.mlflow_process.pid
        self._save_state()
        try:
            _wait_http(self.url, self.mlflow_process, self.startup_timeout, self.mlflow_log)
        except ServerError:
            self.stop_mlflow()
            raise

    def stop_mlflow(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop the `mlflow server` process group (uvicorn and its workers)."""
        pid = self.mlflow_pid
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            if self.mlflow_process is not None:
                self.mlflow_process.poll()
            time.sleep(0.1)
        if _group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.mlflow_process is not None:
            try:
                self.mlflow_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.mlflow_process = None
        self.mlflow_pid = None
        if self._state_path().exists():
            self._save_state()

    def restart_mlflow(self, down_seconds: float = 0.0) -> None:
        """Stop the MLflow process, stay down `down_seconds`, start it again on the same port."""
        self.stop_mlflow()
        time.sleep(down_seconds)
        self.start_mlflow()

    # -- the whole thing --------------------------------------------------------------------

    def start(self) -> str:
        """Initialise (first time), start PostgreSQL and MLflow; returns the tracking URI."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._load_state() and self.mlflow_pid and _group_alive(self.mlflow_pid):
            raise ServerError(f"a tracking server from {self.folder} is already running at {self.url}")
        if self.pg_data is None or not (self.pg_data / "PG_VERSION").is_file():
            self._init_cluster()
        self.pg_port = self.pg_port or free_port()
        self.port = self.port or free_port()
        self._save_state()
        self._start_postgres()
        try:
            self._create_database()
            self.start_mlflow()
        except BaseException:
            self._stop_postgres()
            raise
        return self.url

    def stop(self) -> None:
        if self.mlflow_pid is None and self.pg_data is None:
            self._load_state()
        self.stop_mlflow()
        self._stop_postgres()

    def __enter__(self) -> TrackingServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists": look for a live member.
    try:
        status = Path(f"/proc/{pgid}/status").read_text()
        if "State:\tZ" in status:
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            os.killpg(pgid, 0)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umm_harness.tracking_server",
                                     description="A PostgreSQL-backed MLflow tracking server on 127.0.0.1.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder (default: .umm/server)")
    parser.add_argument("--port", type=int, help="MLflow port (default: a free one; kept across restarts)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = TrackingServer(args.dir)
    try:
        if args.action == "start":
            if server._load_state():
                server.port = args.port or server.port  # the same URI as last time, if still free
            elif args.port:
                server.port = args.port
            url = server.start()
            # Leave both servers running after this process exits.
            print(f"MLFLOW_TRACKING_URI={url}")
            print(f"# stop with: python -m umm_harness.tracking_server stop --dir {args.dir}", file=sys.stderr)
        elif args.action == "stop":
            if not server._load_state():
                print(f"no tracking server state in {args.dir}", file=sys.stderr)
                return 1
            server.stop()
            print(f"stopped the tracking server in {args.dir}", file=sys.stderr)
        else:
            if not server._load_state() or not server.mlflow_pid or not _group_alive(server.mlflow_pid):
                print(f"not running ({args.dir})")
                return 1
            print(f"MLFLOW_TRACKING_URI={server.url}")
    except ServerError as exc:
        print(f"tracking server: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
