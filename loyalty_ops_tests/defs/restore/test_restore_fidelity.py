"""What comes back is what was there: the rollback undo from the safety backup, the source database's
encoding and locale, and materialized views populated (or not) as they were."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.run import RestoreEnvironment, take_safety_backup
from loyalty_ops_tests.conftest import postgres_target
from loyalty_ops_tests.defs.restore.conftest import copy_backup, failure_message, materialize_drill, run_restore
from loyalty_ops_tests.defs.restore.test_restore_drill import _drill_failed, _rewrite_sidecars
from loyalty_ops_tests.helpers import materialization_metadata, table_fingerprints


def table_names(cluster, database) -> set[str]:
    with cluster.connect(database) as conn:
        return {name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_the_documented_rollback_undo_restores_the_safety_backup(
    restore_resources, dagster_instance, pg_cluster, loyalty_db, local_backup, make_database, backup_dir
):
    target = make_database("rolled_back", sample_scale=None)
    with pg_cluster.connect(target) as conn:
        conn.execute("CREATE TABLE only_before (id int); INSERT INTO only_before VALUES (1), (2)")
    before = table_fingerprints(pg_cluster, target)
    rollback = run_restore(
        restore_resources, dagster_instance, backup=local_backup.name, target_database=target, mode="replace", confirm=target
    )
    assert rollback.success, failure_message(rollback)
    assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
    safety = Path(rollback.output_for_node("restore_database")["safety_backup"])
    assert safety.parent == backup_dir / "safety"

    # The undo, exactly as docs/restore.md spells it.
    undo = run_restore(
        restore_resources, dagster_instance, backup=f"safety/{safety.name}", target_database=target, mode="replace",
        confirm=target,
    )
    assert undo.success, failure_message(undo)
    out = undo.output_for_node("restore_database")
    assert out["backup_filename"] == safety.name and out["backup_location"] == str(safety)
    assert out["downloaded_from_s3"] is False and out["rows_verified"] == 2
    assert table_fingerprints(pg_cluster, target) == before and table_names(pg_cluster, target) == {"only_before"}


def test_a_latin1_database_comes_back_latin1_with_its_locale(
    restore_resources, dagster_instance, pg_cluster, backup_dir, tmp_path
):
    source = f"latin_{uuid.uuid4().hex[:8]}"
    target = f"{source}_copy"
    with pg_cluster.connect() as conn:
        conn.execute(f"CREATE DATABASE {source} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        with pg_cluster.connect(source) as conn:
            conn.execute("SET client_encoding = 'UTF8'")
            conn.execute("CREATE TABLE names (n text); INSERT INTO names VALUES ('café'), ('Ærø'), ('naïve')")
        env = RestoreEnvironment(spec=pg_cluster.spec(source), runner=HostToolRunner(pg_cluster.spec(source)), location=BackupLocation(tmp_path / "src"))
        backup = copy_backup(take_safety_backup(env, source), backup_dir)
        manifest = json.loads(Path(str(backup) + ".manifest.json").read_text())
        assert manifest["database_locale"] == {"encoding": "LATIN1", "lc_collate": "C", "lc_ctype": "C", "locale_provider": "libc"}

        result = run_restore(restore_resources, dagster_instance, backup=backup.name, target_database=target)
        assert result.success, failure_message(result)
        assert "ENCODING LATIN1 LC_COLLATE C LC_CTYPE C" in result.output_for_node("restore_database")["database_locale"]
        with pg_cluster.connect() as conn:
            row = conn.execute(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s", (target,)
            ).fetchone()
        assert row == ("LATIN1", "C", "C")
        with pg_cluster.connect(target) as conn:
            conn.execute("SET client_encoding = 'UTF8'")
            assert [n for (n,) in conn.execute("SELECT n FROM names ORDER BY n")] == ["caf\u00e9", "na\u00efve", "\u00c6r\u00f8"]
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, source)
    finally:
        pg_cluster.drop_database(target)
        pg_cluster.drop_database(source)


def test_the_drill_compares_materialized_views_populated_or_not(
    restore_resources, dagster_instance, pg_cluster, make_database, backup_dir, tmp_path
):
    source = make_database("views", sample_scale=None)
    with pg_cluster.connect(source) as conn:
        conn.execute("CREATE TABLE points (id int, amount int)")
        conn.execute("INSERT INTO points SELECT i, i % 7 FROM generate_series(1, 1000) i")
        conn.execute("CREATE MATERIALIZED VIEW big_spenders AS SELECT * FROM points WHERE amount > 4")
        conn.execute("CREATE MATERIALIZED VIEW nightly_totals AS SELECT amount, count(*) FROM points GROUP BY 1 WITH NO DATA")
    env = RestoreEnvironment(spec=pg_cluster.spec(source), runner=HostToolRunner(pg_cluster.spec(source)), location=BackupLocation(tmp_path / "src"))
    backup = copy_backup(take_safety_backup(env, source), backup_dir)
    manifest_file = Path(str(backup) + ".manifest.json")
    at_dump = json.loads(manifest_file.read_text())["materialized_views"]
    assert at_dump == {
        "public.big_spenders": {"populated": True, "rows": 286},
        "public.nightly_totals": {"populated": False, "rows": None},
    }
    resources = {**restore_resources, "postgres": postgres_target(pg_cluster, source)}

    result = materialize_drill(resources, dagster_instance)
    assert result.success
    meta = materialization_metadata(result, "restore_drill")
    assert meta["passed"] is True and meta["materialized_views_compared"] == 2
    assert meta["materialized_views"] == {"at_dump": at_dump, "restored": at_dump}
    assert "2 materialized view(s) match the manifest exactly" in meta["message"]

    # The manifest says the unpopulated view was populated: the restored one is not, and the drill says so.
    _rewrite_sidecars(backup, {"materialized_views": {**at_dump, "public.nightly_totals": {"populated": True, "rows": 7}}})
    failed = materialize_drill(resources, dagster_instance)
    meta, message = _drill_failed(failed, "step 'compare with manifest'")
    assert "materialized view public.nightly_totals: not populated after restore, populated with 7 rows at dump time" in message
    assert "big_spenders" not in message
