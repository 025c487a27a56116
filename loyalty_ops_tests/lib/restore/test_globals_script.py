"""Replaying a pg_dumpall globals script never changes a role or tablespace that is already on the server."""

import pytest

from loyalty_ops.lib.restore.globals_script import GlobalsScriptError, plan_globals, split_statements

SCRIPT = r'''--
-- PostgreSQL database cluster dump
--

\restrict AbC123

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:a;b==$c:d';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:old';
CREATE ROLE "Odd ""Name""";
ALTER ROLE "Odd ""Name""" WITH NOLOGIN;
COMMENT ON ROLE app IS 'the app;
its role';
ALTER ROLE app SET search_path TO 'app', 'public';
GRANT "Odd ""Name""" TO app GRANTED BY postgres;
GRANT app TO postgres GRANTED BY postgres;
CREATE TABLESPACE fast OWNER app LOCATION '/srv/fast';
CREATE TABLESPACE cold OWNER app LOCATION '/srv/cold';
GRANT CREATE ON TABLESPACE cold TO app;

\unrestrict AbC123
'''


def test_statements_are_split_outside_quotes_without_comments_and_meta_commands():
    statements = split_statements(SCRIPT)
    assert statements[0] == "SET default_transaction_read_only = off;"
    assert "COMMENT ON ROLE app IS 'the app;\nits role';" in statements
    assert any(s.endswith("PASSWORD 'SCRAM-SHA-256$4096:a;b==$c:d';") for s in statements)
    assert not any(s.startswith(("\\", "--")) for s in statements)


def test_existing_roles_and_tablespaces_are_left_exactly_as_they_are():
    plan = plan_globals(SCRIPT, roles_here={"postgres"}, tablespaces_here={"cold"})
    assert plan.created_roles == ["app", 'Odd "Name"'] and plan.existing_roles == ["postgres"]
    assert plan.created_tablespaces == ["fast"] and plan.existing_tablespaces == ["cold"]
    ran = "\n".join(plan.statements)
    assert "ALTER ROLE postgres" not in ran and "SCRAM-SHA-256$4096:old" not in ran  # the new server's superuser
    assert "GRANT app TO postgres" not in ran  # a membership of an existing role
    assert 'GRANT "Odd ""Name""" TO app GRANTED BY postgres;' in plan.statements
    assert "CREATE TABLESPACE fast OWNER app LOCATION '/srv/fast';" in plan.statements
    assert not any("cold" in s for s in plan.statements)
    assert all("SCRAM" not in reason for reason in plan.skipped)  # skipped statements are logged without hashes
    assert "1 already existed and were left as they are (postgres)" in plan.summary()


def test_an_unknown_statement_is_refused_before_anything_runs():
    with pytest.raises(GlobalsScriptError, match="does not replay"):
        plan_globals("CREATE ROLE a;\nDROP ROLE postgres;\n", set(), set())
    with pytest.raises(GlobalsScriptError, match="ends inside a statement"):
        plan_globals("CREATE ROLE a;\nALTER ROLE a WITH PASSWORD 'x\n", set(), set())
