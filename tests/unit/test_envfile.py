"""EnvFile: ecs-init's reading of ecs.config, and edits that touch only managed lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ecs_harden.ecsconfig.envfile import EnvFile


def test_round_trip_keeps_every_byte() -> None:
    data = b"# comment\r\n\r\nECS_CLUSTER=prod\n  X = y \nno-equals\n\xff\xfe=\x00\nlast"
    assert EnvFile.parse(data).render() == data


def test_environment_follows_ecs_init() -> None:
    f = EnvFile.parse(b"A=1\n  B=two=2  \n# C=3\nA=4\nD\nE=\"q\"\n")
    assert f.environment() == {"A": b"4", "B": b"two=2", "# C": b"3", "E": b'"q"'}


def test_sets_rewrites_in_place_and_drops_duplicates() -> None:
    f = EnvFile.parse(b"# top\nK=\"true\"\nOTHER=1\nK=false\n")
    assert f.with_settings({"K": "true"}).render() == b"# top\nK=true\nOTHER=1\n"


def test_compliant_line_is_left_exactly_as_is() -> None:
    data = b"  K=true  \nOTHER=1\n"
    assert EnvFile.parse(data).with_settings({"K": "true"}).render() == data


def test_missing_key_appended_with_files_own_line_ending() -> None:
    assert EnvFile.parse(b"A=1\r\nB=2").with_settings({"K": "v"}).render() == b"A=1\r\nB=2\r\nK=v\r\n"
    assert EnvFile.parse(b"").with_settings({"K": "v"}).render() == b"K=v\n"
    assert EnvFile.parse(b"A=1").with_settings({"K": "v"}).render() == b"A=1\nK=v\n"


def test_null_removes_every_line_of_the_key() -> None:
    f = EnvFile.parse(b"K=1\nA=2\nK =3\n")
    assert f.with_settings({"K": None}).render() == b"A=2\n"


def test_key_hidden_by_whitespace_counts_as_the_key() -> None:
    f = EnvFile.parse(b"K =true\n")
    assert [line.number for line in f.lines_of("K")] == [1]
    assert f.with_settings({"K": "true"}).render() == b"K=true\n"


KEYS = ["ECS_AWSVPC_BLOCK_IMDS", "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST", "ECS_CLUSTER", "K"]
value_text: st.SearchStrategy[str] = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]),
    max_size=12,
).filter(lambda v: v == v.rstrip())
managed_line = st.builds(
    lambda pre, key, mid, value, post: (pre + key + mid + "=" + value + post).encode(),
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(KEYS),
    st.sampled_from(["", "", " "]),
    st.sampled_from(["true", "false", '"true"', "'false'", ""]) | value_text,
    st.sampled_from(["", " ", "\r"]),
)
random_line = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))
file_bytes = st.lists(
    st.tuples(managed_line | random_line, st.sampled_from([b"\n", b"\r\n"])), max_size=12
).flatmap(
    lambda parts: st.booleans().map(
        lambda final_nl: b"".join(body + end for body, end in parts)[: None if final_nl else -1]
        if parts
        else b""
    )
)
policy_settings = st.dictionaries(
    st.sampled_from(KEYS), st.none() | st.sampled_from(["true", "false"]) | value_text, max_size=4
)


@settings(max_examples=400, deadline=None)
@given(file_bytes, policy_settings)
def test_apply_property(data: bytes, wanted: dict[str, str | None]) -> None:
    before = EnvFile.parse(data)
    after_bytes = before.with_settings(wanted).render()
    after = EnvFile.parse(after_bytes)

    for key, value in wanted.items():
        lines = after.lines_of(key)
        if value is None:
            assert lines == []
        else:
            assert len(lines) == 1
            assert lines[0].key == key and lines[0].value == value.encode()
            assert after.environment()[key] == value.encode()

    def unmanaged(f: EnvFile) -> list[bytes]:
        return [line.body for line in f.lines if not any(line.is_key(k) for k in wanted)]

    assert unmanaged(after) == unmanaged(before)
    # Unmanaged lines keep their own endings too, but the last line may gain one.
    kept = [line for line in before.lines if not any(line.is_key(k) for k in wanted)]
    out = [line for line in after.lines if not any(line.is_key(k) for k in wanted)]
    for old, new in zip(kept, out):
        assert new.ending == old.ending or (old.ending == b"" and new.ending in (b"\n", b"\r\n"))
    # Idempotent: a second pass changes nothing.
    assert after.with_settings(wanted).render() == after_bytes
    # Nothing to manage, nothing changed.
    assert before.with_settings({}).render() == data
