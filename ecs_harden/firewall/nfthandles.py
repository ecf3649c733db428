"""Rules of an nf_tables chain by handle: list them, delete them only if nothing changed.

iptables-nft deletes by position or by re-serialized text; neither is safe for someone
else's odd rule (a comment holding `'` is printed as `\\'` and cannot be given back), and
a position can move when Docker inserts a rule. The kernel names every rule by a handle
that never moves. This module lists a chain's handles in order (NFT_MSG_GETRULE dump)
and deletes by handle in a batch carrying the generation it read (NFNL_BATCH_GENID):
the kernel refuses the whole batch with ERESTART if anyone committed in between.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

from ecs_harden.firewall.netlink import (
    NFNL_SUBSYS_NFTABLES,
    NLM_F_REQUEST,
    attributes,
    commit,
    dump,
    encode_attr,
    message,
    open_socket,
)

NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_DELRULE = 8
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFNL_MSG_BATCH_BEGIN = 16
NFNL_MSG_BATCH_END = 17
NFNL_BATCH_GENID = 1
NLM_F_ACK = 4
NFPROTO = {4: 2, 6: 10}  # our family -> NFPROTO_IPV4 / NFPROTO_IPV6
ERESTART = 85


class Changed(OSError):
    """The ruleset changed between the read and the delete: nothing was deleted."""


def handles(family: int, table: str, chain: str) -> list[int]:
    """The handles of the chain's rules, in the chain's order (as iptables -S lists them)."""
    body = (encode_attr(NFTA_RULE_TABLE, table.encode() + b"\0")
            + encode_attr(NFTA_RULE_CHAIN, chain.encode() + b"\0"))
    out: list[int] = []
    with open_socket() as sock:
        try:
            answers = dump(sock, NFT_MSG_GETRULE, NFPROTO[family], body)
        except OSError as exc:
            raise OSError(exc.errno, f"listing {table} {chain}: {exc.strerror}") from None
    for rtype, rbody in answers:
        if rtype & 0xFF != NFT_MSG_NEWRULE:
            continue
        attrs = attributes(rbody)
        if attrs.get(NFTA_RULE_CHAIN, b"").rstrip(b"\0") != chain.encode():
            continue  # a kernel that ignores the dump filter
        if attrs.get(NFTA_RULE_TABLE, b"").rstrip(b"\0") != table.encode():
            continue
        handle = attrs.get(NFTA_RULE_HANDLE)
        if handle is None or len(handle) != 8:
            raise OSError(errno.EPROTO, "a rule without a handle")
        out.append(int(struct.unpack(">Q", handle)[0]))
    return out


def delete(family: int, table: str, chain: str, rule_handles: Sequence[int], generation: int) -> None:
    """Delete the rules, all or none, only if the ruleset is still at generation."""
    if not rule_handles:
        return
    nfproto = NFPROTO[family]
    seq = 1
    parts = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0,
                  encode_attr(NFNL_BATCH_GENID, struct.pack(">I", generation & 0xFFFFFFFF)),
                  res_id=NFNL_SUBSYS_NFTABLES)]
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE
    for handle in rule_handles:
        seq += 1
        body = (encode_attr(NFTA_RULE_TABLE, table.encode() + b"\0")
                + encode_attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
                + encode_attr(NFTA_RULE_HANDLE, struct.pack(">Q", handle)))
        parts.append(message(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, nfproto, body))
    seq += 1
    parts.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, b"", res_id=NFNL_SUBSYS_NFTABLES))
    try:
        commit(b"".join(parts), len(rule_handles), f"deleting from {table} {chain}")
    except OSError as exc:
        if exc.errno == ERESTART:
            raise Changed(ERESTART, "the ruleset changed since it was read; nothing deleted") from None
        raise
