"""Shared pieces of the benchmark scripts: a sample database of a given size and a moto S3 server in its
own process (so its CPU is not counted in the process being measured)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.postgres_cluster import LocalPostgres, free_port  # noqa: E402
from devstack.s3_endpoint import local_s3_client  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402

MB_PER_SCALE = 20.0  # create_sample_schema(scale=1.0) is about 20 MB on disk


@contextmanager
def sample_cluster(size_mb: float, database: str = "loyalty") -> Iterator[LocalPostgres]:
    """A throwaway cluster holding a sample loyalty database of about ``size_mb`` MB."""
    with LocalPostgres(password=os.urandom(8).hex()) as cluster:
        cluster.create_database(database)
        started = time.monotonic()
        with cluster.connect(database) as conn:
            create_sample_schema(conn, max(size_mb / MB_PER_SCALE, 0.05))
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"sample database: {size / 1e6:.0f} MB generated in {time.monotonic() - started:.0f} s", flush=True)
        yield cluster


@contextmanager
def moto_process() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint_url: str):
    return local_s3_client(endpoint_url)


def timed_shell(command: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True)
    return time.monotonic() - started


def children_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
