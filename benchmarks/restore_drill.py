"""Benchmark: the restore drill against a bare ``pg_restore -j2`` of the same archive, in one run.

  (a) bare:   CREATE DATABASE + pg_restore -j2 --exit-on-error from the already-decompressed archive
              (the floor: pg_restore -j cannot read a .gz or stdin, so someone must decompress first);
  (a') bare + decompress: the same with the gunzip-to-file step a person would have to run first;
  (b) drill:  run_drill() end to end: find, SHA-256 + decompress to a 0600 temp file, create the scratch
              database, pg_restore -j2, exact row counts and catalog counts against the manifest, drop.

Prints each time, the drill's measured RTO and restored size, and the ratios b/a and b/a'.
Target (issue 4): b/a <= 1.2.  Default ~1 GB (--scale 32); smaller runs: --scale 4.

    .venv/bin/python benchmarks/restore_drill.py --scale 32
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import MB_PER_SCALE, sample_cluster

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.integrity import iter_decompressed
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.restore.plan import BackupRef
from loyalty_ops.lib.restore.run import RestoreEnvironment, run_drill, take_safety_backup


def bare_restore(cluster, archive: Path, database: str, jobs: int) -> float:
    env = {"PATH": "/usr/bin:/bin", **cluster.env("postgres")}
    started = time.monotonic()
    cluster.create_database(database)
    subprocess.run(
        [f"{cluster.bin_dir}/pg_restore", "--exit-on-error", f"--jobs={jobs}", f"--dbname={database}", str(archive)],
        env=env,
        check=True,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=32.0, help="sample scale: 1 ~ 32 MB on disk here, 32 ~ 1 GB (default)")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j for both (default 2)")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "zstd"])
    parser.add_argument("--repeat", type=int, default=1, help="repeat both measurements, report the best of each")
    args = parser.parse_args()

    with sample_cluster(args.scale * MB_PER_SCALE) as cluster, tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
        work = Path(tmp)
        env = RestoreEnvironment(
            spec=cluster.spec("loyalty"),
            runner=HostToolRunner(cluster.spec("loyalty")),
            location=BackupLocation(work),
            compression=args.compression,
            log=lambda m: None,
        )
        started = time.monotonic()
        backup = take_safety_backup(env, "loyalty")
        print(f"backup: {backup.name} {human_bytes(backup.stat().st_size)} in {time.monotonic() - started:.1f} s", flush=True)

        raw = work / "bare.dump"
        started = time.monotonic()
        with open(raw, "wb") as out:
            for block in iter_decompressed(backup):
                out.write(block)
        decompress_s = time.monotonic() - started
        print(f"decompress to file (for the bare restore): {decompress_s:.2f} s, {human_bytes(raw.stat().st_size)}", flush=True)

        bare_times, drill_times, drills = [], [], []
        for i in range(args.repeat):
            name = f"bench_bare_{i}"
            bare_times.append(bare_restore(cluster, raw, name, args.jobs))
            cluster.drop_database(name)
            print(f"bare pg_restore -j{args.jobs}: {bare_times[-1]:.2f} s", flush=True)
            started = time.monotonic()
            result = run_drill(env, BackupRef("file", str(backup)), jobs=args.jobs)
            drill_times.append(time.monotonic() - started)
            drills.append(result)
            assert result.passed, result.message
            timings = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
            print(f"drill: {drill_times[-1]:.2f} s (RTO {result.rto_s:.2f} s; {timings})", flush=True)
        raw.unlink()
        bare, drill = min(bare_times), min(drill_times)
        best = drills[drill_times.index(drill)]
        print()
        print(f"archive: {human_bytes(best.archive_bytes)} uncompressed; restored database {human_bytes(best.restored_bytes)}")
        print(f"bare pg_restore -j{args.jobs} (createdb + restore):   {bare:.2f} s")
        print(f"bare incl. decompress to file:            {bare + decompress_s:.2f} s")
        print(f"drill (verify+decompress, restore, exact counts, drop): {drill:.2f} s, measured RTO {best.rto_s:.2f} s")
        print(f"ratio drill / bare pg_restore:            {drill / bare:.3f}  (target <= 1.2)")
        print(f"ratio drill / (decompress + bare):        {drill / (bare + decompress_s):.3f}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
