"""Create the database named in DATABASE_URL if it does not exist yet.

Connects to the server's ``postgres`` maintenance database with the same credentials, so
it needs no client binaries (createdb, psql) on the machine.
"""

import os
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def main() -> int:
    url = os.environ["DATABASE_URL"]
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        print(f"DATABASE_URL names no database: {url}", file=sys.stderr)
        return 1
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists:
            return 0
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"==> created database {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
