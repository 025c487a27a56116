import pytest

from loyalty_ops.lib.pg.connection import ConnectionConfigError, ConnectionSpec
from loyalty_ops.lib.pg.tools import parse_version


def test_url_is_parsed_and_password_only_reaches_the_environment():
    spec = ConnectionSpec.from_url("postgresql://ops%40x:s3cr%2Ft@db.example.com:6543/loyalty_prod?sslmode=require")
    assert (spec.host, spec.port, spec.user, spec.dbname, spec.sslmode) == (
        "db.example.com", 6543, "ops@x", "loyalty_prod", "require"
    )
    assert spec.password == "s3cr/t"
    assert spec.libpq_env()["PGPASSWORD"] == "s3cr/t"
    assert "s3cr" not in spec.redacted() and "s3cr" not in repr(spec)
    assert spec.redacted() == "postgresql://ops@x@db.example.com:6543/loyalty_prod"


def test_database_defaults_to_loyalty():
    assert ConnectionSpec.from_url("postgresql://h").dbname == "loyalty"
    assert ConnectionSpec(host="h").dbname == "loyalty"


@pytest.mark.parametrize("url", ["mysql://x/y", "postgresql://h:port/db"])
def test_bad_urls_name_the_field(url):
    with pytest.raises(ConnectionConfigError, match="LOYALTY_DATABASE_URL"):
        ConnectionSpec.from_url(url)


@pytest.mark.parametrize(
    "text, expected",
    [("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)), ("pg_dump (PostgreSQL) 17.2", (17, 2))],
)
def test_parse_tool_version(text, expected):
    assert parse_version(text) == expected


def test_passfile_lines_match_as_libpq_reads_them(tmp_path):
    from loyalty_ops.lib.pg.connection import password_from_passfile

    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "# comment\n"
        "other.example:5432:*:ops:wrong\n"
        "db.example:6432:loyalty:ops:not-this-port\n"
        r"db.example:5432:loyalty:ops:pa\:ss\\word" "\n"
        "*:*:*:*:fallback\n"
    )
    assert password_from_passfile(str(passfile), "db.example", 5432, "loyalty", "ops") == "pa:ss\\word"
    assert password_from_passfile(str(passfile), "db.example", None, "loyalty", "ops") == "pa:ss\\word"
    assert password_from_passfile(str(passfile), "elsewhere", 1, "x", "y") == "fallback"
    assert password_from_passfile(str(tmp_path / "missing"), "h", 1, "d", "u") is None


def test_container_runner_sends_the_hosts_passfile_password_on_stdin_not_in_env(tmp_path):
    from loyalty_ops.lib.pg.docker_runner import DockerExecToolRunner

    passfile = tmp_path / "pgpass"
    passfile.write_text("db.example:5432:loyalty:ops:from-passfile\n")
    spec = ConnectionSpec(host="db.example", port=5432, user="ops", dbname="loyalty", extra_env={"PGPASSFILE": str(passfile)})
    runner = DockerExecToolRunner(spec, "loyalty-db-prod")
    assert runner.exec_password() == "from-passfile"
    env = runner.exec_environment("loyalty")
    assert "PGPASSFILE" not in env and "PGPASSWORD" not in env and "from-passfile" not in str(env)


def test_libpq_settings_reach_tools_and_driver_alike():
    spec = ConnectionSpec(
        host="h", sslmode="verify-full", connect_timeout=4,
        extra_env={"PGSSLROOTCERT": "/ca.crt", "PGOPTIONS": "-c search_path=x", "PGAPPNAME": "ops", "PGSERVICE": "svc"},
    )
    env, kwargs = spec.libpq_env(), spec.psycopg_kwargs()
    assert (env["PGSSLROOTCERT"], kwargs["sslrootcert"]) == ("/ca.crt", "/ca.crt")
    assert (env["PGOPTIONS"], kwargs["options"]) == ("-c search_path=x", "-c search_path=x")
    assert (env["PGAPPNAME"], kwargs["application_name"]) == ("ops", "ops")
    assert (env["PGCONNECT_TIMEOUT"], kwargs["connect_timeout"]) == ("4", 4)
    assert (env["PGSERVICE"], kwargs["service"]) == ("svc", "svc")
    url = ConnectionSpec.from_url("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.crt&connect_timeout=3")
    assert url.psycopg_kwargs()["sslrootcert"] == url.libpq_env()["PGSSLROOTCERT"] == "/ca.crt"
    assert url.connect_timeout == 3


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_a_bad_connect_timeout_in_the_url_is_refused(value):
    with pytest.raises(ConnectionConfigError, match="connect_timeout"):
        ConnectionSpec.from_url(f"postgresql://h/db?connect_timeout={value}")
