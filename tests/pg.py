"""A throwaway PostgreSQL server from Debian's `postgresql` package, for tests that need a real one."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def available() -> bool:
    return (PG_BIN / "initdb").exists()


@contextlib.contextmanager
def postgres_server(dbname: str = "epochgraph") -> Iterator[str]:
    """Start a server on 127.0.0.1 with a temporary data directory; yields its SQLAlchemy URL."""
    tmp = Path(tempfile.mkdtemp(prefix="epochgraph-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (tmp, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    run = dict(check=True, capture_output=True, text=True)
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", user]), **run)
        subprocess.run(_as_postgres([
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "start",
            "-o", f"-p {port} -h 127.0.0.1 -k {sock} -c max_connections=200 -c fsync=off",
        ]), **run)
        subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user,
                                     dbname]), **run)
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{dbname}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
