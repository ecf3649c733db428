"""When the daemon wakes and what it reconciles: nf_tables messages, schedule, finding log."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ecs_harden.component import ECS, FILES, FIREWALL, PATHS
from ecs_harden.daemon.nftevents import Batch, parse
from ecs_harden.daemon.sources import FileSource, NftSource, ProbeSource
from ecs_harden.daemon.wakeups import (
    ALL,
    COALESCE,
    COALESCE_MAX,
    FILE_POLL,
    LOCK_BURST,
    LOCK_BURST_TICKS,
    PROBES_PER_INTERVAL,
    PROBES_UNLOCKED,
    QUIET,
    SETTLE_MAX,
    Schedule,
    Wake,
)
from ecs_harden.findinglog import FindingLog
from ecs_harden.firewall import tableinfo
from ecs_harden.firewall.netlink import NFT_MSG_NEWGEN, NFTA_GEN_PROC_PID
from ecs_harden.firewall.tableinfo import TableProbe


def message(msg: int, family: int, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    length = 16 + len(body)
    pad = b"\0" * ((4 - length % 4) % 4)
    return struct.pack("=IHHII", length, (10 << 8) | msg, 0, 0, 0) + body + pad


def pid_attr(pid: int) -> bytes:
    return struct.pack("=HH", 8, NFTA_GEN_PROC_PID) + struct.pack(">I", pid)


def test_parse_families_and_the_committing_pid() -> None:
    batch = Batch()
    NEWRULE, DELRULE = 6, 8
    parse(message(NEWRULE, 2) + message(DELRULE, 10) + message(NFT_MSG_NEWGEN, 0, pid_attr(4242)), batch)
    assert batch.messages == 3 and batch.families == {4, 6} and batch.writers == {4242}
    assert not batch.other


def test_parse_flags_other_families_and_survives_garbage() -> None:
    batch = Batch()
    parse(message(6, 1) + b"\x03\x00", batch)  # inet family, then a truncated header
    assert batch.other and batch.families == set() and batch.messages == 1


def schedule(now: float = 100.0) -> Schedule:
    return Schedule(now, interval=5, resync=60, watchdog=15)


class Events:
    """An NftEvents that never has anything to read (the tests call `event` directly)."""

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def nft_source() -> NftSource:
    return NftSource(Events(), ours=set)  # type: ignore[arg-type]


def test_first_event_acts_at_once_and_a_burst_after_a_reconcile_is_coalesced() -> None:
    s = nft_source()
    wake = Wake()
    s.event(wake, 200.0, {4}, "nftables event")
    assert wake.groups == {FIREWALL} and wake.families == {4}  # at once
    s.after({FIREWALL}, True, 200.01)
    later = Wake()
    s.event(later, 200.02, {6}, "nftables event")  # within QUIET: coalesce
    assert not later and s.deadline() == 200.02 + COALESCE
    for t in (200.03, 200.04, 200.05):
        s.event(later, t, {6}, "nftables event")
    due = s.deadline()
    assert due is not None and due <= 200.02 + COALESCE_MAX
    s.due(due - 0.001, later)
    assert not later  # not yet
    s.due(due, later)
    assert later.groups == {FIREWALL} and later.families == {6} and s.deadline() is None
    quiet = Wake()
    s.event(quiet, s.last_end + QUIET + 1, {4}, "nftables event")
    assert quiet  # long after: at once again


def test_a_burst_never_waits_longer_than_coalesce_max() -> None:
    s = nft_source()
    s.after({FIREWALL}, True, 10.0)
    w = Wake()
    t = 10.01
    while t < 11:
        s.event(w, t, {4}, "e")
        t += COALESCE / 2
    assert s.deadline() == 10.01 + COALESCE_MAX


def test_every_resync_wakes_the_firewall_whatever_the_change_signals_said() -> None:
    """No cheap signal may stand in for a full read: an event lost, a same-size legacy
    replacement, our own bookkeeping gone wrong."""
    s = schedule(now=0.0)
    sources = [nft_source(), ProbeSource(Probe(), interval=5, now=0.0)]  # type: ignore[arg-type]
    for i in range(1, 6):
        w = Wake()
        s.due(w, 60.0 * i + 0.001)
        for source in sources:
            source.due(60.0 * i + 0.001, w)
        assert FIREWALL in w.groups and w.families >= {4, 6}


def test_resync_and_backoff() -> None:
    s = schedule(now=0.0)
    w = Wake()
    s.due(w, 59.0)
    assert not w
    s.due(w, 60.0)
    assert w.groups == set(ALL) and s.resync == 120.0
    assert s.reconciled(False, 61.0) == 1.0 and s.retry == 62.0
    assert s.reconciled(False, 62.0) == 2.0
    assert s.reconciled(True, 63.0) is None and s.retry is None


def test_a_partial_success_keeps_the_retry_of_a_failed_reconcile() -> None:
    """A held lock fails the full reconcile; the legacy probe then wakes one family and
    that one goes well: the other family (and the files) have not been looked at again,
    so the retry stays, and it wakes everything."""
    s = schedule(now=0.0)
    assert s.reconciled(False, 10.0) == 1.0 and s.retry == 11.0
    assert s.reconciled(True, 10.5, complete=False) is None and s.retry == 11.0
    w = Wake()
    s.due(w, 11.0)
    assert w.groups == set(ALL) and "retry" in w.why
    assert s.reconciled(True, 11.1, complete=True) is None and s.retry is None


def test_heartbeat_and_watchdog() -> None:
    s = Schedule(0.0, interval=5, resync=60, watchdog=2)
    assert s.beats(0.0) == (False, True)  # the first ping at once
    assert s.beats(1.0) == (False, False)
    assert s.beats(2.0) == (False, True)
    assert s.beats(5.0) == (True, True)
    fed = Schedule(0.0, interval=5, resync=60, watchdog=15)  # fed with the heartbeat
    assert fed.beats(0.0) == (False, True) and fed.beats(5.0) == (True, True) and fed.watchdog == 20.0


def files(tmp_path: Path, age_ns: int) -> FileSource:
    path = tmp_path / "ecs.config"
    path.write_text("ECS_CLUSTER=prod\n")
    ctime = path.stat().st_ctime_ns
    return FileSource([str(path)], None, 100.0, wall_ns=lambda: ctime + age_ns)


def test_a_file_still_being_written_waits_then_is_looked_at(tmp_path: Path) -> None:
    s = files(tmp_path, 50_000_000)  # changed 50 ms ago
    wake = Wake()
    wake.add(ALL, "resync")
    s.hold(wake, 100.0)
    assert wake.groups == {FIREWALL, PATHS}  # the firewall (and the paths) are not held back
    assert s.deadline() == pytest.approx(100.2)
    later = Wake()
    s.due(100.2, later)
    assert later.groups == {FILES, ECS} and later.why == ["file settled"]
    s.wall_ns = lambda: 0  # its change is long past... or in the future: both count as settled
    settled = files(tmp_path, SECOND)
    settled.hold(later, 100.2)
    assert later.groups == {FILES, ECS} and settled.settle_at is None


SECOND = 1_000_000_000


def test_a_file_dated_in_the_future_counts_as_settled(tmp_path: Path) -> None:
    s = files(tmp_path, -2 * SECOND)  # the clock went back two seconds
    wake = Wake()
    wake.add({FILES, ECS}, "file changed")
    s.hold(wake, 100.0)
    assert wake.groups == {FILES, ECS}


def test_a_file_rewritten_without_pause_is_looked_at_after_settle_max(tmp_path: Path) -> None:
    s = files(tmp_path, 0)  # forever just written
    now = 100.0
    while now < 100.0 + SETTLE_MAX:
        wake = Wake()
        wake.add({FILES, ECS}, "file changed")
        s.hold(wake, now)
        assert not wake
        now += 0.2
    wake = Wake()
    wake.add({FILES, ECS}, "file changed")
    s.hold(wake, now)
    assert wake.groups == {FILES, ECS}


def test_a_polled_file_wakes_its_checks_when_its_signature_changes(tmp_path: Path) -> None:
    s = files(tmp_path, SECOND)
    w = Wake()
    s.due(100.0 + FILE_POLL, w)
    assert not w  # unchanged
    (tmp_path / "ecs.config").write_text("ECS_CLUSTER=other\n")
    s.due(100.0 + 2 * FILE_POLL, w)
    assert w.groups == {FILES, ECS} and w.why == ["file changed"]
    s.after({FILES}, True, 103.0)
    w2 = Wake()
    s.due(100.0 + 3 * FILE_POLL, w2)
    assert not w2  # the reconcile took the new signature


class Probe:
    """A TableProbe whose signatures the test sets (slot order: v4 filter, v4 raw, v6
    filter, v6 raw); `fail` makes it raise. Reads and commits are noted as the legacy
    backend notes them (tableinfo.note)."""

    def __init__(self) -> None:
        self.slots = [(4, "filter"), (4, "raw"), (6, "filter"), (6, "raw")]
        self.sig: list[bytes] = [b"a", b"b", b"c", b"d"]
        self.fail = False
        self.closed = False
        self.looks: dict[tuple[int, str], set[bytes]] | None = None

    def signature(self) -> tuple[bytes, ...]:
        if self.fail:
            raise OSError(1, "IPT_SO_GET_INFO filter: Operation not permitted")
        return tuple(self.sig)

    def changed(self, old: tuple[bytes | None, ...], new: tuple[bytes | None, ...]) -> set[int]:
        return TableProbe.changed(self, old, new)  # type: ignore[arg-type]

    def note(self, family: int, table: str) -> None:
        if self.looks is not None:
            self.looks.setdefault((family, table), set()).add(self.sig[self.slots.index((family, table))])

    recording = TableProbe.recording

    def close(self) -> None:
        self.closed = True


def tick(s: ProbeSource, now: float) -> Wake:
    w = Wake()
    s.next = now
    s.due(now, w)
    return w


def reconcile(s: ProbeSource, probe: Probe, families: set[int], steps: list[tuple[str, int, str, bytes]]) -> None:
    """A reconcile as the daemon runs it: before, the backend's reads and commits (each
    may find the table changed by somebody else first), after."""
    s.before({FIREWALL}, families)
    for what, family, table, value in steps:
        probe.sig[probe.slots.index((family, table))] = value  # the table as it is now
        assert what in ("read", "commit")
        tableinfo.note(family, table)
    s.after({FIREWALL}, True, 0.0)


def test_a_deletion_that_undoes_our_repair_before_the_next_tick_is_seen() -> None:
    """The blind spot measured on legacy: the baseline was the signature before our
    repair, so a deletion right after it restored that signature and was never seen."""
    probe = Probe()
    s = ProbeSource(probe, interval=5, now=0.0)  # type: ignore[arg-type]
    reconcile(s, probe, {4, 6}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b"),
                                 ("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    assert not tick(s, 1.0)  # steady: what was read is the baseline
    probe.sig[0] = b"a-deleted"
    assert tick(s, 2.0).families == {4}
    # the repair: read the deletion, commit, read again (the second inspect)
    reconcile(s, probe, {4}, [("read", 4, "filter", b"a-deleted"), ("commit", 4, "filter", b"a"),
                              ("read", 4, "filter", b"a"), ("read", 4, "raw", b"b")])
    probe.sig[0] = b"a-deleted"  # deleted again before the next tick: the old signature
    assert tick(s, 2.1).families == {4}


def test_a_table_seen_in_two_states_is_looked_at_again_and_then_settles() -> None:
    probe = Probe()
    s = ProbeSource(probe, interval=5, now=0.0)  # type: ignore[arg-type]
    assert tick(s, 0.5).families == {4, 6}  # nothing read yet: nothing known
    reconcile(s, probe, {6}, [("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    reconcile(s, probe, {4}, [("read", 4, "raw", b"b"), ("read", 4, "filter", b"x"), ("commit", 4, "filter", b"y"),
                              ("read", 4, "filter", b"y")])
    assert tick(s, 1.0).families == {4}  # our commit: one more look, at once
    reconcile(s, probe, {4}, [("read", 4, "filter", b"y")])
    assert not tick(s, 1.1)
    # a change between our commit and the next component's read of the same table:
    # neither value can be the baseline
    reconcile(s, probe, {4}, [("read", 4, "filter", b"y"), ("commit", 4, "filter", b"z"),
                              ("read", 4, "filter", b"z-by-someone")])
    assert tick(s, 1.2).families == {4}


def test_a_family_not_reconciled_keeps_its_baseline_and_a_failed_read_takes_the_one_before() -> None:
    probe = Probe()
    s = ProbeSource(probe, interval=5, now=0.0)  # type: ignore[arg-type]
    reconcile(s, probe, {4, 6}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b"),
                                 ("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    probe.sig = [b"a2", b"b", b"c2", b"d"]  # both families changed
    # a reconcile of family 4 only: family 6's change must still show afterwards
    reconcile(s, probe, {4}, [("read", 4, "filter", b"a2"), ("read", 4, "raw", b"b")])
    assert tick(s, 1.0).families == {6}
    # a reconcile of family 6 that read nothing (the lock failed): the retry covers it,
    # the probe does not wake every tick meanwhile
    reconcile(s, probe, {6}, [])
    assert not tick(s, 1.1)
    probe.sig[3] = b"d2"
    assert tick(s, 1.2).families == {6}


def test_the_probe_wakes_the_family_whose_table_changed_and_turns_to_polling_when_it_fails() -> None:
    probe = Probe()
    s = ProbeSource(probe, interval=2.2, now=0.0)  # type: ignore[arg-type]
    assert s.carries_timers and s.deadline() == pytest.approx(0.1)
    reconcile(s, probe, {4, 6}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b"),
                                 ("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    w = Wake()
    s.due(0.1, w)
    assert not w
    probe.sig[3] = b"D"  # the IPv6 raw table
    s.due(0.2, w)
    assert w.groups == {FIREWALL} and w.families == {6}
    probe.fail = True
    w = Wake()
    s.due(0.35, w)
    assert w.families == {4, 6} and probe.closed and not s.carries_timers
    w = Wake()
    s.due(0.35 + 2.2, w)
    assert w.why == ["poll"]


def test_with_a_ticking_source_the_daemon_sleeps_until_its_next_tick_only() -> None:
    s = schedule(now=0.0)
    probe = ProbeSource(Probe(), interval=2.2, now=0.0)  # type: ignore[arg-type]
    assert s.earliest([probe]) == pytest.approx(0.1)  # heartbeat, resync, watchdog ride on ticks
    assert schedule(now=0.0).earliest([]) == 0.0  # no ticking source: the watchdog's first ping
    s.reconciled(False, 0.0)
    assert s.earliest([probe]) == pytest.approx(0.1) and s.retry == 1.0
    assert s.others(probe, [probe]) == 0.0  # the watchdog's first ping is due now


def test_finding_log_logs_new_changed_cleared_and_reminds_hourly() -> None:
    now = [0.0]
    log = FindingLog(remind=3600, clock=lambda: now[0])
    assert log.should_log("imds.ipv4.live", "drift\0a") == "new"
    for t in (60, 120, 3000):
        now[0] = t
        assert log.should_log("imds.ipv4.live", "drift\0a") is None
    assert log.should_log("imds.ipv4.live", "drift\0b") == "changed"
    now[0] = 3000 + 3600
    assert log.should_log("imds.ipv4.live", "drift\0b") == "reminder"
    assert log.clear("imds.ipv4.live") and not log.clear("imds.ipv4.live")
    assert log.should_log("imds.ipv4.live", "drift\0b") == "new"
    # a day of a persisting error at resync 60 s: 24 lines, not 1,440
    day = FindingLog(remind=3600, clock=lambda: now[0])
    lines = 0
    for i in range(1440):
        now[0] = i * 60.0
        lines += day.should_log("imds.persistence.service", "error\0package missing") is not None
    assert lines == 24


class Lock:
    """The xtables lock's watch: `closes` pending closes."""

    def __init__(self) -> None:
        self.closes = 0
        self.closed = False

    def fileno(self) -> int:
        return 99

    def drain(self) -> bool:
        seen, self.closes = self.closes > 0, 0
        return seen

    def close(self) -> None:
        self.closed = True


