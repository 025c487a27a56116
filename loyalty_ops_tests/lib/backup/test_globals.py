"""Every backup carries the cluster globals its database needs (roles, password hashes, memberships) and the
database's own properties (owner, grants, settings), covered by the checksum sidecar and the manifest; a
backup role that cannot read password hashes falls back to --no-role-passwords and says so."""

from __future__ import annotations

import gzip
import subprocess
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg import sql

from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, take_backup
from loyalty_ops.lib.backup.globals import database_property_statements, globals_filename_for, missing_roles
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops.lib.backup.naming import parse_backup_name
from loyalty_ops.lib.retention.classify import group_units
from loyalty_ops.lib.retention.types import Inventory, LocalFile, RemoteObject
from loyalty_ops_tests.conftest import postgres_target


@pytest.fixture
def owned_database(pg_cluster):
    """A database owned by a login role (password auth) with a read-only role, a database-level grant and
    settings: what a restore onto a new server must bring back."""
    tag = uuid.uuid4().hex[:6]
    app, ro, db = f"app_{tag}", f"ro_{tag}", f"owned_{tag}"
    app_pw = f"app-pw-{tag}"
    with pg_cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(app), sql.Literal(app_pw)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ro), sql.Literal(f"ro-pw-{tag}")))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(app)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(ro)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem TO '8MB'").format(sql.Identifier(db)))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout TO '5s'").format(sql.Identifier(ro), sql.Identifier(db)))
    login = {**pg_cluster.spec(db).psycopg_kwargs(), "user": app, "password": app_pw}
    with psycopg.connect(**login, autocommit=True) as conn:
        conn.execute("CREATE TABLE points (id bigserial PRIMARY KEY, member text NOT NULL, points int NOT NULL)")
        conn.execute("INSERT INTO points (member, points) SELECT 'm' || g, g FROM generate_series(1, 50) g")
        conn.execute(sql.SQL("GRANT SELECT ON points TO {}").format(sql.Identifier(ro)))
    yield {"db": db, "app": app, "ro": ro, "app_password": app_pw}
    with pg_cluster.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        for role in (ro, app):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _backup(pg_cluster, database, backup_dir, **login):
    target = postgres_target(pg_cluster, database)
    target = target.model_copy(update=login) if login else target
    return take_backup(target.spec(), target.tools(), BackupRequest(backup_dir=backup_dir))


