"""The one settings layer: every variable the docs list is read there, each bad value is refused with its
name, the value (never a secret's) and an example, all bad values together, before anything loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loyalty_ops.defs.settings import SettingsError, every_variable, load_settings, tool_base_environment
from loyalty_ops.defs.settings.variables import INSTANCE_VARIABLES
from loyalty_ops.defs.shared_resources import postgres_target, shared_resources
from loyalty_ops.lib.pg.tools import run_tool
from loyalty_ops_tests.conftest import postgres_target as cluster_target

REPO = Path(__file__).resolve().parents[2]

# (variable, bad value, words the refusal must contain besides the variable's name)
REFUSED = [
    ("LOYALTY_DATABASE_URL", "mysql://ops:url-secret-1@db/loyalty", ["postgresql://"]),
    ("LOYALTY_DATABASE_URL", "postgresql://ops:url-secret-2@db:port/loyalty", ["invalid port"]),
    ("PGPORT", "five", ["whole number", "'five'", "PGPORT=5432"]),
    ("PGPORT", "70000", ["at most 65535", "'70000'"]),
    ("PGSSLMODE", "verify", ["verify-full", "'verify'"]),
    ("PGCONNECT_TIMEOUT", "0", ["greater than 0", "PGCONNECT_TIMEOUT=10"]),
    ("PGTARGETSESSIONATTRS", "writable", ["read-write", "'writable'"]),
    ("LOYALTY_PG_RUNNER", "podman", ["'host' or 'docker'", "'podman'"]),
    ("LOYALTY_DB_CONTAINER_PGPORT", "five", ["whole number", "'five'", "LOYALTY_DB_CONTAINER_PGPORT=5432"]),
    ("LOYALTY_COMPRESSION", "lz4", ["'gzip' or 'zstd'", "'lz4'", "LOYALTY_COMPRESSION=zstd"]),
    ("LOYALTY_COMPRESSION_LEVEL", "12", ["1-9 for gzip", "'12'"]),
    ("LOYALTY_COMPRESSION_LEVEL", "fast", ["whole number", "'fast'"]),
    ("LOYALTY_BACKUP_MAX_AGE_HOURS", "a day", ["must be a number", "'a day'", "LOYALTY_BACKUP_MAX_AGE_HOURS=26"]),
    ("LOYALTY_BACKUP_MAX_AGE_HOURS", "1", ["greater than 1", "'1'"]),
    ("LOYALTY_BACKUP_ROW_COUNTS", "exact", ["'stream' or 'count'", "'exact'", "LOYALTY_BACKUP_ROW_COUNTS=stream"]),
    ("LOYALTY_BACKUP_MAX_RATE_MBPS", "fast", ["must be a number", "'fast'", "LOYALTY_BACKUP_MAX_RATE_MBPS=40"]),
    ("LOYALTY_BACKUP_MAX_RATE_MBPS", "0", ["greater than 0", "'0'"]),
    ("LOYALTY_BACKUP_NICE", "20", ["at most 19", "'20'", "LOYALTY_BACKUP_NICE=10"]),
    ("LOYALTY_BACKUP_NICE", "low", ["whole number", "'low'"]),
    ("LOYALTY_BACKUP_SOURCE_PORT", "five", ["whole number", "'five'", "LOYALTY_BACKUP_SOURCE_PORT=5432"]),
    ("LOYALTY_BACKUP_SOURCE_MAX_LAG_S", "a minute", ["must be a number", "'a minute'", "LOYALTY_BACKUP_SOURCE_MAX_LAG_S=300"]),
    ("LOYALTY_BACKUP_SOURCE_MAX_LAG_S", "-1", ["greater than 0", "'-1'"]),
    ("LOYALTY_S3_BUCKET", "My_Bucket", ["lowercase", "'My_Bucket'", "LOYALTY_S3_BUCKET=loyalty-offsite"]),
    ("LOYALTY_S3_OBJECT_LOCK_DAYS", "a month", ["whole number", "'a month'", "LOYALTY_S3_OBJECT_LOCK_DAYS=35"]),
    ("LOYALTY_S3_OBJECT_LOCK_DAYS", "0", ["greater than 0", "'0'"]),
    ("LOYALTY_S3_OBJECT_LOCK_MODE", "legal-hold", ["'GOVERNANCE' or 'COMPLIANCE'", "'legal-hold'"]),
    ("LOYALTY_BACKUP_ENCRYPTION", "gpg", ["'none' or 'age'", "'gpg'", "LOYALTY_BACKUP_ENCRYPTION=age"]),
    ("LOYALTY_BACKUP_AGE_RECIPIENTS", "age1notakey", ["malformed recipient", "'age1notakey'", "age-keygen -y"]),
    ("LOYALTY_BACKUP_AGE_IDENTITY_FILE", "/nonexistent/age-key.txt", ["does not exist", "age-keygen -o", "not shown"]),
    ("LOYALTY_S3_SSE", "kms", ["AES256, aws:kms", "'kms'"]),
    ("LOYALTY_S3_STORAGE_CLASS", "COLD", ["STANDARD_IA", "'COLD'"]),
    ("LOYALTY_S3_KMS_KEY_ID", "alias/loyalty", ["LOYALTY_S3_SSE is AES256", "LOYALTY_S3_SSE=aws:kms"]),
    ("AWS_ENDPOINT_URL", "localhost:9000", ["http://", "'localhost:9000'"]),
    ("LOYALTY_WEBSERVER_BASE_URL", "dagster.example", ["https://", "'dagster.example'"]),
    ("LOYALTY_PAGERDUTY_EVENTS_URL", "http://events.pagerduty.com/v2/enqueue", ["https://", "/v2/enqueue"]),
    ("LOYALTY_SLACK_BASE_URL", "slack.com/api", ["https://", "'slack.com/api'"]),
    ("LOYALTY_ALERT_PAGE_WARN_CHECKS", "maybe", ["true or false", "'maybe'"]),
    ("LOYALTY_ALERT_DELIVERY_ATTEMPTS", "0", ["greater than 0", "'0'"]),
    ("LOYALTY_ALERT_RETRY_BACKOFF_SECONDS", "soon", ["must be a number", "'soon'"]),
    ("LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS", "-1", ["greater than 0", "'-1'"]),
    ("LOYALTY_ALERT_READ_TIMEOUT_SECONDS", "inf", ["finite", "'inf'"]),
    ("LOYALTY_ALERT_TICK_BUDGET_SECONDS", "90", ["at most 50", "'90'"]),
    ("LOYALTY_RETENTION_KEEP_DAYS", "a month", ["must be a number", "'a month'"]),
    ("LOYALTY_RETENTION_MIN_KEEP", "three", ["whole number", "'three'", "LOYALTY_RETENTION_MIN_KEEP=3"]),
    ("LOYALTY_RETENTION_MIN_KEEP", "0", ["at least 1", "'0'"]),
    ("LOYALTY_RETENTION_GFS_DAILY", "-1", ["at least 0", "'-1'"]),
    ("LOYALTY_RETENTION_GFS_WEEKLY", "four", ["whole number", "'four'"]),
    ("LOYALTY_RETENTION_GFS_MONTHLY", "1.5", ["whole number", "'1.5'"]),
    ("LOYALTY_RETENTION_LOG_KEEP_DAYS", "0", ["greater than 0", "'0'"]),
    ("LOYALTY_RETENTION_MULTIPART_MAX_AGE_HOURS", "a day", ["must be a number", "'a day'"]),
    ("LOYALTY_RETENTION_MAX_BACKUP_AGE_HOURS", "-5", ["at least 0", "'-5'"]),
    ("LOYALTY_RETENTION_DRILL_REQUIRED_FOR_NEWEST", "sometimes", ["true or false", "'sometimes'"]),
    ("LOYALTY_RETENTION_HISTORY_LIMIT", "all", ["whole number", "'all'"]),
    ("LOYALTY_RETENTION_DRY_RUN", "maybe", ["true or false", "'maybe'"]),
    ("LOYALTY_DRILL_EVERY_N_BACKUPS", "weekly", ["whole number", "'weekly'", "LOYALTY_DRILL_EVERY_N_BACKUPS=7"]),
    ("LOYALTY_DRILL_JOBS", "two", ["whole number", "'two'"]),
    ("LOYALTY_DRILL_JOBS", "0", ["at least 1", "'0'"]),
    ("LOYALTY_DRILL_PLACEMENT", "staging", ["'production', 'server' or 'scratch'", "'staging'", "LOYALTY_DRILL_PLACEMENT=scratch"]),
    ("LOYALTY_DRILL_PORT", "five", ["whole number", "'five'", "LOYALTY_DRILL_PORT=5432"]),
    ("LOYALTY_DRILL_SSLMODE", "on", ["verify-full", "'on'"]),
    ("LOYALTY_MAINTENANCE_MODE", "fast", ["'smart' or 'full'", "'fast'"]),
    ("LOYALTY_MAINTENANCE_FULL_REINDEX", "online", ["'database' or 'concurrently'", "'online'"]),
    ("LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S", "soon", ["must be a number", "'soon'", "LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S=5"]),
    ("LOYALTY_API_URL", "localhost:8080", ["http://", "'localhost:8080'"]),
    ("LOYALTY_REDIS_URL", "http://:redis-secret-1@cache:6379", ["redis://", "not shown"]),
    ("LOYALTY_HEALTH_TIMEOUT_S", "five", ["must be a number", "'five'", "LOYALTY_HEALTH_TIMEOUT_S=5"]),
    ("DOCKER_HOST", "/var/run/docker.sock", ["unix://", "'/var/run/docker.sock'"]),
    ("LOYALTY_PITR_ENABLED", "maybe", ["true or false", "'maybe'", "LOYALTY_PITR_ENABLED=true"]),
    ("LOYALTY_PITR_PREFIX", "s3://bucket/pitr", ["key prefix", "'s3://bucket/pitr'", "LOYALTY_PITR_PREFIX=pitr/"]),
    ("LOYALTY_PITR_SERVER_NAME", "loyalty db", ["1-63 letters", "'loyalty db'", "LOYALTY_PITR_SERVER_NAME=loyalty"]),
    ("LOYALTY_PITR_MAX_LAG_SECONDS", "five minutes", ["must be a number", "'five minutes'", "LOYALTY_PITR_MAX_LAG_SECONDS=300"]),
    ("LOYALTY_PITR_MAX_LAG_SECONDS", "0", ["greater than 0", "'0'"]),
    ("LOYALTY_PITR_ARCHIVE_TIMEOUT_SECONDS", "0", ["at least 1", "'0'", "LOYALTY_PITR_ARCHIVE_TIMEOUT_SECONDS=60"]),
    ("LOYALTY_PITR_RECOVERY_WINDOW_DAYS", "a month", ["whole number", "'a month'", "LOYALTY_PITR_RECOVERY_WINDOW_DAYS=30"]),
    ("LOYALTY_PITR_BASE_BACKUP_CRON", "weekly", ["five cron fields", "'weekly'", "0 1 * * 0"]),
    ("LOYALTY_PITR_WAL_COMPRESSION", "bzip2", ["'zstd', 'lz4', 'gzip', 'snappy' or 'none'", "'bzip2'", "LOYALTY_PITR_WAL_COMPRESSION=zstd"]),
    ("LOYALTY_PITR_WAL_COMPRESSION_LEVEL", "30", ["1-22 for zstd", "'30'", "LOYALTY_PITR_WAL_COMPRESSION_LEVEL=1"]),
    ("LOYALTY_PITR_WAL_COMPRESSION_LEVEL", "fast", ["whole number", "'fast'"]),
    ("LOYALTY_PITR_ARCHIVE_NICE", "20", ["at most 19", "'20'", "LOYALTY_PITR_ARCHIVE_NICE=10"]),
    ("LOYALTY_PITR_SERVER_WAL_COMPRESSION", "on", ["'lz4', 'zstd', 'pglz' or 'off'", "'on'", "LOYALTY_PITR_SERVER_WAL_COMPRESSION=lz4"]),
    ("LOYALTY_PITR_BASE_BACKUP_COMPRESSION", "zstd", ["'lz4', 'gzip', 'snappy' or 'none'", "'zstd'", "LOYALTY_PITR_BASE_BACKUP_COMPRESSION=lz4"]),
    ("LOYALTY_PITR_BASE_BACKUP_JOBS", "0", ["at least 1", "'0'", "LOYALTY_PITR_BASE_BACKUP_JOBS=2"]),
    ("LOYALTY_PITR_INSTANCE_SETTINGS", "shared_buffers", ["is not NAME=VALUE", "'shared_buffers'", "shared_buffers=1GB"]),
    ("LOYALTY_PITR_INSTANCE_SETTINGS", "shared_buffers=1GB,port=5433", ["port is set by loyalty_ops", "remove it"]),
]

# Taken as given (names, paths, ids, secrets used as they are): nothing to refuse.
FREE_TEXT = {
    "PGHOST", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL",
    "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGAPPNAME", "PGOPTIONS", "LOYALTY_PG_BIN_DIR", "LOYALTY_DB_CONTAINER",
    "LOYALTY_DB_CONTAINER_PGHOST", "LOYALTY_DB_CONTAINER_USER", "LOYALTY_BACKUP_DIR", "LOYALTY_S3_PREFIX", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "LOYALTY_PAGERDUTY_ROUTING_KEY", "LOYALTY_PAGERDUTY_CA_BUNDLE", "LOYALTY_SLACK_TOKEN",
    "LOYALTY_SLACK_CHANNEL", "LOYALTY_ALERT_WEBHOOK_URL", "LOYALTY_LOG_DIR", "LOYALTY_RESTORE_WORK_DIR",
    "LOYALTY_RESTORE_TMP_DIR", "LOYALTY_DRILL_HOST", "LOYALTY_DRILL_USER", "LOYALTY_DRILL_PASSWORD", "LOYALTY_DRILL_SCRATCH_DIR",
    "LOYALTY_COMPOSE_PROJECT", "LOYALTY_CONTAINERS", "LOYALTY_BACKUP_SOURCE_HOST", "LOYALTY_BACKUP_SOURCE_USER",
    "LOYALTY_BACKUP_SOURCE_PASSWORD", "LOYALTY_PITR_BARMAN_BIN_DIR", "LOYALTY_PITR_WORK_DIR",
}
SECRET_VALUES = ("url-secret-1", "url-secret-2", "redis-secret-1")


def refusal(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return str(caught.value)


@pytest.mark.parametrize(("name", "bad", "words"), REFUSED, ids=[f"{n}={b}" for n, b, _ in REFUSED])
def test_a_bad_value_is_refused_naming_the_variable_the_value_and_an_example(name, bad, words):
    message = refusal({name: bad})
    assert name in message and ("example" in message or "e.g." in message), message
    for word in words:
        assert word in message, message
    for secret in SECRET_VALUES:
        assert secret not in message


def test_every_variable_with_a_rule_has_a_refusal_case_and_every_other_is_free_text():
    assert set(every_variable()) == {name for name, _, _ in REFUSED} | FREE_TEXT


def test_only_the_settings_read_the_process_environment():
    package = REPO / "loyalty_ops"
    reads = re.compile(r"\bos\.(environ|getenv)\b|from os import [^\n]*\b(environ|getenv)\b")
    readers = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py") if reads.search(path.read_text(encoding="utf-8"))
    )
    assert readers == ["defs/settings/__init__.py"]


def test_secrets_are_never_shown_even_when_refused():
    message = refusal({
        "LOYALTY_DATABASE_URL": "mysql://ops:url-secret-1@db/loyalty",
        "LOYALTY_REDIS_URL": "http://:redis-secret-1@cache:6379",
        "PGPASSWORD": "pg-secret-1",
        "PGPORT": "x",
    })
    assert "LOYALTY_DATABASE_URL" in message and "LOYALTY_REDIS_URL" in message
    for secret in ("url-secret-1", "redis-secret-1", "pg-secret-1", "ops:"):
        assert secret not in message


def test_rules_across_variables_are_refused_too():
    assert "LOYALTY_PG_RUNNER is 'docker' but LOYALTY_DB_CONTAINER is not set" in refusal({"LOYALTY_PG_RUNNER": "docker"})
    assert "LOYALTY_COMPRESSION_LEVEL must be 1-9 for gzip" in refusal({"LOYALTY_COMPRESSION_LEVEL": "19"})
    stray = refusal({"LOYALTY_BACKUP_SOURCE_PORT": "5433", "LOYALTY_BACKUP_SOURCE_PASSWORD": "src-secret-1"})
    assert "LOYALTY_BACKUP_SOURCE_PORT, LOYALTY_BACKUP_SOURCE_PASSWORD set but LOYALTY_BACKUP_SOURCE_HOST is not" in stray
    assert "src-secret-1" not in stray
    assert load_settings({"LOYALTY_COMPRESSION": "zstd", "LOYALTY_COMPRESSION_LEVEL": "19"}).backups.compression_level == 19
    assert load_settings({"LOYALTY_PG_RUNNER": "docker", "LOYALTY_DB_CONTAINER": "db"}).postgres.runner == "docker"
    assert "LOYALTY_DRILL_PLACEMENT is 'server' but LOYALTY_DRILL_HOST is not set" in refusal({"LOYALTY_DRILL_PLACEMENT": "server"})
    assert "LOYALTY_DRILL_HOST is set but LOYALTY_DRILL_PLACEMENT is 'scratch'" in refusal(
        {"LOYALTY_DRILL_PLACEMENT": "scratch", "LOYALTY_DRILL_HOST": "staging-db"})
    assert load_settings({"LOYALTY_DRILL_HOST": "staging-db"}).restore.placement == "server"
    assert load_settings({}).restore.placement == "production"
    assert "LOYALTY_PITR_ENABLED is true but LOYALTY_S3_BUCKET is not set" in refusal({"LOYALTY_PITR_ENABLED": "true"})
    assert load_settings({"LOYALTY_PITR_ENABLED": "true", "LOYALTY_S3_BUCKET": "loyalty-offsite"}).pitr.enabled is True
    assert "LOYALTY_PITR_WAL_COMPRESSION_LEVEL must be 1-9 for gzip" in refusal(
        {"LOYALTY_PITR_WAL_COMPRESSION": "gzip", "LOYALTY_PITR_WAL_COMPRESSION_LEVEL": "12"})
    assert "'snappy' has no levels" in refusal({"LOYALTY_PITR_WAL_COMPRESSION": "snappy", "LOYALTY_PITR_WAL_COMPRESSION_LEVEL": "1"})
    assert load_settings({"LOYALTY_PITR_WAL_COMPRESSION": "lz4", "LOYALTY_PITR_WAL_COMPRESSION_LEVEL": "16"}).pitr.wal_compression_level == 16


def test_encryption_and_object_lock_rules_across_variables(tmp_path):
    assert "LOYALTY_BACKUP_AGE_RECIPIENTS is not set" in refusal({"LOYALTY_BACKUP_ENCRYPTION": "age"})
    recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    assert "would be written unencrypted" in refusal({"LOYALTY_BACKUP_AGE_RECIPIENTS": recipient})
    key = tmp_path / "key.txt"
    key.write_text("AGE-SECRET-KEY-1 not a key\n")
    message = refusal({"LOYALTY_BACKUP_AGE_IDENTITY_FILE": str(key)})
    assert "not an age identity" in message and str(key) not in message and "AGE-SECRET" not in message.split("(")[0]
    settings = load_settings({"LOYALTY_BACKUP_ENCRYPTION": "age", "LOYALTY_BACKUP_AGE_RECIPIENTS": recipient})
    assert settings.backups.encryption == "age"
    assert "LOYALTY_S3_OBJECT_LOCK_DAYS is not" in refusal({"LOYALTY_S3_OBJECT_LOCK_MODE": "COMPLIANCE", "LOYALTY_S3_BUCKET": "b-1"})
    assert "nothing to lock" in refusal({"LOYALTY_S3_OBJECT_LOCK_DAYS": "7"})


def test_several_bad_values_are_reported_together():
    message = refusal({
        "PGPORT": "five", "LOYALTY_COMPRESSION": "lz4", "LOYALTY_RETENTION_MIN_KEEP": "three",
        "LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S": "soon", "LOYALTY_BACKUP_MAX_AGE_HOURS": "0.5",
    })
    assert "5 environment variables are invalid" in message
    lines = [line for line in message.splitlines() if line.startswith("- ")]
    assert [line.split()[1] for line in lines] == [
        "PGPORT", "LOYALTY_COMPRESSION", "LOYALTY_BACKUP_MAX_AGE_HOURS", "LOYALTY_RETENTION_MIN_KEEP",
        "LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S",
    ]


def test_unset_and_blank_variables_take_the_defaults():
    settings = load_settings({"PGPORT": "  ", "LOYALTY_COMPRESSION": ""})
    assert settings.postgres.port is None and settings.backups.compression is None
    assert settings.backups.max_age_hours == 26.0 and settings.postgres.database_name == "loyalty"
    assert load_settings({"LOYALTY_DATABASE_URL": "postgresql://u:pw@db/other", "PGDATABASE": "x"}).postgres.database_name == "other"


def test_one_rule_for_the_backup_age_in_the_freshness_policy_and_the_pager():
    from loyalty_ops.defs.alerting.definitions import alerting_resource

    settings = load_settings({"LOYALTY_BACKUP_MAX_AGE_HOURS": "30"})
    assert settings.backups.max_age_hours == alerting_resource(settings).backup_max_age_hours == 30.0
    for refused in ("1", "0.5", "0"):
        assert "LOYALTY_BACKUP_MAX_AGE_HOURS must be greater than 1" in refusal({"LOYALTY_BACKUP_MAX_AGE_HOURS": refused})


def test_the_docs_list_no_variable_the_settings_do_not_read():
    documented = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for table_row in (line for line in page.read_text().splitlines() if line.startswith("| `")):
            documented |= set(re.findall(r"`((?:LOYALTY|PG|AWS|DOCKER)_?[A-Z0-9_]*)`", table_row.split("|")[1]))
    documented -= {"PG"}
    assert documented, "no configuration table found"
    assert documented - set(every_variable()) - set(INSTANCE_VARIABLES) == set()


def test_the_code_location_refuses_to_load_with_every_bad_value_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in every_variable()}
    env.update({"PGPORT": "five", "LOYALTY_RETENTION_DRY_RUN": "maybe", "PGPASSWORD": "pg-secret-2"})
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m", "loyalty_ops.definitions"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "2 environment variables are invalid" in output
    assert "PGPORT must be a whole number, got 'five'; example: PGPORT=5432" in output
    assert "LOYALTY_RETENTION_DRY_RUN must be true or false, got 'maybe'" in output
    assert "pg-secret-2" not in output


def test_the_ui_shows_the_refusal_as_the_code_location_load_error(monkeypatch, tmp_path, dagster_instance):
    """What the webserver shows under Deployment -> Code locations, asked the way the UI asks (GraphQL)."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGPORT", "five")
    monkeypatch.setenv("LOYALTY_ALERT_WEBHOOK_URL", "https://hooks.example/webhook-secret-1")
    monkeypatch.setenv("LOYALTY_ALERT_TICK_BUDGET_SECONDS", "90")
    query = """query { workspaceOrError { ... on Workspace { locationEntries { name
        locationOrLoadError { __typename ... on PythonError { message causes { message } } } } } } }"""
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, dagster_instance) as context:
        entries = execute_dagster_graphql(context, query).data["workspaceOrError"]["locationEntries"]
    (entry,) = [e for e in entries if e["name"] == "loyalty_ops"]
    error = entry["locationOrLoadError"]
    assert error["__typename"] == "PythonError"
    shown = error["message"] + "".join(cause["message"] for cause in error["causes"])
    assert "2 environment variables are invalid" in shown
    assert "PGPORT must be a whole number, got 'five'; example: PGPORT=5432" in shown
    assert "LOYALTY_ALERT_TICK_BUDGET_SECONDS must be at most 50, got '90'" in shown
    assert "webhook-secret-1" not in shown


