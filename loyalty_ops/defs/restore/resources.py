"""The restore domain's own settings (resource key ``restore_settings``), built from the validated settings."""

import dataclasses
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops.defs.settings import LoyaltySettings, secret_ref, tool_base_environment
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.restore.placement import PLACEMENTS, DrillPlacement
from loyalty_ops.lib.restore.plan import DRILL_EVERY_ENV, RestoreConfigError, parse_drill_every


class RestoreSettings(dg.ConfigurableResource):
    """How often and where the restore drill runs, how parallel it is, and where restores put temporary files."""

    drill_every_n_backups: str = Field(
        default="1",
        description=f"Drill every Nth backup ({DRILL_EVERY_ENV}): 1 = every backup (default), 7 = every seventh, 0 = never.",
    )
    drill_jobs: int = Field(default=2, description="pg_restore -j for the drill (LOYALTY_DRILL_JOBS); 1 streams without a temporary file.")
    work_dir: Optional[str] = Field(
        default=None,
        description="Directory for downloads and the decompressed archive (LOYALTY_RESTORE_WORK_DIR); default: "
        "the backup directory. Needs room for the uncompressed archive.",
    )
    tmp_dir: Optional[str] = Field(
        default=None,
        description="Directory for the decompressed archive only (LOYALTY_RESTORE_TMP_DIR); default: work_dir.",
    )
    drill_placement: str = Field(
        default="production",
        description="Where the drill restores (LOYALTY_DRILL_PLACEMENT): production, server (drill_host) or scratch "
        "(a PostgreSQL of the backup's version started on this machine for the drill).",
    )
    drill_host: Optional[str] = Field(default=None, description="The drill server's host (LOYALTY_DRILL_HOST).")
    drill_port: Optional[int] = Field(default=None, description="The drill server's port (LOYALTY_DRILL_PORT).")
    drill_user: Optional[str] = Field(default=None, description="Role on the drill server (LOYALTY_DRILL_USER).")
    drill_password: Optional[str] = Field(
        default=None, description="Password of drill_user (LOYALTY_DRILL_PASSWORD); read through EnvVar."
    )
    drill_sslmode: Optional[str] = Field(default=None, description="libpq sslmode for the drill server (LOYALTY_DRILL_SSLMODE).")
    drill_scratch_dir: Optional[str] = Field(
        default=None, description="Parent directory of the scratch server (LOYALTY_DRILL_SCRATCH_DIR); default: the system's temp dir."
    )

    def every_n(self) -> int:
        try:
            return parse_drill_every(self.drill_every_n_backups)
        except RestoreConfigError as exc:
            raise dg.Failure(str(exc)) from None

    def placement(self, postgres: PostgresTarget) -> DrillPlacement:
        """Where the drill restores. The drill server shares production's other libpq settings (passfile,
        TLS files, connect timeout); its host, port, user, password and sslmode are its own."""
        kind = self.drill_placement if self.drill_host is None or self.drill_placement != "production" else "server"
        if kind not in PLACEMENTS:
            raise dg.Failure(f"drill_placement must be one of {', '.join(PLACEMENTS)}, got {kind!r} (LOYALTY_DRILL_PLACEMENT)")
        production = postgres.spec()
        server: Optional[ConnectionSpec] = None
        if kind == "server":
            if not self.drill_host:
                raise dg.Failure("drill placement 'server' needs LOYALTY_DRILL_HOST, e.g. LOYALTY_DRILL_HOST=staging-db.internal")
            server = dataclasses.replace(
                production,
                host=self.drill_host,
                port=self.drill_port,
                user=self.drill_user or production.user,
                password=self.drill_password,
                sslmode=self.drill_sslmode or production.sslmode,
                dbname="postgres",
            )
        return DrillPlacement(
            kind=kind,
            server=server,
            scratch_dir=Path(self.drill_scratch_dir).expanduser().resolve() if self.drill_scratch_dir else None,
            bin_dir=postgres.pg_bin_dir,
            tool_env=tool_base_environment(),
        )


def restore_settings(settings: LoyaltySettings) -> RestoreSettings:
    restore = settings.restore
    values = restore.model_dump(exclude_none=True, exclude={"drill_password", "drill_placement"})
    values["drill_placement"] = restore.placement
    password = secret_ref("LOYALTY_DRILL_PASSWORD", restore.drill_password)
    if password is not None:
        values["drill_password"] = password
    return RestoreSettings(**values)
