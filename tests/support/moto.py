"""moto's standalone S3 server on loopback (a random port) for the storage tests: one process for
the test session, a fresh bucket per test."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.loopback import stop_process
from tests.support.waiting import wait_until

RUNNING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
REGION = "eu-west-1"
# Dummy credentials, the standard AWS way (environment): sluis.toml never holds any.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sluis-test", "AWS_SECRET_ACCESS_KEY": "sluis-test-secret",
               "AWS_EC2_METADATA_DISABLED": "true"}


class MotoServer:
    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.log: Any = None

    def start(self, timeout: float = 30) -> MotoServer:
        """Start on a port the server picks; its output goes to a file (a pipe would fill up)."""
        self.log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **CREDENTIALS})

        def started() -> str | None:
            match = RUNNING.search(Path(self.log.name).read_text(errors="replace"))
            if match is None and self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited:\n{Path(self.log.name).read_text()}")
            return match.group(1) if match else None

        try:
            port = wait_until(started, "moto's S3 server to listen", timeout)
        except BaseException:
            self.stop()
            raise
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        stop_process(self.process)
        if self.log is not None:
            self.log.close()
            os.unlink(self.log.name)
            self.log = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = "sluis-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name


class Bucket:
    """One test's bucket, with what a sluis.toml needs to use it and what a test inspects."""

    def __init__(self, moto: MotoServer, prefix: str = "sluis/") -> None:
        self.moto = moto
        self.name = moto.new_bucket()
        self.prefix = prefix
        self.client = moto.client()

    def storage_settings(self, **extra: Any) -> dict[str, Any]:
        """The [storage] section for sluis.toml."""
        return {"backend": "s3", "bucket": self.name, "prefix": self.prefix, "endpoint_url": self.moto.endpoint,
                "region": REGION, **extra}

    def objects(self) -> list[str]:
        response = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in response.get("Contents", []))

    def multipart_uploads(self) -> list[str]:
        response = self.client.list_multipart_uploads(Bucket=self.name)
        return sorted(item["Key"] for item in response.get("Uploads", []))

    def uploaded_parts(self) -> int:
        """Parts uploaded so far, over every multipart upload in progress."""
        uploads = self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return sum(len(self.client.list_parts(Bucket=self.name, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
                   for u in uploads)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
