"""imds.v1's look at IMDS over real HTTP (a stand-in IMDS on loopback): IMDSv1 on or off,
and the ECS agent's task-credential namespaces (iam-ecs-N/) in the index, read with a
session token when IMDS wants one, as the agent reads them."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from ecs_harden.imds.v1 import SHOWN, Answer, ImdsV1Component, ask

TOKEN = "AQAEAtoken=="


class Imds(http.server.BaseHTTPRequestHandler):
    v1 = False
    index = b"ami-id\nhostname\niam/\ninstance-id\n"
    seen: list[tuple[str, str, str | None]] = []  # noqa: RUF012 - the test's record

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.seen.append(("PUT", self.path, self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")))
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._send(200 if ok else 400, TOKEN.encode() if ok else b"")

    def do_GET(self) -> None:
        token = self.headers.get("X-aws-ec2-metadata-token")
        self.seen.append(("GET", self.path, token))
        if not self.v1 and token != TOKEN:
            self._send(401, b"")
        elif self.path == "/latest/meta-data/":
            self._send(200, self.index)
        else:
            self._send(404, b"")


@pytest.fixture
def imds() -> Iterator[tuple[type[Imds], int]]:
    handler = type("Handler", (Imds,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_imdsv2_only_without_task_credentials(imds: tuple[type[Imds], int]) -> None:
    handler, port = imds
    assert ask("127.0.0.1", port=port) == Answer(401, ())
    assert handler.seen == [("GET", "/latest/meta-data/", None), ("PUT", "/latest/api/token", "60"),
                            ("GET", "/latest/meta-data/", TOKEN)]  # the index only, never a credential


def test_task_credentials_in_imds_are_named(imds: tuple[type[Imds], int]) -> None:
    handler, port = imds
    handler.index = b"ami-id\niam/\niam-ecs-2/\niam-ecs-1/\ninstance-id\n"
    answer = ask("127.0.0.1", port=port)
    assert answer == Answer(401, ("iam-ecs-1", "iam-ecs-2"))
    (f,) = ImdsV1Component("x", asker=lambda a: answer).inspect().findings
    assert f.status == "ok" and f.actual == "401 without a token; 2 iam-ecs namespace(s)"
    assert "IMDS holds ECS task credentials (iam-ecs-1, iam-ecs-2" in f.detail
    assert "every task's role" in f.detail


def test_imdsv1_on_with_task_credentials_warns_and_names_both(imds: tuple[type[Imds], int]) -> None:
    handler, port = imds
    handler.v1 = True
    handler.index = b"".join(b"iam-ecs-%d/\n" % i for i in range(SHOWN + 3))
    answer = ask("127.0.0.1", port=port)
    assert answer.status == 200 and answer.namespaces is not None and len(answer.namespaces) == SHOWN + 3
    (f,) = ImdsV1Component("x", asker=lambda a: answer).inspect().findings
    assert f.status == "warn" and "IMDSv1 is on" in f.detail and "and 3 more" in f.detail
    assert [s for s in handler.seen if s[0] == "PUT"] == []  # no token needed, none asked for


def test_a_hostile_index_is_bounded_and_only_printable_names_count(imds: tuple[type[Imds], int]) -> None:
    handler, port = imds
    handler.index = b"iam-ecs-1/\niam-ecs-\x1b[31m/\n" + b"x" * 1_000_000
    assert ask("127.0.0.1", port=port).namespaces == ("iam-ecs-1",)


def test_nothing_listening_is_no_answer() -> None:
    assert ask("127.0.0.1", timeout=0.5, port=9) == Answer(None)