def test_globals_and_database_properties_go_with_every_backup(pg_cluster, owned_database, tmp_path):
    db, app, ro = owned_database["db"], owned_database["app"], owned_database["ro"]
    result = _backup(pg_cluster, db, tmp_path)
    globals_path = tmp_path / globals_filename_for(result.path.name)
    assert globals_path.name == f"{db}_{result.name.taken_at:%Y%m%d_%H%M%S}.globals.sql.gz"
    assert globals_path.stat().st_mode & 0o777 == 0o600
    text = gzip.decompress(globals_path.read_bytes()).decode()
    assert f"CREATE ROLE {app};" in text and f"CREATE ROLE {ro};" in text
    assert f"ALTER ROLE {app} WITH" in text and "PASSWORD 'SCRAM-SHA-256$" in text
    # One sidecar, two lines: `sha256sum -c` checks the backup and its globals together.
    sidecar = (tmp_path / f"{result.path.name}.sha256").read_text().splitlines()
    assert [line.split()[1] for line in sidecar] == [result.path.name, globals_path.name]
    check = subprocess.run(["sha256sum", "-c", f"{result.path.name}.sha256"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout + check.stderr
    manifest = read_manifest(result.path)
    assert manifest.globals["filename"] == globals_path.name
    assert manifest.globals["sha256"] == sidecar[1].split()[0] and manifest.globals["bytes"] == globals_path.stat().st_size
    assert manifest.globals["role_passwords"] is True and manifest.globals["roles"] >= 3
    props = manifest.database_properties
    assert props["owner"] == app and props["connection_limit"] == -1
    assert {(g["grantee"], g["privilege"]) for g in props["grants"]} >= {(ro, "CONNECT"), (app, "CONNECT"), (app, "CREATE")}
    assert "PUBLIC" not in {g["grantee"] for g in props["grants"]}
    settings = {entry["role"]: entry["settings"] for entry in props["settings"]}
    assert settings == {None: ["work_mem=8MB"], ro: ["statement_timeout=5s"]}


def test_a_backup_role_that_cannot_read_password_hashes_falls_back_and_records_it(pg_cluster, owned_database, tmp_path):
    """The database's owner is no superuser: pg_authid is closed to it, so roles come without passwords."""
    result = _backup(pg_cluster, owned_database["db"], tmp_path, user=owned_database["app"], password=owned_database["app_password"])
    manifest = read_manifest(result.path)
    assert manifest.globals["role_passwords"] is False
    assert "--no-role-passwords" in manifest.globals["role_passwords_note"]
    assert "ALTER ROLE" in manifest.globals["role_passwords_note"]  # what on-call must do on restore
    text = gzip.decompress((tmp_path / manifest.globals["filename"]).read_bytes()).decode()
    assert f"CREATE ROLE {owned_database['app']};" in text and "PASSWORD" not in text


def test_a_failed_dump_leaves_no_globals_file_behind(pg_cluster, tmp_path):
    with pytest.raises(BackupError):
        _backup(pg_cluster, f"missing_{uuid.uuid4().hex[:6]}", tmp_path)
    assert not any(p.name.endswith(".globals.sql.gz") for p in tmp_path.iterdir())


def test_database_property_statements_replay_the_recorded_acl_and_settings():
    props = {
        "owner": "app", "connection_limit": 40, "comment": "loyalty's",
        "grants": [{"grantee": "app", "privilege": "CREATE", "grantable": False},
                   {"grantee": "ro", "privilege": "CONNECT", "grantable": False},
                   {"grantee": "gone", "privilege": "CONNECT", "grantable": False}],
        "settings": [{"role": None, "settings": ["search_path=app, public", "work_mem=8MB"]},
                     {"role": "ro", "settings": ["statement_timeout=5s"]}],
    }
    statements = [s.as_string(None) for s in database_property_statements(props, "loyalty", {"app", "ro"})]
    assert statements == [
        'ALTER DATABASE "loyalty" OWNER TO "app"',
        'ALTER DATABASE "loyalty" CONNECTION LIMIT 40',
        "COMMENT ON DATABASE \"loyalty\" IS 'loyalty''s'",
        'REVOKE ALL ON DATABASE "loyalty" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "loyalty" FROM "app"',
        'REVOKE ALL ON DATABASE "loyalty" FROM "ro"',
        'GRANT CREATE ON DATABASE "loyalty" TO "app"',
        'GRANT CONNECT ON DATABASE "loyalty" TO "ro"',
        "ALTER DATABASE \"loyalty\" SET \"search_path\" TO 'app', 'public'",
        "ALTER DATABASE \"loyalty\" SET \"work_mem\" TO '8MB'",
        "ALTER ROLE \"ro\" IN DATABASE \"loyalty\" SET \"statement_timeout\" TO '5s'",
    ]
    assert missing_roles(props, {"app", "ro"}) == ["gone"]
    # Default privileges (no ACL recorded): nothing is revoked.
    assert not any("REVOKE" in s.as_string(None) for s in database_property_statements({"grants": None}, "x", set()))


def test_retention_keeps_and_deletes_the_globals_file_with_its_backup():
    now = datetime(2026, 12, 2, 2, 0, tzinfo=timezone.utc)
    backup = "loyalty_20261201_020000.dump.zst"
    local = [LocalFile(n, 10, now) for n in (backup, f"{backup}.sha256", "loyalty_20261201_020000.globals.sql.gz",
                                               "loyalty_20261130_020000.globals.sql.gz")]
    remote = [RemoteObject(f"backups/2026/12/01/{n}", 10, now) for n in (backup, "loyalty_20261201_020000.globals.sql.gz.age")]
    remote.append(RemoteObject("backups/2026/11/01/loyalty_20261201_020000.globals.sql.gz", 10, now))  # off its date path
    units, ignored_local, ignored_remote = group_units(Inventory("loyalty", tuple(local), tuple(remote)), "backups/")
    unit = units[backup]
    assert sorted(f.name for f in unit.local_sidecars) == [f"{backup}.sha256", "loyalty_20261201_020000.globals.sql.gz"]
    assert [o.key for o in unit.remote_sidecars] == ["backups/2026/12/01/loyalty_20261201_020000.globals.sql.gz.age"]
    orphan = units["loyalty_20261130_020000.dump.gz"]  # globals whose backup is gone: a sidecar without its backup
    assert orphan.local_main is None and [f.name for f in orphan.local_sidecars] == ["loyalty_20261130_020000.globals.sql.gz"]
    assert ignored_remote == ["backups/2026/11/01/loyalty_20261201_020000.globals.sql.gz (not at PREFIX/YYYY/MM/DD/<file> for its own date)"]
    assert parse_backup_name("loyalty_20261201_020000.globals.sql.gz") is None  # never mistaken for a backup


def test_a_restore_on_the_same_server_brings_back_the_database_grants_and_settings(pg_cluster, owned_database, tmp_path):
    """Not only onto a new server: a restore into a new database (and a replace) gets the recorded grants and
    settings too, so a restored copy behaves like the source."""
    from loyalty_ops.lib.backup.location import BackupLocation
    from loyalty_ops.lib.restore.plan import validate_request
    from loyalty_ops.lib.restore.run import RestoreEnvironment, restore_backup

    db, ro = owned_database["db"], owned_database["ro"]
    result = _backup(pg_cluster, db, tmp_path)
    target = postgres_target(pg_cluster, db)
    env = RestoreEnvironment(spec=target.spec(), runner=target.tools(), location=BackupLocation(tmp_path))
    copy = f"{db}_copy"
    restore_backup(validate_request(backup=result.path.name, target_database=copy), env)
    try:
        with pg_cluster.connect() as conn:
            owner, = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (copy,)).fetchone()
            assert owner == owned_database["app"]
            assert conn.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')", (ro, copy)).fetchone()[0] is True
            conn.execute("CREATE ROLE stranger_copy")
            try:
                assert conn.execute("SELECT has_database_privilege('stranger_copy', %s, 'CONNECT')", (copy,)).fetchone()[0] is False
            finally:
                conn.execute("DROP ROLE stranger_copy")
            settings = conn.execute(
                "SELECT s.setrole <> 0, s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = %s ORDER BY 1", (copy,)).fetchall()
            assert settings == [(False, ["work_mem=8MB"]), (True, ["statement_timeout=5s"])]
    finally:
        pg_cluster.drop_database(copy)
