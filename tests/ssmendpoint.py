"""TEST FIXTURE: a stand-in for the SSM API, for the calls moto does not implement
(put-compliance-items above all). It speaks the AWS JSON 1.1 protocol the AWS CLI sends
(POST, X-Amz-Target: AmazonSSM.<Operation>), judges every request by botocore's own SSM
model (tests/ssmmodel.py: required members, enums, lengths, patterns), answers a bad one
as SSM would (400, ValidationException naming what is wrong) and records each, judged,
as one JSON line: {"operation", "body", "violations"}.

    python -m tests.ssmendpoint ADDRESS PORT RECORD"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ssmmodel import operation_input, violations


def judge(target: str, body: bytes) -> tuple[str, Any, list[str]]:
    service, _, operation = target.partition(".")
    if service != "AmazonSSM" or not operation:
        return operation or target, None, [f"X-Amz-Target {target!r} is not an SSM operation"]
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        return operation, None, [f"not JSON: {exc}"]
    try:
        shape = operation_input(operation)
    except Exception as exc:  # botocore's OperationNotFoundError and kin
        return operation, data, [f"no such operation: {exc}"]
    return operation, data, violations(shape, data)


class Handler(BaseHTTPRequestHandler):
    record = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        operation, data, found = judge(self.headers.get("X-Amz-Target") or "", self.rfile.read(length))
        with open(self.record, "a") as out:
            out.write(json.dumps({"operation": operation, "body": data, "violations": found}) + "\n")
        answer = {"__type": "ValidationException", "message": "; ".join(found)} if found else {}
        payload = json.dumps(answer).encode()
        self.send_response(400 if found else 200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    address, port, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.record = record
    ThreadingHTTPServer((address, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
