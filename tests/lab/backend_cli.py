"""Drive one firewall backend from inside a sandbox: the contract tests' hands.

    python -m tests.lab.backend_cli BACKEND FAMILY read CHAIN...   -> JSON {chain: [rule text]}
    python -m tests.lab.backend_cli BACKEND FAMILY commit          <- JSON ops on stdin
        (new, insert, delete_at: by position, of the rule read there now or of "expect")
"""

from __future__ import annotations

import json
import sys

from ecs_harden.firewall.backend import Backend, DeleteAt, Insert, NewChain, Op
from ecs_harden.firewall.libiptc import Libiptc
from ecs_harden.firewall.rule import parse_line
from ecs_harden.firewall.xtables_cli import XtablesCli


def make(name: str, family: int) -> Backend:
    return Libiptc(family) if name == "python-iptables" else XtablesCli(family)


def main(argv: list[str]) -> int:
    backend = make(argv[0], int(argv[1]))
    if argv[2] == "read":
        table, names = ("raw", argv[4:]) if argv[3:4] == ["--raw"] else ("filter", argv[3:])
        reader = backend.snapshot(table)
        out: dict[str, object] = {}
        for name in names:
            chain = reader(name)
            out[name] = None if chain is None else {
                "policy": chain.policy, "rules": [r.text() for r in chain.rules]
            }
        print(json.dumps(out))
        return 0
    ops: list[Op] = []
    for item in json.load(sys.stdin):
        kind, table = item["op"], item.get("table", "filter")
        if kind == "new":
            ops.append(NewChain(item["chain"], table))
        elif kind == "insert":
            ops.append(Insert(item["chain"], item["position"], tuple(item["args"]), table))
        else:  # delete_at: the rule read at that position now, or the one it is expected to be
            rule = parse_line(item["expect"]) if "expect" in item else backend.snapshot(table)(
                item["chain"]).rules[item["position"] - 1]  # type: ignore[union-attr]
            assert rule is not None
            ops.append(DeleteAt(item["chain"], item["position"], rule, table))
    backend.commit(ops)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
