"""PostgreSQL helpers: connection settings, tool runners and catalog queries."""
