"""Benchmark: how the cost of the backup, the drill and the restore grows with the database, measured at
several sizes in one run and printed side by side, with what it comes to at 100 GB (extrapolated).

For each size in --sizes-gb (on-disk database size; default 1.4 and 10), on a sample cluster kept in
--cluster-root/<size> (generated once by the sample generator's bulk load, reused by later runs):

  - database size on disk and the size of the uncompressed archive;
  - the floor: pg_dump -Fc -Z0 > file (after a warm-up read), seconds and seconds per GB;
  - the backup as nightly_backup_job runs it without S3 (dump, compress, hash, row counts, blocking checks;
    moto on the same cores would measure itself): seconds, seconds per GB, ratio to the floor, and its own
    memory (peak RSS of its process minus the interpreter with Dagster imported);
  - the floor of a restore (decompress, then CREATE DATABASE + pg_restore -j2), the drill and restore_job's
    restore (new database), each -j2 by default, in processes of their own: seconds, seconds per GB, ratio
    to that floor, and their own memory (peak RSS during the step minus the RSS before it).

Then the 100 GB column: every figure extended along the line through the smallest and the largest size
(labelled as extrapolated: nothing ran at 100 GB). Ratios are against baselines measured in the same run;
each line carries the load average, and the machine is printed.

    flock -s /tmp/loyalty-bench.lock .venv/bin/python benchmarks/cost_growth.py --cluster-root /tmp/bench/growth --prepare-only
    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/cost_growth.py --cluster-root /tmp/bench/growth
    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/cost_growth.py --sizes-gb 0.2,0.4 --cluster-root /tmp/bench/growth-smoke

Disk: before generating a sample, and before measuring a size, the run works out the space it will need
(the sample; the floor archive, our archive, a decompressed copy and a restored database) and refuses, with
the numbers, when the filesystem cannot hold it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_line, run_backup_child, sample_cluster, timed_shell

import restore_drill
from devstack.postgres_cluster import LocalPostgres
from devstack.sample_data import bulk_load_sample
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.restore.plan import BackupRef
from loyalty_ops.lib.restore.run import run_drill

GB = 1e9
# On-disk MB (10^6 bytes) of the bulk-loaded sample per unit of the generator's scale, its indexes built
# packed after the load (26.4 measured at scale 52, 26.3 at 370): turns --sizes-gb into a scale.
DISK_MB_PER_SCALE = 26.3
# Space per byte of database, for the refusals up front (measured on the sample: uncompressed archive
# 0.5-0.6 x the database, gzip level 1 of it 0.35 x the archive); rounded up.
RAW_ARCHIVE_PER_DB = 0.7
GZIP_PER_RAW = 0.45
SLACK_BYTES = 3 * 1024**3  # WAL of a restore and of the generation (max_wal_size below), logs, the catalog
# The throwaway benchmark cluster while it generates its sample only (restarted with the defaults after).
GENERATION_SETTINGS = (
    "wal_level=minimal", "max_wal_senders=0", "max_wal_size=2GB", "checkpoint_timeout=30min",
    "shared_buffers=512MB", "maintenance_work_mem=512MB", "max_parallel_maintenance_workers=2", "autovacuum=off",
)
PASSWORD_FILE = "benchmark-password"  # the name _common.sample_cluster reads a kept cluster's password from
SAMPLE_FILE = "sample.json"  # what was generated, how long it took


def uptime() -> str:
    return restore_drill.uptime()


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def size_label(size_gb: float) -> str:
    return f"{size_gb:g}"


class NotEnoughDisk(SystemExit):
    pass


def refuse_unless_space(where: Path, needed: dict[str, float], what: str) -> None:
    """Exit with the numbers before anything is written when ``where``'s filesystem cannot hold ``needed``."""
    existing = where
    while not existing.exists():  # nothing is created before the answer
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    total = sum(needed.values())
    parts = ", ".join(f"{name} {human_bytes(int(v))}" for name, v in needed.items())
    if total > free:
        raise NotEnoughDisk(
            f"refused: {what} needs about {human_bytes(int(total))} on the filesystem of {where} ({parts}), "
            f"only {human_bytes(free)} is free. Free space there, or choose a --cluster-root/--work-dir on a larger "
            f"filesystem, or a smaller --sizes-gb."
        )
    print(f"{what}: needs about {human_bytes(int(total))} ({parts}); {human_bytes(free)} free", flush=True)


