"""A local S3 endpoint: moto's server mode on 127.0.0.1, a real HTTP server that boto3 talks to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from devstack.postgres_cluster import free_port

LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local-access-key", "AWS_SECRET_ACCESS_KEY": "local-secret-key", "AWS_REGION": "us-east-1"}


@dataclass
class LocalS3:
    port: int = 0
    _server: Optional[object] = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalS3":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self.port = self.port or free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint_url, **LOCAL_CREDENTIALS}

    def client(self, config=None):
        return local_s3_client(self.endpoint_url, config)


def local_s3_client(endpoint_url: str, config=None):
    """A boto3 S3 client for a local endpoint with the local credentials (``config``: a botocore Config)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=LOCAL_CREDENTIALS["AWS_REGION"],
        config=config,
    )
