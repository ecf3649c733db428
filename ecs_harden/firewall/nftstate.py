"""What an `iptables -S CHAIN` listing on nf_tables is a function of, read over netlink.

iptables-nft prints a chain from the kernel's objects: the chain's rules (their
expressions, comments, handles) and the table's chains (a chain iptables cannot print
makes the table "incompatible"). `state()` dumps exactly those, in full, in this process
(NFT_MSG_GETCHAIN and NFT_MSG_GETRULE, one socket) and drops only what moves without
changing the listing: the packet and byte counters, and a chain's use count. Equal states give equal listings,
so the daemon's resync can read every byte of the chains it judges and start
`iptables -S` only for a chain whose state changed (a process per chain was most of an
idle daemon's CPU). A rule that refers to something else in the kernel (a set, a named
object) has no state here: its chain is always listed by iptables.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from ecs_harden.firewall.netlink import (
    NFNL_SUBSYS_NFTABLES,
    NFT_MSG_GETGEN,
    NFT_MSG_NEWGEN,
    NFTA_GEN_ID,
    NLM_F_REQUEST,
    attribute_list,
    dump,
    encode_attr,
    gen_attr,
    message,
    messages,
    open_socket,
)

NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_USE = 6  # references and rules: each chain's rules are keyed apart
NFTA_CHAIN_COUNTERS = 8
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFPROTO = {4: 2, 6: 10}
# Expressions whose meaning lives in another kernel object: a listing can change while
# the rule's bytes do not.
REFERS = {b"lookup", b"dynset", b"objref", b"flow_offload", b"connlimit"}


class Unknown(Exception):
    """This chain's listing cannot be keyed by its state (it refers elsewhere, or the
    answer was not what nf_tables sends)."""


def _dump(sock: socket.socket, mtype: int, family: int, body: bytes) -> list[bytes]:
    return [b for _, b in dump(sock, mtype, family, body, missing=True)]


def _generation(sock: socket.socket) -> int:
    sock.send(message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, 1, 0, b""))
    for rtype, rbody in messages(sock.recv(65536)):
        if rtype & 0xFF == NFT_MSG_NEWGEN:
            gen = gen_attr(rbody[4:], NFTA_GEN_ID)
            if gen is not None:
                return gen
    raise OSError(errno.EPROTO, "no generation in the answer to NFT_MSG_GETGEN")


def _chain(attrs: bytes) -> bytes:
    return b"".join(encode_attr(t, v) for t, v in attribute_list(attrs)
                    if t not in (NFTA_CHAIN_COUNTERS, NFTA_CHAIN_USE))


def _rule(body: bytes) -> bytes:
    """A rule's attributes as the kernel sent them, each counter expression emptied."""
    out = []
    for atype, value in attribute_list(body):
        if atype == NFTA_RULE_EXPRESSIONS:
            exprs = []
            for etype, elem in attribute_list(value):
                parts = dict(attribute_list(elem)) if etype == NFTA_LIST_ELEM else {}
                name = parts.get(NFTA_EXPR_NAME, b"").rstrip(b"\0")
                if name in REFERS:
                    raise Unknown(f"a rule refers to another object ({name.decode(errors='replace')})")
                exprs.append(encode_attr(etype, encode_attr(NFTA_EXPR_NAME, name))
                             if name == b"counter" else encode_attr(etype, elem))
            value = b"".join(exprs)
        out.append(encode_attr(atype, value))
    return b"".join(out)


def _named(bodies: Sequence[bytes], attr: int, value: bytes) -> list[bytes]:
    """The answers whose attribute equals value (a kernel may ignore the dump's filter)."""
    return [b for b in bodies if dict(attribute_list(b)).get(attr, b"").rstrip(b"\0") == value]


def states(family: int, table: str, chains: Sequence[str]) -> tuple[int, dict[str, bytes]]:
    """(generation, {chain: state}) read on one generation of the ruleset; a chain left out
    has no state (it does not exist, or refers elsewhere). OSError when nf_tables cannot
    be read, or changed while it was."""
    nfproto = NFPROTO[family]
    tname = table.encode()
    out: dict[str, bytes] = {}
    with open_socket(2.0) as sock:
        before = _generation(sock)
        table_chains = _named(_dump(sock, NFT_MSG_GETCHAIN, nfproto,
                                    encode_attr(NFTA_CHAIN_TABLE, tname + b"\0")), NFTA_CHAIN_TABLE, tname)
        if table_chains:
            shape = b"".join(_chain(c) for c in table_chains)
            for chain in chains:
                cname = chain.encode()
                body = (encode_attr(NFTA_RULE_TABLE, tname + b"\0")
                        + encode_attr(NFTA_RULE_CHAIN, cname + b"\0"))
                try:
                    rules = _named(_named(_dump(sock, NFT_MSG_GETRULE, nfproto, body),
                                          NFTA_RULE_CHAIN, cname), NFTA_RULE_TABLE, tname)
                    out[chain] = shape + b"\0rules\0" + b"".join(encode_attr(0, _rule(r)) for r in rules)
                except Unknown:
                    continue
        if _generation(sock) != before:
            raise OSError(errno.EAGAIN, "the ruleset changed while it was read")
    return before, out

