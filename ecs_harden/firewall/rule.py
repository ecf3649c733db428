"""Rule: one iptables rule as data, parsed from the `iptables -S` / iptables-save form."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Option:
    name: str  # without the leading dashes
    values: tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True)
class Match:
    module: str
    options: tuple[Option, ...] = ()


@dataclass(frozen=True)
class Neg:
    """A value with iptables' `!` in front or not."""

    value: str
    negated: bool = False


@dataclass(frozen=True)
class Rule:
    chain: str
    args: tuple[str, ...]  # everything after `-A CHAIN`, as iptables prints it
    src: Neg | None = None
    dst: Neg | None = None
    in_iface: Neg | None = None
    out_iface: Neg | None = None
    proto: Neg | None = None
    matches: tuple[Match, ...] = ()
    target: str | None = None
    goto: bool = False
    target_args: tuple[str, ...] = ()
    # Top-level options the evaluator does not model (-f, ...): they make a match uncertain.
    unknown: tuple[str, ...] = field(default=())
    # The line as printed, for a rule the parser could not read (see unreadable()).
    raw: str | None = None

    def text(self) -> str:
        if self.raw is not None:
            return self.raw
        return " ".join(["-A", self.chain, *(_quote(a) for a in self.args)])

    @property
    def unreadable(self) -> bool:
        return self.target == UNREADABLE

    def has_comment(self, comment: str) -> bool:
        return any(
            m.module == "comment" and any(o.name == "comment" and o.values == (comment,) for o in m.options)
            for m in self.matches
        )


# The target of a rule whose line could not be read: it "may accept" (firewall.evaluate).
UNREADABLE = "?unreadable"
MAX_CONTINUATION = 300  # a comment is at most 256 bytes, so at most that many newlines


class Unreadable(ValueError):
    """A line that is not in the form iptables prints."""


def unreadable(chain: str, line: str) -> Rule:
    """A rule ecs-harden cannot read: matches maybe, and may accept. Never a crash, never
    taken for a copy of the block, never deleted."""
    shown = line if len(line) <= 200 else line[:200] + "..."
    return Rule(chain=chain, args=(), unknown=("unreadable",), target=UNREADABLE, raw=shown)


def tokenize(text: str) -> list[str]:
    """Split a rule as iptables prints it (xtables_save_string): words separated by spaces;
    a word in double quotes may hold anything, with a backslash before `\\`, `"` and `'`
    (iptables escapes all three). Unreadable for an unterminated quote, or a quote or
    backslash in an unquoted word (iptables would have quoted it)."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if c == '"':
            i += 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise Unreadable("unterminated quote")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    out.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    out.append(c)
                    i += 1
            if i < n and text[i] not in " \t":
                raise Unreadable("text right after a closing quote")
            tokens.append("".join(out))
            continue
        j = i
        while j < n and text[j] not in " \t":
            if text[j] in "\"'\\":
                raise Unreadable("a quote or backslash in an unquoted word")
            j += 1
        tokens.append(text[i:j])
        i = j
    return tokens


def _quote(token: str) -> str:
    if token and all(c.isalnum() or c in "-_./:,+=!@%" for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def quote_args(args: Sequence[str]) -> str:
    """Tokens as iptables-restore reads them (double quotes around anything unusual)."""
    return " ".join(_quote(a) for a in args)


_TOP = {
    "-s": "src", "--source": "src",
    "-d": "dst", "--destination": "dst",
    "-i": "in_iface", "--in-interface": "in_iface",
    "-o": "out_iface", "--out-interface": "out_iface",
    "-p": "proto", "--protocol": "proto",
}


def parse_line(line: str) -> Rule | None:
    """Parse an `-A CHAIN ...` line; other lines (-P, -N, comments) give None. A line
    that starts so but cannot be read is an unreadable() rule, never an exception."""
    words = line.split(None, 2)
    if len(words) < 2 or words[0] != "-A":
        return None
    try:
        tokens = tokenize(line)
        return parse_args(tokens[1], tokens[2:])
    except (Unreadable, IndexError):
        return unreadable(words[1], line.rstrip("\r\n"))


def parse_args(chain: str, args: Sequence[str]) -> Rule:
    fields: dict[str, Neg] = {}
    matches: list[Match] = []
    current: tuple[str, list[Option]] | None = None
    target: str | None = None
    goto = False
    target_args: list[str] = []
    unknown: list[str] = []
    negate = False
    i = 0
    n = len(args)

    def close_match() -> None:
        nonlocal current
        if current is not None:
            matches.append(Match(current[0], tuple(current[1])))
            current = None

    while i < n:
        tok = args[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if target is not None:
            target_args.append(tok)
            i += 1
            continue
        if tok in _TOP and i + 1 < n:
            close_match()
            fields[_TOP[tok]] = Neg(args[i + 1], negate)
            i += 2
        elif tok in ("-m", "--match") and i + 1 < n:
            close_match()
            current = (args[i + 1], [])
            i += 2
        elif tok in ("-j", "--jump", "-g", "--goto") and i + 1 < n:
            close_match()
            target = args[i + 1]
            goto = tok in ("-g", "--goto")
            i += 2
        elif tok.startswith("--") and current is not None:
            values: list[str] = []
            i += 1
            while i < n and not args[i].startswith("-") and args[i] != "!":
                values.append(args[i])
                i += 1
            # `--comment` and friends may carry values that start with '-'.
            if not values and i < n and tok == "--comment":
                values.append(args[i])
                i += 1
            current[1].append(Option(tok[2:], tuple(values), negate))
        else:
            close_match()
            unknown.append(("! " if negate else "") + tok)
            i += 1
        negate = False
    close_match()
    return Rule(
        chain=chain,
        args=tuple(args),
        src=fields.get("src"),
        dst=fields.get("dst"),
        in_iface=fields.get("in_iface"),
        out_iface=fields.get("out_iface"),
        proto=fields.get("proto"),
        matches=tuple(matches),
        target=target,
        goto=goto,
        target_args=tuple(target_args),
        unknown=tuple(unknown),
    )


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None  # built-in chains only
    rules: tuple[Rule, ...]


def rule_lines(text: str) -> list[str]:
    """The lines of an `iptables -S` listing, a rule whose comment holds newlines (iptables
    prints them as they are) joined back into one."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("-A "):
            joined, j = line, i
            # Only a line with a quote can leave one open (most rules, Docker's all, have none).
            while '"' in joined and _open_quote(joined) and j < len(lines) and j - i < MAX_CONTINUATION:
                joined += "\n" + lines[j]
                j += 1
            if j > i and not _open_quote(joined):
                line, i = joined, j
        out.append(line)
    return out


def _open_quote(text: str) -> bool:
    try:
        tokenize(text)
    except Unreadable as exc:
        return str(exc) == "unterminated quote"
    return False


def parse_chain_listing(name: str, text: str) -> Chain:
    """`iptables -S NAME` output to a Chain."""
    policy: str | None = None
    rules: list[Rule] = []
    for line in rule_lines(text):
        if line.startswith("-P "):
            parts = line.split()
            if len(parts) >= 3 and parts[1] == name:
                policy = parts[2]
        elif line.startswith("-A "):
            rule = parse_line(line)
            if rule is not None and rule.chain == name:
                rules.append(rule)
    return Chain(name, policy, tuple(rules))


def network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)
