"""EnvFile: ecs.config as bytes, read the way ecs-init reads it, edited line by line.

ecs-init builds the agent container's environment by splitting the file on
newlines, trimming each line and splitting at the first '='; there is no comment
or quote handling and the last duplicate wins. Everything here follows that, on
bytes, so that lines we do not manage (secrets, non-UTF-8 text) are never decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    body: bytes  # without the line ending
    ending: bytes  # b"\n", b"\r\n" or b"" (last line without newline)

    @property
    def key(self) -> str | None:
        """The key ecs-init sees on this line, or None when there is none."""
        text = self.body.strip()
        if b"=" not in text:
            return None
        return text.split(b"=", 1)[0].decode("latin-1")

    @property
    def value(self) -> bytes:
        """The value ecs-init hands the agent: everything after the first '=' of the trimmed line."""
        text = self.body.strip()
        return text.split(b"=", 1)[1] if b"=" in text else b""

    def is_key(self, name: str) -> bool:
        """Whether this line sets name, also when a stray space hides it from ecs-init."""
        key = self.key
        return key is not None and key.strip() == name


@dataclass(frozen=True)
class EnvFile:
    lines: tuple[Line, ...]

    @classmethod
    def parse(cls, data: bytes) -> EnvFile:
        lines: list[Line] = []
        pos = 0
        number = 0
        while pos < len(data):
            number += 1
            nl = data.find(b"\n", pos)
            if nl < 0:
                lines.append(Line(number, data[pos:], b""))
                break
            raw = data[pos:nl]
            if raw.endswith(b"\r"):
                lines.append(Line(number, raw[:-1], b"\r\n"))
            else:
                lines.append(Line(number, raw, b"\n"))
            pos = nl + 1
        return cls(tuple(lines))

    def render(self) -> bytes:
        return b"".join(line.body + line.ending for line in self.lines)

    def lines_of(self, name: str) -> list[Line]:
        return [line for line in self.lines if line.is_key(name)]

    def environment(self) -> dict[str, bytes]:
        """What the agent container receives: last duplicate wins."""
        env: dict[str, bytes] = {}
        for line in self.lines:
            key = line.key
            if key is not None:
                env[key] = line.value
        return env

    def newline(self) -> bytes:
        """The file's own line ending, for lines we add."""
        crlf = sum(1 for line in self.lines if line.ending == b"\r\n")
        lf = sum(1 for line in self.lines if line.ending == b"\n")
        return b"\r\n" if crlf > lf else b"\n"

    def with_settings(self, settings: Mapping[str, str | None]) -> EnvFile:
        """One `KEY=value` line per managed key (none for None); every other line untouched.

        A key already holding exactly its value on a single line keeps that line as
        it is. Otherwise the first line of the key is rewritten in place and the
        others are dropped; a missing key is appended at the end.
        """
        wanted = {k: v.encode() if v is not None else None for k, v in settings.items()}
        out: list[Line] = []
        placed: set[str] = set()
        for line in self.lines:
            name = next((k for k in wanted if line.is_key(k)), None)
            if name is None:
                out.append(line)
                continue
            value = wanted[name]
            if value is None or name in placed:
                continue
            placed.add(name)
            if len(self.lines_of(name)) == 1 and line.key == name and line.value == value:
                out.append(line)
            else:
                out.append(Line(line.number, name.encode() + b"=" + value, line.ending))
        missing = [(k, v) for k, v in wanted.items() if v is not None and k not in placed]
        if missing:
            nl = self.newline()
            if out and out[-1].ending == b"":
                last = out[-1]
                if last.body:
                    # A body ending in CR would merge with an LF into one CRLF ending.
                    ending = b"\r\n" if last.body.endswith(b"\r") else nl
                    out[-1] = Line(last.number, last.body, ending)
                else:
                    out.pop()
            for key, value in missing:
                assert value is not None
                out.append(Line(0, key.encode() + b"=" + value, nl))
        return EnvFile(tuple(out))
