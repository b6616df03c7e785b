"""A real S3 protocol peer for tests: moto's standalone S3 server (``moto.server.ThreadedMotoServer``).

It is an HTTP server speaking the S3 REST protocol (SigV4-signed requests, XML bodies, ranged GETs, multipart
uploads, ``x-amz-checksum-*`` and ``x-amz-meta-*`` headers) on a TCP port; the node and the tests reach it with
boto3 over the network exactly as they would reach MinIO or AWS, not through an in-process mock of boto3.
MinIO itself can't be installed here (only PyPI, Debian and npm are reachable). What moto does not do: it
accepts an upload whose ``x-amz-checksum-sha256`` is wrong (AWS and MinIO refuse it), and it closes the
connection after every response, so each request pays a TCP handshake.

Objects live in the test process's memory and survive :meth:`S3Peer.stop` / :meth:`S3Peer.start` on the same
port: stopping the server is "S3 is down", starting it again "S3 is back", with everything it had.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port

ACCESS_KEY = "interop-test"
SECRET_KEY = "interop-test-secret"


@dataclass
class S3Peer:
    """moto's S3 server on 127.0.0.1:``port``."""

    port: int = field(default_factory=free_port)
    _server: Any = None
    _client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Peer:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self) -> Any:
        """A plain boto3 client of the peer (the tests' own view of the bucket)."""
        import boto3
        from botocore.config import Config

        if self._client is None:
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
                                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        return self._client

    def new_bucket(self) -> str:
        name = f"interop-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """``storage.s3`` for this peer (``S3Settings(**...)``)."""
        return {"endpoint_url": self.endpoint_url, "bucket": bucket, "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY, "addressing_style": "path", "region": "us-east-1", **extra}

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """The same as ``INTEROP_*`` variables for ``interop serve``."""
        values = {"BACKEND": "s3"} | {f"S3__{k.upper()}": str(v) for k, v in self.settings(bucket, **extra).items()}
        return {f"INTEROP_STORAGE__{k}": v for k, v in values.items()}


class FlakyProxy:
    """An HTTP proxy in front of the peer that answers the first ``failures`` requests with ``503 SlowDown``
    (S3's throttling reply) and forwards the rest: the retry path of a real S3 under load."""

    def __init__(self, upstream_port: int, failures: int) -> None:
        self.failures = failures
        self.requests = 0
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests += 1
                if proxy.requests <= proxy.failures:
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                               b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                rsp = conn.getresponse()
                data = rsp.read()
                self.send_response(rsp.status)
                for k, v in rsp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD response's length is the object's, not its (empty) body's.
                self.send_header("Content-Length", rsp.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
