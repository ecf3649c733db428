"""Rules nobody's parser foresaw, as someone with NET_ADMIN might write them (unit and lab tests)."""

from __future__ import annotations


def mark_tree(levels: int, width: int, leaf: str = "-d 169.254.169.254/32 -j ACCEPT") -> tuple[list[str], list[str]]:
    """Chains T, T0, T00, ...: `levels` deep, `width` mark-matching jumps each (every one may
    match, so every path must be explored), the leaves accepting IMDS. The chain names and
    the `-A` lines (with FORWARD's jump into the tree first)."""
    chains: list[str] = []
    rules = ["-A FORWARD -m mark --mark 0x1 -j T"]

    def chain(name: str, depth: int) -> None:
        chains.append(name)
        for i in range(width):
            if depth == levels:
                rules.append(f"-A {name} -m mark --mark 0x{i + 1} {leaf}")
            else:
                rules.append(f"-A {name} -m mark --mark 0x{i + 1} -j {name}{i}")
                chain(f"{name}{i}", depth + 1)

    chain("T", 1)
    return chains, rules


def per_container(n: int, chain: str) -> tuple[list[str], list[str]]:
    """n per-container rules as Docker writes them: a port ACCEPT in filter `chain` and its
    DNAT in nat `chain` (the `-A` lines of each table)."""
    filt, nat = [], []
    for i in range(n):
        ip = f"172.{17 + i // 65536 % 14}.{i // 256 % 256}.{i % 256 or 1}"
        port = 1024 + i % 60000
        filt.append(f"-A {chain} -d {ip}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {port} -j ACCEPT")
        nat.append(f"-A {chain} ! -i docker0 -p tcp -m tcp --dport {port} -j DNAT --to-destination {ip}:{port}")
    return filt, nat


def bulk_rules(n: int, chain: str = "LAB-BULK") -> str:
    """An iptables-restore --noflush text of n Docker-shaped per-container rules in chains
    of their own, jumped to as Docker jumps to DOCKER: a large host's table beside a real
    Docker's."""
    filt, nat = per_container(n, chain)
    return "\n".join(["*filter", f":{chain} - [0:0]", f"-A FORWARD -o docker0 -j {chain}", *filt, "COMMIT",
                      "*nat", f":{chain} - [0:0]", *nat, "COMMIT"]) + "\n"
