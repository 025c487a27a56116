"""Runs pg_dump, pg_restore and psql inside the database's container through the Docker API: the guide's
``docker exec loyalty-db-prod pg_dump ...``, without a docker CLI and without PostgreSQL tools on the host.

How one tool runs:

* ``exec_create`` in the named container with ``/bin/sh -c`` and a fixed script (no values in it): the
  script reads the password from the first line of standard input, exports it as ``PGPASSWORD`` and
  ``exec``s the tool with the caller's arguments. Non-secret libpq settings (``PGHOST``, ``PGPORT``,
  ``PGUSER``, ``PGDATABASE``, ...) go in the exec's environment. So the password is never in argv, never in
  the exec's stored configuration (which ``docker inspect``/the engine's state keeps), only in the tool
  process's own environment inside the container, exactly as with the host runner.
* ``exec_start`` with the connection hijacked: the stream protocol (frames, stdin, exit code, kill) is
  ``loyalty_ops.lib.pg.docker_exec_stream``; to the caller an exec looks like a host process.

Inside the container the tool usually talks to the container's own server. By default the runner uses
the connection settings as given (right when the server listens on the same address inside and out,
e.g. host networking, or ``PGHOST=localhost`` and the published port equals the container port). For the
guide's compose deployment, where the host reaches the database on a published port but inside the
container it is ``localhost:5432``, set ``exec_host``/``exec_port`` (or ``LOYALTY_DB_CONTAINER_PGHOST`` /
``LOYALTY_DB_CONTAINER_PGPORT``); ``exec_host="local"`` unsets ``PGHOST`` so the tool uses the container's
Unix socket.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Optional, Sequence

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.docker_exec_stream import EXEC_MARKER_ENV, ExecStdin, ExecStream, start_exec_stream
from loyalty_ops.lib.pg.tools import KNOWN_TOOLS, ToolError

LOCAL_SOCKET = "local"

# $1 is the tool; the rest are its arguments. The password line is read byte by byte by `read`, so
# whatever follows it on stdin (a restore's archive) reaches the tool untouched.
_WRAPPER = (
    'IFS= read -r PGPASSWORD || true; '
    'if [ -n "$PGPASSWORD" ]; then export PGPASSWORD; else unset PGPASSWORD; fi; '
    'exec "$@"'
)


# pg_restore options whose value is the next argument (so that argument is not the archive).
_PG_RESTORE_VALUE_OPTIONS = {
    "-d", "--dbname", "-f", "--file", "-F", "--format", "-I", "--index", "-j", "--jobs", "-L", "--use-list",
    "-n", "--schema", "-N", "--exclude-schema", "-P", "--function", "-S", "--superuser", "-t", "--table",
    "-T", "--trigger", "-h", "--host", "-p", "--port", "-U", "--username", "--role",
}


def host_archive_argument(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``pg_restore [options] FILE`` where FILE is on this host: the container cannot open it, so it is
    streamed to pg_restore's stdin instead. ``--jobs`` is dropped: pg_restore -j refuses standard input.
    Returns (host file or None, arguments to run)."""
    args = list(args)
    if not args:
        return None, args
    candidate = args[-1]
    if candidate.startswith("-") or (len(args) > 1 and args[-2] in _PG_RESTORE_VALUE_OPTIONS):
        return None, args
    if not os.path.isfile(candidate):
        return None, args
    kept: list[str] = []
    skip_next = False
    for arg in args[:-1]:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-j", "--jobs"):
            skip_next = True
            continue
        if arg.startswith("--jobs=") or (arg.startswith("-j") and arg[2:].isdigit()):
            continue
        kept.append(arg)
    return candidate, kept


def _feed_file(path: str, sink: ExecStdin) -> threading.Thread:
    def _run() -> None:
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1024 * 1024), b""):
                    sink.write(block)
        except OSError:
            pass  # the tool stopped reading or was killed; its exit code says why
        finally:
            sink.close()

    thread = threading.Thread(target=_run, name="exec-stdin-feeder", daemon=True)
    thread.start()
    return thread


class ContainerError(ToolError):
    """The container or the engine is not usable (not found, not running, engine unreachable)."""


def _engine_error(exc: BaseException, docker_host: Optional[str]) -> ContainerError:
    where = docker_host or "the default socket /var/run/docker.sock"
    return ContainerError(
        f"cannot reach the Docker engine at {where}: {exc}. Check that the engine runs and DOCKER_HOST points at it."
    )


