"""One rule for tests that need something this machine may lack: skip here, fail under CI."""

from __future__ import annotations

import os

import pytest


def require(why: str | None) -> None:
    """why: what is missing, or None when nothing is. Under CI (`CI` set) a missing tool
    is a failure: a test that silently skipped there would prove nothing."""
    if not why:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
