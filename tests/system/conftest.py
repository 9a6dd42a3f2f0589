"""Fixtures for Levee's system tests. See harness.py for the peers and README.md for how to run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness import LEVEE_BIN, Levee, ProcessRegistry, PySink, Sink, finish_levees

# A hard ceiling per test, on top of the bounded waits inside: a hung test fails instead of hanging CI.
TEST_CEILING_SECS = int(os.environ.get("LEVEE_SYSTEST_CEILING", "240"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def _ceiling():
    def boom(signum, frame):
        raise TimeoutError(f"test exceeded the {TEST_CEILING_SECS}s ceiling")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(TEST_CEILING_SECS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def procs():
    reg = ProcessRegistry()
    yield reg
    reg.kill_all()


@pytest.fixture
def sink_factory(procs):
    sinks: list[Sink] = []

    def make(mode: str | None = "ok") -> Sink:
        """A Sink on its own free port; mode=None leaves it stopped (port closed)."""
        s = Sink(procs)
        sinks.append(s)
        if mode is not None:
            s.start(mode)
        return s

    yield make
    for s in sinks:
        s.close()


@pytest.fixture
def sink(sink_factory) -> Sink:
    return sink_factory("ok")


@pytest.fixture
def pysink_factory():
    sinks: list[PySink] = []

    def make(rcpt_reply=None) -> PySink:
        s = PySink(rcpt_reply)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.close()


@pytest.fixture
def levee_factory(procs, tmp_path, request):
    made: list[Levee] = []

    def make(domains, smtp=None, delivery=None, data_dir=None, start=True, name=None) -> Levee:
        lv = Levee(procs, tmp_path / (name or f"levee{len(made)}"), domains, smtp=smtp, delivery=delivery,
                   data_dir=data_dir)
        made.append(lv)
        if start:
            lv.start()
        return lv

    yield make
    finish_levees(request, made)


@pytest.fixture
def levee(levee_factory, sink) -> Levee:
    """Levee relaying example.test and sender.test to one healthy smtp-sink."""
    return levee_factory([
        {"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
        {"name": "sender.test", "downstream": f"127.0.0.1:{sink.port}"},
    ])


@pytest.fixture
def small_tmpfs(procs, tmp_path):
    """An 8 MiB tmpfs (we run as root); processes are killed before it is unmounted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)], check=True,
                   timeout=30)
    yield mnt
    procs.kill_all()
    subprocess.run(["umount", str(mnt)], check=False, timeout=30)


def pytest_report_header(config):
    return f"levee binary: {LEVEE_BIN} ({'present' if Path(LEVEE_BIN).exists() else 'MISSING'})"