class DockerExecToolRunner:
    """Starts PostgreSQL tools with ``exec`` in a running container (the guide's ``docker exec``).

    File paths in a tool's arguments name files *inside the container*. The one host file callers pass,
    ``pg_restore [--jobs=N] FILE``, is streamed through stdin instead (single-process restore: pg_restore
    -j cannot read stdin); callers that care can test ``host_paths_visible``.
    """

    host_paths_visible = False

    def __init__(
        self,
        spec: ConnectionSpec,
        container: str,
        docker_host: Optional[str] = None,
        *,
        exec_host: Optional[str] = None,
        exec_port: Optional[int] = None,
        exec_user: Optional[str] = None,
        client: Any = None,
    ):
        if not container:
            raise ContainerError("no container named: set LOYALTY_DB_CONTAINER, e.g. loyalty-db-prod")
        self.spec = spec
        self.container = container
        # Plain values from the settings (DOCKER_HOST, LOYALTY_DB_CONTAINER_PGHOST/_PGPORT/_USER); None: the
        # engine's default socket, and the spec's host, port and the image's user inside the container.
        self.docker_host = docker_host or None
        self.exec_host = exec_host or None
        self.exec_port = exec_port
        self.exec_user = exec_user or None
        self._client = client
        self.description = f"docker exec in container {container}" + (f" via {self.docker_host}" if self.docker_host else "")

    # -- engine and container ----------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import docker

            try:
                if self.docker_host:
                    self._client = docker.DockerClient(base_url=self.docker_host, timeout=60)
                else:
                    self._client = docker.from_env(timeout=60)
            except Exception as exc:  # DockerException when no engine answers
                raise _engine_error(exc, self.docker_host) from None
        return self._client

    def _running_container(self):
        import docker.errors
        import requests

        client = self.client()
        try:
            container = client.containers.get(self.container)
        except docker.errors.NotFound:
            raise ContainerError(
                f"container {self.container!r} not found on {self.docker_host or 'the Docker engine'}: check "
                "LOYALTY_DB_CONTAINER (docker ps --format '{{.Names}}' lists the names)"
            ) from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise _engine_error(exc, self.docker_host) from None
        if container.status != "running":
            state = container.attrs.get("State", {})
            raise ContainerError(
                f"container {self.container!r} is {container.status} (exit code {state.get('ExitCode')}), not running: "
                f"start it (docker-compose -f docker-compose.prod.yml up -d db) and retry"
            )
        return container

    def exec_password(self) -> Optional[str]:
        """The password sent on stdin: the configured one, else the host's passfile entry for the target."""
        return self.spec.password or self.spec.passfile_password()

    def exec_environment(self, database: Optional[str]) -> dict[str, str]:
        """The exec's environment: libpq settings without the password (that travels on stdin)."""
        env = self.spec.libpq_env()
        env.pop("PGPASSWORD", None)
        env.pop("PGPASSFILE", None)  # read on the host (exec_password); its path means nothing inside the container
        if self.exec_host == LOCAL_SOCKET:
            env.pop("PGHOST", None)
        elif self.exec_host:
            env["PGHOST"] = self.exec_host
        if self.exec_port:
            env["PGPORT"] = str(self.exec_port)
        if database:
            env["PGDATABASE"] = database
        return env

    # -- PgToolRunner --------------------------------------------------------------------------------
    def start(self, tool, args: Sequence[str], *, database=None, stdin=False, stdout=True) -> ExecStream:
        if tool not in KNOWN_TOOLS:
            raise ToolError(f"unknown PostgreSQL tool {tool!r}; expected one of {', '.join(KNOWN_TOOLS)}", tool=tool)
        host_file = None
        if tool == "pg_restore" and not stdin:
            host_file, args = host_archive_argument(args)
        stream = self._start_exec(tool, args, database=database, stdin=stdin or host_file is not None, stdout=stdout)
        if host_file is not None:
            stream.feeder = _feed_file(host_file, stream.stdin)  # type: ignore[arg-type]
            stream.stdin = None
        return stream

    def _start_exec(self, tool, args: Sequence[str], *, database=None, stdin=False, stdout=True) -> ExecStream:
        import docker.errors
        import requests

        container = self._running_container()
        api = self.client().api
        env = self.exec_environment(database)
        token = uuid.uuid4().hex
        env[EXEC_MARKER_ENV] = token
        try:
            created = api.exec_create(
                container.id,
                ["/bin/sh", "-c", _WRAPPER, "loyalty-ops-exec", tool, *args],
                stdout=True,  # always attached: an unattached stdout would leave the tool's writes nowhere
                stderr=True,
                stdin=True,  # the password line, then the caller's input if any
                tty=False,
                environment=env,
                user=self.exec_user or "",
            )
            stream = start_exec_stream(
                api, created["Id"], tool=tool, container=self.container, want_stdin=stdin, token=token
            )
        except docker.errors.NotFound:
            raise ContainerError(f"container {self.container!r} disappeared while starting {tool}") from None
        except docker.errors.APIError as exc:
            raise ContainerError(f"the engine refused to run {tool} in {self.container!r}: {exc.explanation or exc}") from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise _engine_error(exc, self.docker_host) from None
        # The wrapper prints nothing before this line: see docker_exec_stream on reading the raw socket.
        password_line = (self.exec_password() or "").replace("\n", "") + "\n"
        stream.send_first_input(password_line.encode(), more_input=stdin)
        if not stdout:
            stream.stdout = None
        return stream

    def tool_version(self, tool: str) -> str:
        from loyalty_ops.lib.pg.tools import run_tool

        result = run_tool(self, tool, ["--version"])
        return result.stdout.decode(errors="replace").strip()
