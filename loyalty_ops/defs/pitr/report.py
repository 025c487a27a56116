"""The PITR lines of the morning report, read from history: archive lag now and its maximum over the last 24 h
(``wal_archive_health``), the last base backup, and the last PITR drill with its RPO and RTO."""

import time
from typing import Optional

import dagster as dg

from loyalty_ops.defs.pitr.base_backup import BASE_BACKUP_KEY
from loyalty_ops.defs.pitr.drill import DRILL_KEY
from loyalty_ops.defs.pitr.health import HEALTH_KEY
from loyalty_ops.lib.formatting import human_bytes


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int):
    out = []
    for record in instance.fetch_materializations(key, limit=limit).records:
        mat = record.asset_materialization
        if mat is not None:
            out.append((record.timestamp, {k: getattr(v, "value", v) for k, v in mat.metadata.items()}))
    return out


def _age(ts: float, now: float) -> str:
    hours = (now - ts) / 3600
    return f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.1f} days ago"


def pitr_summary(instance: dg.DagsterInstance, now: Optional[float] = None) -> dict:
    """Numbers for the report's metadata: lag now and the 24 h max (None when never measured)."""
    now = now or time.time()
    health = _records(instance, HEALTH_KEY, 300)  # every 5 minutes: 288 a day
    day = [float(m.get("lag_s") or 0.0) for ts, m in health if ts >= now - 86400]
    return {
        "lag_now_s": float(health[0][1].get("lag_s") or 0.0) if health else None,
        "lag_max_24h_s": max(day) if day else None,
        "health": health[0] if health else None,
        "base_backup": (_records(instance, BASE_BACKUP_KEY, 1) or [None])[0],
        "drill": (_records(instance, DRILL_KEY, 1) or [None])[0],
    }


def pitr_markdown(summary: dict, now: Optional[float] = None) -> str:
    now = now or time.time()
    lines = ["", "## Point-in-time recovery", ""]
    if summary["health"] is None:
        lines.append("- Archive lag: never measured (wal_archive_health has not run; LOYALTY_PITR_ENABLED)")
    else:
        ts, meta = summary["health"]
        state = "healthy" if meta.get("healthy") else "**UNHEALTHY**: " + "; ".join(meta.get("problems") or [])
        lines.append(f"- Archive lag now: {summary['lag_now_s']:.0f} s (max last 24 h: {summary['lag_max_24h_s'] or 0:.0f} s, "
                     f"limit {float(meta.get('max_lag_s') or 0):.0f} s), {state}; measured {_age(ts, now)}")
    if summary["base_backup"] is None:
        lines.append("- Last base backup: never")
    else:
        ts, meta = summary["base_backup"]
        lines.append(f"- Last base backup: `{meta.get('backup_id')}` {_age(ts, now)}, {human_bytes(meta.get('bytes_in_bucket') or 0)} "
                     f"in the bucket, {float(meta.get('duration_s') or 0):.0f} s")
    if summary["drill"] is None:
        lines.append("- Last PITR drill: never")
    else:
        ts, meta = summary["drill"]
        verdict = "passed" if meta.get("passed") else f"**FAILED** at {meta.get('failed_step')}: {meta.get('message')}"
        lines.append(f"- Last PITR drill: {verdict} {_age(ts, now)}; RPO {float(meta.get('rpo_s') or 0):.1f} s, "
                     f"RTO {float(meta.get('rto_s') or 0):.1f} s")
    return "\n".join(lines) + "\n"