def test_a_close_of_the_xtables_lock_is_probed_at_once_and_a_long_burst_every_lock_burst() -> None:
    probe, lock = Probe(), Lock()
    s = ProbeSource(probe, interval=5, now=0.0, lock=lock)  # type: ignore[arg-type]
    assert s.fileno() == 99 and s.deadline() == pytest.approx(5 / PROBES_UNLOCKED)  # the timer: lockless writers
    reconcile(s, probe, {4, 6}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b"),
                                 ("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    w = Wake()
    s.readable(0.3, w)  # a spurious event: nothing closed it
    assert s.deadline() == pytest.approx(1.0)
    lock.closes, probe.sig[0] = 1, b"a-deleted"
    s.readable(0.3, w)
    assert s.deadline() == 0.3
    s.due(0.3, w)
    assert w.families == {4}
    # the other family's change 10 ms later (a second iptables-restore): at once too
    lock.closes, probe.sig[2] = 1, b"c-deleted"
    s.readable(0.31, Wake())
    assert s.deadline() == 0.31
    # a burst (Docker starting containers): LOCK_BURST_TICKS changes at once, then one
    # every LOCK_BURST
    now, found = 0.31, []
    for i in range(LOCK_BURST_TICKS + 2):
        lock.closes, probe.sig[0] = 1, b"a%d" % i
        s.readable(now, Wake())
        found.append(round(s.deadline() - now, 3))  # type: ignore[operator]
        now = s.deadline()  # type: ignore[assignment]
        s.due(now, Wake())
        now += 0.01
    assert found[:LOCK_BURST_TICKS - 1] == [0.0] * (LOCK_BURST_TICKS - 1), found
    assert LOCK_BURST * 0.8 < found[-1] <= LOCK_BURST, found  # the bucket empty: one every LOCK_BURST
    s.close()
    assert lock.closed and probe.closed


def test_without_a_lock_watch_the_timer_probes_22_times_an_interval() -> None:
    s = ProbeSource(Probe(), interval=2.2, now=0.0)  # type: ignore[arg-type]
    assert s.fileno() == -1 and s.deadline() == pytest.approx(2.2 / PROBES_PER_INTERVAL)


def test_our_own_look_again_starts_no_burst_a_deletion_right_after_it_is_probed_at_once() -> None:
    probe, lock = Probe(), Lock()
    s = ProbeSource(probe, interval=5, now=0.0, lock=lock)  # type: ignore[arg-type]
    reconcile(s, probe, {4, 6}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b"),
                                 ("read", 6, "filter", b"c"), ("read", 6, "raw", b"d")])
    # our repair: the table read deleted, then committed (two states: look again)
    reconcile(s, probe, {4}, [("read", 4, "filter", b"a-deleted"), ("commit", 4, "filter", b"a"),
                              ("read", 4, "raw", b"b")])
    lock.closes = 1  # our own commit's close
    s.readable(1.0, Wake())
    w = Wake()
    s.due(1.0, w)
    assert w.families == {4}  # looked at again, at once
    reconcile(s, probe, {4}, [("read", 4, "filter", b"a"), ("read", 4, "raw", b"b")])
    lock.closes, probe.sig[0] = 1, b"a-deleted"  # deleted again 50 ms later
    s.readable(1.05, Wake())
    assert s.deadline() == 1.05
