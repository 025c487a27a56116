"""The embedded local stack: a throwaway PostgreSQL cluster with a sample loyalty database and a local
S3 endpoint. The README's run command, the tests and the benchmarks all start the same pieces."""
