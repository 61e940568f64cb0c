"""A real S3 API server on the loopback address for the object-store tests: moto's standalone
server (``moto.server``, a Werkzeug HTTP server speaking the S3 REST API) in a subprocess.

``S3Server`` starts it on a free port, waits until it answers, creates the bucket and holds
the credentials the tests hand the factory through the environment (never through a config):
a random secret per server, so a test can grep every file and log line for it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.servers import free_port


class S3Server:
    def __init__(self, bucket: str = "sphere-test", log_dir: Path | None = None):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.key_id = "AKIA" + secrets.token_hex(8).upper()
        self.secret = "s3cr3t-" + secrets.token_urlsafe(24)
        self.log = open(log_dir / "moto.log", "w") if log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start on {self.endpoint}")
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint, region="us-east-1", access_key=self.key_id,
                          secret_key=self.secret, allow_bucket_creation=True).create_dir(bucket)

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to use ``s3://<bucket>/...`` on this server."""
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, region="us-east-1", access_key=self.key_id, secret_key=self.secret)

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` of the bucket: key -> content."""
        import pyarrow.fs as pafs

        fs = self.filesystem()
        base = f"{self.bucket}/{prefix.strip('/')}".rstrip("/")
        out = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                with fs.open_input_stream(info.path) as f:
                    out[info.path] = f.read()
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def use_in_process(server: S3Server) -> dict:
    """Point this process's ``infra.fs`` at ``server`` (for flows run in-process); returns the
    environment it replaced, for ``restore``."""
    from infra.fs import reset_filesystems

    old = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    reset_filesystems()
    return old


def restore(old: dict) -> None:
    from infra.fs import reset_filesystems

    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_filesystems()
