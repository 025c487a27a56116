"""What client-side age encryption costs a backup and a restore's first pass.

Takes the same backup of a sample database with and without ``LOYALTY_BACKUP_ENCRYPTION=age`` (rounds
interleaved, so load drifts hit both), then the restore's verify + decrypt + decompress pass of each file.
The encrypted backup also runs the plaintext checks in the backup pass (decompression, archive walk,
``pg_restore --list``), which the unencrypted one leaves to the check step: the ratio includes that.

    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/backup_encryption.py --size-mb 200 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import machine_line, sample_cluster

from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.backup.encryption import load_identities
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.archive_passes import prepare_archive
from loyalty_ops.lib.restore.source import release_work_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp, sample_cluster(args.size_mb) as cluster:
        work = Path(tmp)
        key = work / "key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
        identities = tuple(load_identities(key))
        spec = cluster.spec("loyalty")
        runner = HostToolRunner(spec)
        timings: dict[str, list[float]] = {"plain": [], "age": [], "plain_restore_pass": [], "age_restore_pass": []}
        sizes: dict[str, int] = {}
        for round_no in range(args.rounds):
            for label, recipients in (("plain", None), ("age", recipient)):
                out = work / f"{label}-{round_no}"
                started = time.monotonic()
                result = take_backup(spec, runner, BackupRequest(backup_dir=out, age_recipients=recipients))
                timings[label].append(time.monotonic() - started)
                sizes[label] = result.file.written_bytes
                started = time.monotonic()
                archive = prepare_archive(result.path, result.file.sha256, out, identities=identities)
                timings[f"{label}_restore_pass"].append(time.monotonic() - started)
                release_work_file(archive.path)
            print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in timings.items()), flush=True)
        median = {k: statistics.median(v) for k, v in timings.items()}
        print(f"\nbackup, median of {args.rounds}: unencrypted {median['plain']:.2f} s, age {median['age']:.2f} s "
              f"(ratio {median['age'] / median['plain']:.2f}); sizes {sizes['plain']:,} vs {sizes['age']:,} bytes "
              f"(+{sizes['age'] - sizes['plain']:,})")
        print(f"restore first pass (verify + decompress; + decrypt): {median['plain_restore_pass']:.2f} s vs "
              f"{median['age_restore_pass']:.2f} s (ratio {median['age_restore_pass'] / median['plain_restore_pass']:.2f})")
        print(machine_line())


if __name__ == "__main__":
    main()
