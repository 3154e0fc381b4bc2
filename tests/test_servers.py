"""The throwaway servers of tests/servers.py: what survives a SIGKILL, and nothing left running."""

from pathlib import Path

import psycopg
import pytest

from tests.servers import PrivatePostgres, PrivateRedis


@pytest.mark.parametrize(("appendonly", "after_restart"), [(False, None), (True, b"kept")])
def test_a_killed_redis_keeps_acknowledged_writes_only_with_its_append_only_file(
    tmp_path, appendonly, after_restart
):
    server = PrivateRedis(tmp_path, appendonly=appendonly)
    try:
        server.start()
        port = server.port
        server.client().set("written", "kept")

        server.kill()
        server.restart()

        assert server.port == port
        assert server.client().get("written") == after_restart
    finally:
        server.cleanup()
    assert not server.running


def test_a_killed_postgres_recovers_committed_rows_and_cleanup_leaves_nothing(tmp_path):
    server = PrivatePostgres(tmp_path)
    try:
        server.start()
        with psycopg.connect(server.url, autocommit=True) as conn:
            # Migrated by the fixture's own `manage.py migrate`.
            assert conn.execute("SELECT count(*) FROM usage_event").fetchone() == (0,)
            conn.execute("CREATE TABLE crash (n int)")
            conn.execute("INSERT INTO crash VALUES (1), (2)")
        postmaster = server.process.pid

        server.kill()
        assert not Path(f"/proc/{postmaster}").exists()
        server.restart()

        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT n FROM crash ORDER BY n").fetchall() == [(1,), (2,)]
    finally:
        server.cleanup()
    assert not server.running
    assert not (server.data / "PG_VERSION").exists()
