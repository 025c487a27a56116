"""Headless Chromium for the UI tests: Debian's chromium driven by Playwright (never `playwright install`).

CI runs on a fresh machine, so a missing browser is installed with apt-get (about 30 s) instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

# Flags measured to work on this kind of machine (docs: ../shared/MACHINE-NOTES.md, "Browser tests").
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def ensure_chromium(timeout_s: float = 600.0) -> Path:
    """Return the chromium binary, installing Debian's package first when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get is not available: install chromium by hand")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(prefix + [apt, *args], env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM
