"""When the daemon wakes and what it reconciles: nf_tables messages, schedule, finding log."""

from __future__ import annotations

import struct

from ecs_harden.component import ECS, FILES, FIREWALL
from ecs_harden.daemon.nftevents import Batch, parse
from ecs_harden.daemon.wakeups import (
    ALL,
    COALESCE,
    COALESCE_MAX,
    QUIET,
    SETTLE_MAX,
    Schedule,
    Wake,
)
from ecs_harden.findinglog import FindingLog
from ecs_harden.firewall.netlink import NFT_MSG_NEWGEN, NFTA_GEN_PROC_PID


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


def schedule(now: float = 100.0, probe: float | None = None) -> Schedule:
    return Schedule(now, interval=5, resync=60, probe_every=probe, polling_files=False, watchdog=15)


def test_first_event_acts_at_once_and_a_burst_after_a_reconcile_is_coalesced() -> None:
    s = schedule(now=190.0)
    wake = Wake()
    s.event(wake, 200.0, {4}, "nftables event")
    assert wake.groups == {FIREWALL} and wake.families == {4}  # at once
    s.reconciled(True, 200.01)
    later = Wake()
    s.event(later, 200.02, {6}, "nftables event")  # within QUIET: coalesce
    assert not later and s.pending_at == 200.02 + COALESCE
    for t in (200.03, 200.04, 200.05):
        s.event(later, t, {6}, "nftables event")
    assert s.pending_at is not None and s.pending_at <= 200.02 + COALESCE_MAX
    s.due(later, s.pending_at)
    assert later.groups == {FIREWALL} and later.families == {6} and s.pending is None
    quiet = Wake()
    s.event(quiet, s.last_reconcile_end + QUIET + 1, {4}, "nftables event")
    assert quiet  # long after: at once again


def test_a_burst_never_waits_longer_than_coalesce_max() -> None:
    s = schedule()
    s.reconciled(True, 10.0)
    w = Wake()
    t = 10.01
    while t < 11:
        s.event(w, t, {4}, "e")
        t += COALESCE / 2
    assert s.pending_at == 10.01 + COALESCE_MAX


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


def test_a_file_still_being_written_waits_then_is_looked_at() -> None:
    s = schedule()
    wake = Wake()
    wake.add(ALL, "resync")
    s.defer_files(wake, 100.0, 0.2)
    assert wake.groups == {FIREWALL}  # the firewall is not held back
    assert s.settle == 100.2 and s.earliest() <= 100.2
    later = Wake()
    s.due(later, 100.2)
    assert later.groups == {FILES, ECS} and later.why == ["file settled"]
    s.defer_files(later, 100.2, 0.0)  # settled now: acted on
    assert later.groups == {FILES, ECS} and s.settle is None


def test_a_file_rewritten_without_pause_is_looked_at_after_settle_max() -> None:
    s = schedule()
    now = 100.0
    while now < 100.0 + SETTLE_MAX:
        wake = Wake()
        wake.add({FILES, ECS}, "file changed")
        s.defer_files(wake, now, 0.25)
        assert not wake
        now += 0.2
    wake = Wake()
    wake.add({FILES, ECS}, "file changed")
    s.defer_files(wake, now, 0.25)
    assert wake.groups == {FILES, ECS}


def test_with_a_probe_the_daemon_sleeps_until_the_next_tick_only() -> None:
    s = schedule(now=0.0, probe=0.2)
    assert s.earliest() == 0.2  # heartbeat, resync and watchdog are looked at on ticks
    assert schedule(now=0.0).earliest() == 0.0  # no probe: the watchdog's first ping


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