def run_space(db_bytes: float) -> dict[str, float]:
    """Peak space of one size's measurements: the floor archive is removed before our backup is taken; then
    our archive stays while the decompressed copy (bare restore, drill -j2, restore -j2) and one restored
    database exist at a time."""
    raw = db_bytes * RAW_ARCHIVE_PER_DB
    return {"our archive": raw * GZIP_PER_RAW, "decompressed archive": raw, "restored database": db_bytes, "WAL and slack": SLACK_BYTES}


# -- the sample clusters --------------------------------------------------------------------------------


def cluster_ready(cluster_dir: Path) -> bool:
    return (cluster_dir / SAMPLE_FILE).exists() and (cluster_dir / "data" / "PG_VERSION").exists()


def prepare_cluster(cluster_dir: Path, size_gb: float, workers: int) -> dict:
    """The sample cluster for ``size_gb`` in ``cluster_dir``: reused when a generation finished there, else
    generated (into ``loyalty_generating``, renamed ``loyalty`` once complete: an interrupted generation never
    leaves a database under the name the benchmark reads). Returns what sample.json records."""
    if cluster_ready(cluster_dir):
        sample = json.loads((cluster_dir / SAMPLE_FILE).read_text())
        print(f"{size_label(size_gb)} GB: sample kept in {cluster_dir}: scale {sample['scale']:g}, "
              f"{human_bytes(sample['database_bytes'])} on disk, generated in {sample['generation_s']:.0f} s", flush=True)
        return sample
    if cluster_dir.exists() and any(cluster_dir.iterdir()) and not (cluster_dir / PASSWORD_FILE).exists():
        raise SystemExit(f"refused: {cluster_dir} is not empty and holds no sample cluster of this benchmark; "
                         "give an empty or new --cluster-root")
    scale = size_gb * 1000 / DISK_MB_PER_SCALE
    refuse_unless_space(cluster_dir.parent, {"sample database": size_gb * GB * 1.15, "WAL and slack": SLACK_BYTES},
                        f"generating the {size_label(size_gb)} GB sample (scale {scale:g})")
    cluster_dir.mkdir(parents=True, exist_ok=True)
    password_file = cluster_dir / PASSWORD_FILE
    if password_file.exists() and (cluster_dir / "data" / "PG_VERSION").exists():
        password = password_file.read_text().strip()
    else:
        shutil.rmtree(cluster_dir / "data", ignore_errors=True)  # an initdb cut short (ours: the password file is there)
        password = os.urandom(8).hex()
        password_file.write_text(password + "\n")
    cluster = LocalPostgres(password=password, base_dir=cluster_dir, settings=GENERATION_SETTINGS)
    cluster.start()
    try:
        cluster.drop_database("loyalty_generating")  # left by an interrupted generation
        cluster.drop_database("loyalty")  # only ever made by the rename below, and sample.json was not written
        cluster.create_database("loyalty_generating")
        print(f"{size_label(size_gb)} GB: generating scale {scale:g} in {cluster_dir} with {workers} connections  [{uptime()}]", flush=True)
        last = [0.0]

        def log(message: str) -> None:
            if time.monotonic() - last[0] >= 10 or not message.startswith("sample rows:"):
                last[0] = time.monotonic()
                print(f"  {time.strftime('%H:%M:%S')} {message}  [load {load()}]", flush=True)

        started = time.monotonic()
        rows = bulk_load_sample(lambda: cluster.connect("loyalty_generating"), scale, workers=workers, log=log)
        with cluster.connect() as conn:
            conn.execute("ALTER DATABASE loyalty_generating RENAME TO loyalty")
            conn.execute("CHECKPOINT")
            size = int(conn.execute("SELECT pg_database_size('loyalty')").fetchone()[0])
        seconds = time.monotonic() - started
    finally:
        cluster.stop()
    sample = {"size_gb": size_gb, "scale": scale, "rows": rows, "database_bytes": size, "generation_s": seconds,
              "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_line()}
    (cluster_dir / SAMPLE_FILE).write_text(json.dumps(sample, indent=1) + "\n")
    print(f"{size_label(size_gb)} GB: generated {human_bytes(size)} on disk (scale {scale:g}, {sum(rows.values()):,} rows) "
          f"in {seconds:.0f} s = {seconds / (size / GB):.0f} s per GB  [{uptime()}]", flush=True)
    return sample


# -- the drill in its own process, for its memory ---------------------------------------------------------


def drill_child_main(job_json: str) -> None:
    """In a child process: one drill of ``backup``, then print its time and memory (no password printed)."""
    job = json.loads(job_json)
    spec = ConnectionSpec(**job.pop("spec"))
    env = restore_drill.environment(spec, Path(job["work"]))
    job["rss_before_mb"] = restore_drill._status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    started = time.monotonic()
    result = run_drill(env, BackupRef("file", job["backup"]), jobs=job["jobs"])
    job["seconds"] = time.monotonic() - started
    job["passed"], job["message"], job["streamed"] = result.passed, result.message, result.streamed
    job["peak_rss_mb"] = restore_drill._status_mb("VmHWM")
    print("RESULT " + json.dumps(job), flush=True)


def run_drill_child(spec: ConnectionSpec, work: Path, backup: Path, jobs: int) -> dict:
    job = {
        "spec": {"host": spec.host, "port": spec.port, "user": spec.user, "password": spec.password, "dbname": spec.dbname},
        "work": str(work), "backup": str(backup), "jobs": jobs,
    }
    out = subprocess.run([sys.executable, __file__, "--drill-child", json.dumps(job)], capture_output=True, text=True, cwd=REPO)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"drill child failed: {out.stdout[-2000:]} {out.stderr[-4000:]}")
    result = json.loads(lines[-1][7:])
    if not result["passed"]:
        raise RuntimeError(f"drill -j{jobs} did not pass: {result['message']}")
    return result


