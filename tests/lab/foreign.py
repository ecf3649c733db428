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
