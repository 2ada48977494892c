"""A real PostgreSQL server for the tests: initdb + pg_ctl into a temporary folder, on a loopback port.

Both refuse to run as root, so as root the server runs as the ``postgres`` user (which the Debian
package creates). Where no server binaries or no psycopg driver are found, :func:`find_postgres`
says why, and the tests that need the server skip with that reason.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

UNPRIVILEGED_USER = "postgres"


@dataclass
class Binaries:
    initdb: str
    pg_ctl: str


def find_postgres() -> tuple[Binaries | None, str]:
    """The server binaries, or None and why the PostgreSQL tests cannot run here."""
    try:
        import psycopg  # noqa: F401 - only whether the driver is installed
    except ImportError:
        return None, "psycopg is not installed (pip install -e .[dev])"
    found = [shutil.which("initdb"), shutil.which("pg_ctl")]
    if not all(found):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
        found = [str(Path(versions[0]) / "initdb"), str(Path(versions[0]) / "pg_ctl")] if versions else [None, None]
    if not all(found) or not all(Path(str(p)).exists() for p in found):
        return None, "PostgreSQL's initdb and pg_ctl were not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return None, f"running as root and there is no {UNPRIVILEGED_USER!r} user to run PostgreSQL as"
    return Binaries(str(found[0]), str(found[1])), ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder; ``database()`` makes a fresh database and returns its URL."""

    def __init__(self, binaries: Binaries):
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="vitrina-postgres-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.databases = 0
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run(self.binaries.initdb, "-D", str(self.data), "-U", "vitrina", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._start_on_a_free_port()

    def _start_on_a_free_port(self, tries: int = 3) -> None:
        """Start, on another free port where the one chosen was taken before the server bound it
        (test files run in parallel processes, each may start servers)."""
        for attempt in range(tries):
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == tries - 1:
                    raise
                self.port = free_port()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", UNPRIVILEGED_USER, "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
                               + (log.read_text() if log.exists() else ""))

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://vitrina@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        """A new, empty database on this server: its SQLAlchemy URL."""
        import psycopg

        self.databases += 1
        name = f"log{self.databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=vitrina dbname=postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://vitrina@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (a running server's log is left for a failed test's message)."""
        if self.data.exists():
            self._run(self.binaries.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=200"
        self._run(self.binaries.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "start")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
