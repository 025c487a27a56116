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
    assert ConnectionSpec.from_environment({"PGHOST": "h"}).dbname == "loyalty"


def test_environment_url_wins_over_libpq_variables():
    spec = ConnectionSpec.from_environment({"LOYALTY_DATABASE_URL": "postgresql://u@a/b", "PGHOST": "other"})
    assert (spec.host, spec.dbname) == ("a", "b")


@pytest.mark.parametrize(
    "env, field",
    [({"LOYALTY_DATABASE_URL": "mysql://x/y"}, "LOYALTY_DATABASE_URL"), ({"PGPORT": "five"}, "PGPORT")],
)
def test_bad_settings_name_the_field(env, field):
    with pytest.raises(ConnectionConfigError, match=field):
        ConnectionSpec.from_environment(env)


@pytest.mark.parametrize(
    "text, expected",
    [("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)), ("pg_dump (PostgreSQL) 17.2", (17, 2))],
)
def test_parse_tool_version(text, expected):
    assert parse_version(text) == expected
