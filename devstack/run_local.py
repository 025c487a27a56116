"""The README's run command: start what is needed, run ``nightly_backup_job`` once, keep Dagster up.

With no database configured (neither ``LOYALTY_DATABASE_URL`` nor ``PGHOST``) it starts an embedded
default: a throwaway PostgreSQL holding a sample loyalty database, and a local S3 endpoint (moto) with a
bucket; the embedded PostgreSQL archives its WAL to that bucket through barman-cloud (PITR on: a base
backup is taken first, and the nightly job's PITR drill runs). Dagster's own history goes to a ``dagster`` database on a local cluster unless ``DAGSTER_PG_HOST``
points elsewhere. Then the webserver and daemon start on 127.0.0.1:3000 and the backup job runs once.
Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from devstack.dagster_services import REPO_ROOT, DagsterServices
from devstack.postgres_cluster import LocalPostgres, archiving_settings, server_engine_dir
from devstack.s3_endpoint import LocalS3
from devstack.sample_data import create_sample_schema
from loyalty_ops.defs.pitr.resources import pitr_resource
from loyalty_ops.defs.settings import load_settings
from loyalty_ops.lib.pitr.engine import S3Access, archive_command
from loyalty_ops.lib.pitr.location import PitrLocation

LOCAL_BUCKET = "loyalty-local-backups"
PITR_ARCHIVE_TIMEOUT_S = 10  # WAL visibly arriving in the bucket every few seconds while anything writes


def pitr_archiving(env: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The embedded cluster's archiving settings (barman-cloud to the bucket under pitr/) and the server's
    environment (the S3 endpoint and keys the archive_command reads; never in the settings)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION")
    aws = {n: env.get(n) or os.environ.get(n) for n in names}
    location = PitrLocation.of(env.get("LOYALTY_S3_BUCKET") or os.environ["LOYALTY_S3_BUCKET"], "pitr/", "loyalty")
    access = S3Access(endpoint_url=aws["AWS_ENDPOINT_URL"], region=aws["AWS_REGION"],
                      credentials={n: v for n, v in aws.items() if v and n.startswith("AWS_") and n not in ("AWS_ENDPOINT_URL", "AWS_REGION")})
    # The same options (compression, CPU priority) the code location's wal_archive_settings asks for.
    options = pitr_resource(load_settings({**os.environ, **env})).archive_options()
    command = archive_command(server_engine_dir(), location, access, options)
    return archiving_settings(command, PITR_ARCHIVE_TIMEOUT_S, options.server_wal_compression), access.env()


def _say(message: str) -> None:
    print(f"[run-local] {message}", flush=True)


def build_environment(stack: ExitStack, args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    target_configured = bool(os.environ.get("LOYALTY_DATABASE_URL") or os.environ.get("PGHOST"))
    if not os.environ.get("LOYALTY_S3_BUCKET"):
        s3 = LocalS3(port=args.s3_port).start()
        stack.callback(s3.stop)
        s3.client().create_bucket(Bucket=LOCAL_BUCKET)
        env.update(s3.env())
        env["LOYALTY_S3_BUCKET"] = LOCAL_BUCKET
        _say(f"local S3 endpoint on {s3.endpoint_url}, bucket {LOCAL_BUCKET}")
    cluster = None
    if not target_configured or not os.environ.get("DAGSTER_PG_HOST"):
        _say("starting a throwaway PostgreSQL 15 cluster")
        settings: tuple[str, ...] = ()
        server_env: dict[str, str] = {}
        if not target_configured:  # the embedded target archives its WAL to the bucket: PITR works out of the box
            settings, server_env = pitr_archiving(env)
            env.update({"LOYALTY_PITR_ENABLED": "true", "LOYALTY_PITR_BARMAN_BIN_DIR": server_engine_dir(),
                        "LOYALTY_PITR_ARCHIVE_TIMEOUT_SECONDS": str(PITR_ARCHIVE_TIMEOUT_S)})
        cluster = LocalPostgres(base_dir=workdir / "postgres", password=os.urandom(12).hex(), port=args.pg_port,
                                settings=settings, environment=server_env)
        cluster.start()
        stack.callback(cluster.destroy)
        _say(f"PostgreSQL is listening on 127.0.0.1:{cluster.port}" + (
            f", archiving WAL to s3://{env['LOYALTY_S3_BUCKET']}/pitr/loyalty" if settings else ""))
    if not target_configured:
        assert cluster is not None
        cluster.create_database("loyalty")
        started = time.monotonic()
        with cluster.connect("loyalty") as conn:
            rows = create_sample_schema(conn, args.scale)
        _say(f"sample loyalty database created in {time.monotonic() - started:.1f} s: {rows}")
        env.update(cluster.env("loyalty"))
    else:
        _say("targeting the configured database (LOYALTY_DATABASE_URL / PGHOST)")
    if not os.environ.get("DAGSTER_PG_HOST"):
        assert cluster is not None
        cluster.create_database("dagster")
        env.update(
            {
                "DAGSTER_PG_HOST": "127.0.0.1",
                "DAGSTER_PG_PORT": str(cluster.port),
                "DAGSTER_PG_USER": cluster.user,
                "DAGSTER_PG_PASSWORD": cluster.password,
                "DAGSTER_PG_DB": "dagster",
            }
        )
    env.setdefault("LOYALTY_BACKUP_DIR", os.environ.get("LOYALTY_BACKUP_DIR", str(REPO_ROOT / "backups")))
    env.setdefault("LOYALTY_WEBSERVER_BASE_URL", f"http://127.0.0.1:{args.port}")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000, help="Dagster webserver port (default 3000)")
    parser.add_argument("--scale", type=float, default=1.0, help="sample database scale (1.0 is about 20 MB)")
    parser.add_argument("--pg-port", type=int, default=0, help="embedded PostgreSQL port (default: a free one)")
    parser.add_argument("--s3-port", type=int, default=0, help="embedded S3 port (default: a free one)")
    parser.add_argument("--exit-after-run", action="store_true", help="stop everything once the job has run")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="loyalty-run-local-"))
    os.chmod(workdir, 0o755)
    stopping = {"flag": False}

    def _interrupt(signum, _frame):
        stopping["flag"] = True
        raise KeyboardInterrupt

    # Explicit handlers: a shell that started us in the background may have set SIGINT to "ignore".
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    exit_code = 0
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        try:
            env = build_environment(stack, args, workdir)
            home = workdir / "dagster_home"
            home.mkdir()
            shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
            services = DagsterServices(home, env, port=args.port, log_path=workdir / "dagster.log")
            _say(f"starting Dagster (webserver and daemon) on {services.url}")
            services.start()
            stack.callback(services.stop)
            stack.callback(_say, "stopping Dagster, S3 and PostgreSQL")
            client = services.graphql_client()
            if env.get("LOYALTY_PITR_ENABLED") == "true":  # the PITR drill in the nightly job needs a base backup
                base_run = client.submit_job_execution("weekly_base_backup_job")
                _say(f"launched weekly_base_backup_job: {services.url}/runs/{base_run}")
                _say(f"weekly_base_backup_job finished: {services.wait_for_run(base_run, timeout_s=1800)}")
            run_id = client.submit_job_execution("nightly_backup_job")
            _say(f"launched nightly_backup_job: {services.url}/runs/{run_id}")
            status = services.wait_for_run(run_id, timeout_s=1800)
            _say(f"nightly_backup_job finished: {status}")
            if status != "SUCCESS":
                exit_code = 1
                _say(f"see the run's logs at {services.url}/runs/{run_id} (and {workdir / 'dagster.log'})")
            else:
                _say(f"backup files are in {env['LOYALTY_BACKUP_DIR']}")
            if args.exit_after_run:
                return exit_code
            _say(f"Dagster UI: {services.url} — press Ctrl-C to stop everything")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            _say("interrupted")
        except Exception as exc:
            _say(f"failed: {exc}")
            exit_code = 1
    _say("stopped; nothing left running")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