def test_the_tools_get_path_home_and_locale_but_no_inherited_libpq_setting(pg_cluster):
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/home/ops", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PGHOST": "elsewhere", "LOYALTY_S3_BUCKET": "b", "AWS_SECRET_ACCESS_KEY": "k"}
    assert tool_base_environment(environ) == {"PATH": "/usr/bin:/bin", "HOME": "/home/ops", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    runner = cluster_target(pg_cluster, "postgres").tools()
    script = "\\getenv p PATH\n\\getenv h HOME\n\\getenv s AWS_SECRET_ACCESS_KEY\n\\echo :p :h [:s]\n"
    out = run_tool(runner, "psql", ["-XAtq", "-f", "-"], input_bytes=script.encode()).stdout
    text = out.decode() if isinstance(out, bytes) else out
    assert text.split() == [os.environ["PATH"], os.environ["HOME"], "[:s]"], text


def test_settings_reach_the_shared_resources_with_secrets_as_env_var_references():
    settings = load_settings({"LOYALTY_DB_CONTAINER": "loyalty-db-prod", "LOYALTY_DB_CONTAINER_PGPORT": "5433",
                              "LOYALTY_DB_CONTAINER_PGHOST": "local", "PGPASSWORD": "pw-not-shown"})
    target = postgres_target(settings)
    assert (target.runner, target.container, target.container_pgport, target.container_pghost) == (
        "docker", "loyalty-db-prod", 5433, "local")
    assert target.password == "PGPASSWORD" and "pw-not-shown" not in repr(target)


def test_walk_the_backup_directory_and_the_bucket_from_the_environment_to_the_file_and_the_key(
    monkeypatch, tmp_path, pg_cluster, loyalty_db, s3_server, s3_bucket, dagster_instance
):
    """Each setting is read once (here), carried by the resources built from it, and ends up as the file
    written and the key uploaded; the secrets reach the run as EnvVar references resolved at run time."""
    from loyalty_ops.definitions import defs
    from loyalty_ops.defs.restore.resources import RestoreSettings

    backup_dir = tmp_path / "walked backups"
    environ = {
        "PGHOST": "127.0.0.1", "PGPORT": str(pg_cluster.port), "PGUSER": pg_cluster.user, "PGPASSWORD": pg_cluster.password,
        "PGDATABASE": loyalty_db, "LOYALTY_BACKUP_DIR": str(backup_dir), "LOYALTY_S3_BUCKET": s3_bucket,
        "LOYALTY_S3_PREFIX": "/walk/nightly", **s3_server.env(),
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    backup_dir.mkdir()
    resources = shared_resources(load_settings(environ))
    assert pg_cluster.password not in repr(resources) and "local-secret-key" not in repr(resources)
    result = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        resources={**resources, "restore_settings": RestoreSettings(drill_every_n_backups="0")},  # no drill: not walked here
        instance=dagster_instance,
    )
    assert result.success
    (written,) = [p for p in backup_dir.iterdir() if p.name.endswith(".dump.gz")]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    stamp = re.search(r"_(\d{4})(\d\d)(\d\d)_", written.name).groups()
    assert f"walk/nightly/{'/'.join(stamp)}/{written.name}" in keys, keys