# -- one size ---------------------------------------------------------------------------------------------


def measure_size(cluster_dir: Path, size_gb: float, work_root: Path, drill_jobs: list[int], restore_jobs: list[int]) -> dict:
    sample = json.loads((cluster_dir / SAMPLE_FILE).read_text())
    label = size_label(size_gb)
    refuse_unless_space(work_root, run_space(sample["database_bytes"]), f"measuring {label} GB")
    out: dict = {"size_gb": size_gb, "scale": sample["scale"]}
    with sample_cluster(size_gb * 1000, cluster_dir=cluster_dir) as cluster, \
            tempfile.TemporaryDirectory(prefix=f"growth-{label}-", dir=work_root) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        with cluster.connect("loyalty") as conn:
            db_bytes = int(conn.execute("SELECT pg_database_size('loyalty')").fetchone()[0])
        out["database_bytes"] = db_bytes
        gb = db_bytes / GB
        env = {"PATH": f"{cluster.bin_dir}:/usr/bin:/bin", **cluster.env("loyalty")}

        timed_shell("pg_dump -Fc -Z0 > /dev/null", env)  # warm the page cache, as for every run below
        out["floor_s"] = timed_shell(f"pg_dump -Fc -Z0 > {work}/floor.dump", env)
        out["raw_archive_bytes"] = (work / "floor.dump").stat().st_size
        (work / "floor.dump").unlink()
        print(f"{label} GB: floor pg_dump -Fc -Z0 {out['floor_s']:.1f} s ({out['floor_s'] / gb:.1f} s/GB), "
              f"archive {human_bytes(out['raw_archive_bytes'])}  [{uptime()}]", flush=True)

        backup = run_backup_child(cluster, work, label="growth")
        out["backup_s"] = backup["elapsed_s"]
        out["backup_steps"] = backup["steps"]
        out["backup_bytes"] = backup["bytes"]
        out["backup_own_mb"] = backup["peak_rss_mb"] - backup["rss_after_imports_mb"]
        out["backup_interpreter_mb"] = backup["rss_after_imports_mb"]
        out["row_counts_source"] = backup["meta"].get("row_counts_source")
        print(f"{label} GB: backup {out['backup_s']:.1f} s ({out['backup_s'] / gb:.1f} s/GB, "
              f"{out['backup_s'] / out['floor_s']:.2f}x floor), own memory {out['backup_own_mb']:.0f} MB; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in backup["steps"].items()) + f"  [{uptime()}]", flush=True)
        backup_dir = work / "backups_growth"
        archive = next(backup_dir.glob("loyalty_*.dump.gz"))
        shutil.rmtree(work / "dagster_home_growth", ignore_errors=True)

        out["bare_s"], out["decompress_s"], _ = restore_drill.measure_bare(cluster, work, archive)
        spec = cluster.spec("loyalty")
        for jobs in drill_jobs:
            drill = run_drill_child(spec, backup_dir, archive, jobs)
            out[f"drill_j{jobs}_s"] = drill["seconds"]
            out[f"drill_j{jobs}_own_mb"] = drill["peak_rss_mb"] - drill["rss_before_mb"]
            print(f"{label} GB: drill -j{jobs} {drill['seconds']:.1f} s ({drill['seconds'] / gb:.1f} s/GB), own memory "
                  f"{out[f'drill_j{jobs}_own_mb']:.0f} MB  [{uptime()}]", flush=True)
        for jobs in restore_jobs:
            target = f"growth_restore_j{jobs}"
            try:
                restored = restore_drill.run_child(spec, backup_dir, str(archive), target, jobs)
            finally:
                cluster.drop_database(target)
            out[f"restore_j{jobs}_s"] = restored["seconds"]
            out[f"restore_j{jobs}_own_mb"] = restored["restore_peak_rss_mb"] - restored["rss_before_mb"]
            print(f"{label} GB: restore -j{jobs} {restored['seconds']:.1f} s ({restored['seconds'] / gb:.1f} s/GB), own memory "
                  f"{out[f'restore_j{jobs}_own_mb']:.0f} MB  [{uptime()}]", flush=True)
    out["load_after"] = load()
    return out


# -- the side-by-side table ---------------------------------------------------------------------------------


def extrapolate(points: list[tuple[float, float]], at: float) -> float:
    """The value at ``at`` on the line through the first and the last (size, value) point."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    if x1 == x0:
        return y1
    return y1 + (y1 - y0) / (x1 - x0) * (at - x1)


def print_table(results: list[dict], drill_jobs: list[int], restore_jobs: list[int], target_gb: float) -> None:
    sizes = [r["database_bytes"] / GB for r in results]
    seconds_rows = [("floor: pg_dump -Fc -Z0 > file", "floor_s"), ("backup without S3 (dump, checks)", "backup_s"),
                    ("restore floor: pg_restore -j2 of a decompressed file", "bare_s")]
    seconds_rows += [(f"drill -j{j}", f"drill_j{j}_s") for j in drill_jobs]
    seconds_rows += [(f"restore -j{j}, new database", f"restore_j{j}_s") for j in restore_jobs]
    memory_rows = [("backup's own memory (MB)", "backup_own_mb")]
    memory_rows += [(f"drill -j{j} own memory (MB)", f"drill_j{j}_own_mb") for j in drill_jobs]
    memory_rows += [(f"restore -j{j} own memory (MB)", f"restore_j{j}_own_mb") for j in restore_jobs]

    def values(key: str) -> list[float]:
        vals = [r[key] for r in results]
        return vals + [extrapolate(list(zip(sizes, vals)), target_gb)] if len(results) > 1 else vals

    all_sizes = sizes + ([target_gb] if len(results) > 1 else [])
    header = [f"{r['size_gb']:g} GB asked" for r in results] + ([f"{target_gb:g} GB (extrapolated)"] if len(results) > 1 else [])
    print()
    print(f"machine: {machine_line()}")
    print("| | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))

    def row(label: str, cells: list[str]) -> None:
        print(f"| {label} | " + " | ".join(cells) + " |")

    row("database size on disk (GB)", [f"{s:.2f}" for s in all_sizes])
    row("uncompressed archive (GB)", [f"{v / GB:.2f}" for v in values("raw_archive_bytes")])
    row("our archive, gzip (GB)", [f"{v / GB:.2f}" for v in values("backup_bytes")])
    for label, key in seconds_rows:
        vals = values(key)
        row(f"{label}: s", [f"{v:.1f}" for v in vals])
        row(f"{label}: s per GB", [f"{v / s:.1f}" for v, s in zip(vals, all_sizes)])
    floor, backup, bare = values("floor_s"), values("backup_s"), values("bare_s")
    row("backup / floor", [f"{b / f:.2f}" for b, f in zip(backup, floor)])
    for label, key in seconds_rows[3:]:
        row(f"{label} / restore floor", [f"{v / b:.2f}" for v, b in zip(values(key), bare)])
    for label, key in memory_rows:
        row(label, [f"{v:.0f}" for v in values(key)])
    row("interpreter with Dagster imported (MB)", [f"{r['backup_interpreter_mb']:.0f}" for r in results] + ([""] if len(results) > 1 else []))
    row("load average after (1, 5, 15 min)", [r["load_after"] for r in results] + ([""] if len(results) > 1 else []))
    if len(results) > 1:
        print(f"\nThe {target_gb:g} GB column is extrapolated, not measured: each figure on the line through the "
              f"{results[0]['size_gb']:g} GB and {results[-1]['size_gb']:g} GB measurements.")
        span = sizes[-1] - sizes[0]
        growth = ", ".join(f"{label.replace(' (MB)', '')} {results[-1][key] - results[0][key]:+.1f} MB "
                           f"({(results[-1][key] - results[0][key]) / span:+.1f} MB per GB)" for label, key in memory_rows)
        print(f"memory from the smallest to the largest size: {growth}. A change within the noise of one "
              "measurement (a few MB) extends to a large number at 100 GB: read the memory row there with it.")
    print("rows counted from: " + ", ".join(f"{r['size_gb']:g} GB {r['row_counts_source']}" for r in results))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--drill-child":
        drill_child_main(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", default="1.4,10", help="on-disk database sizes, GB (default 1.4,10)")
    parser.add_argument("--cluster-root", type=Path, required=True, help="the sample clusters live in DIR/<size>, kept")
    parser.add_argument("--work-dir", type=Path, help="archives and restores' temporary files (default: --cluster-root)")
    parser.add_argument("--prepare-only", action="store_true", help="generate (or reuse) the clusters, print sizes, stop")
    parser.add_argument("--drill-jobs", default="2", help="drills measured (default 2; 2,1 adds the streamed drill)")
    parser.add_argument("--restore-jobs", default="2", help="restores measured (default 2; 2,1 adds the streamed restore)")
    parser.add_argument("--generate-workers", type=int, default=2, help="connections loading a sample (default 2)")
    parser.add_argument("--extrapolate-gb", type=float, default=100.0)
    args = parser.parse_args()
    try:
        sizes = sorted(float(s) for s in args.sizes_gb.split(",") if s.strip())
    except ValueError:
        parser.error(f"--sizes-gb takes sizes in GB separated by commas, such as 1.4,10; got {args.sizes_gb!r}")
    if not sizes or min(sizes) <= 0:
        parser.error(f"--sizes-gb takes positive sizes, such as 1.4,10; got {args.sizes_gb!r}")
    drill_jobs = [int(j) for j in args.drill_jobs.split(",") if j.strip()]
    restore_jobs = [int(j) for j in args.restore_jobs.split(",") if j.strip()]
    root = args.cluster_root.resolve()
    work_root = (args.work_dir or root).resolve()

    print(f"cost growth benchmark, sizes {', '.join(f'{s:g}' for s in sizes)} GB; {machine_line()}; {uptime()}", flush=True)
    missing = [s for s in sizes if not cluster_ready(root / size_label(s))]
    if missing:  # all the samples still to generate, checked together before the first is started
        refuse_unless_space(root, {f"{size_label(s)} GB sample": s * GB * 1.15 for s in missing} | {"WAL and slack": SLACK_BYTES},
                            "generating the samples")
    samples = [prepare_cluster(root / size_label(s), s, args.generate_workers) for s in sizes]
    for size_gb, sample in zip(sizes, samples):
        print(f"sample {size_label(size_gb)} GB: {human_bytes(sample['database_bytes'])} on disk "
              f"({sample['database_bytes'] / GB:.2f} GB), scale {sample['scale']:g}, generated in {sample['generation_s']:.0f} s")
    if args.prepare_only:
        return 0
    largest = max(sample["database_bytes"] for sample in samples)
    refuse_unless_space(work_root, run_space(largest), "the measurements (one size at a time)")

    results = []
    for size_gb in sizes:
        results.append(measure_size(root / size_label(size_gb), size_gb, work_root, drill_jobs, restore_jobs))
        print_table(results, drill_jobs, restore_jobs, args.extrapolate_gb)  # what is measured so far survives a later failure
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (root / f"results-{stamp}.json").write_text(json.dumps({"machine": machine_line(), "results": results}, indent=1) + "\n")
    print(f"\nresults also in {root / f'results-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
