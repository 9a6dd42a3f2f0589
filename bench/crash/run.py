#!/usr/bin/env python3
"""Kill -9 trials under load: how many messages that got a 250 are lost, and how many are
delivered twice.

Each trial starts Levee, has SENDERS threads send messages (each with a unique token) through
it to Postfix's smtp-sink, and kills Levee with SIGKILL after a random 0.3-1.5 s, mid-traffic.
The table splits duplicates into those whose 250 Levee had already logged (its own window
between reading the 250 and recording it) and those in flight (no client can avoid them).
After the last trial Levee runs until every accepted message has arrived (bounded), and the
sink's dumps are counted per token. A message delivered twice is a duplicate: the crash fell
between the downstream's 250 and the durable record of it.

    LEVEE_BIN=target/release/levee TRIALS=30 SENDERS=8 bench/crash/run.py

Needs the Debian package postfix (smtp-sink). Prints one table; exits 1 if any message was lost.
"""

from __future__ import annotations

import os
import random
import re
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "system"))
from harness import Levee, ProcessRegistry, Sink, head, unique_token  # noqa: E402

TRIALS = int(os.environ.get("TRIALS", "30"))
SENDERS = int(os.environ.get("SENDERS", "8"))
DRAIN_TIMEOUT = float(os.environ.get("DRAIN_TIMEOUT", "180"))
SEED = int(os.environ.get("SEED", "1"))


def sender(port: int, stop: threading.Event, accepted: list[str], lock: threading.Lock):
    """Sends until stopped; a token counts only once its 250 arrived."""
    while not stop.is_set():
        tok = unique_token("crash")
        body = f"{head(tok)}\r\ncrash trial message\r\n"
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("alice@sender.test", ["bob@example.test"], body)
            with lock:
                accepted.append(tok)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def logged_twice(work: Path) -> int:
    """Messages Levee's own log shows delivered (250 read) more than once, across the runs.
    Each is a duplicate Levee could have avoided: it had read the downstream's 250 and still
    sent the message again after a restart. Any other duplicate was in flight: the sink had
    the message, but its 250 had not reached Levee when it died, which no SMTP client can
    avoid (RFC 1047)."""
    seen: dict[str, int] = {}
    for log in work.glob("levee-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "delivery attempt" in line and 'outcome="delivered"' in line:
                m = re.search(r"id=([0-9A-F]{16})", line)
                if m:
                    seen[m.group(1)] = seen.get(m.group(1), 0) + 1
    return sum(1 for n in seen.values() if n > 1)


def main() -> int:
    random.seed(SEED)
    registry = ProcessRegistry()
    work = Path(tempfile.mkdtemp(prefix="levee-crash-"))
    sink = Sink(registry).start("ok")
    domains = [{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
               {"name": "sender.test", "downstream": f"127.0.0.1:{sink.port}"}]
    lv = Levee(registry, work, domains)
    accepted: list[str] = []
    lock = threading.Lock()
    started = time.time()
    try:
        for _ in range(TRIALS):
            lv.start()
            stop = threading.Event()
            threads = [threading.Thread(target=sender, args=(lv.port, stop, accepted, lock))
                       for _ in range(SENDERS)]
            for t in threads:
                t.start()
            time.sleep(random.uniform(0.3, 1.5))
            lv.kill9()
            stop.set()
            for t in threads:
                t.join(timeout=15)
        lv.start()
        try:
            sink.wait_tokens(accepted, timeout=DRAIN_TIMEOUT)
        except AssertionError as e:
            print(f"not all accepted mail arrived: {e}", file=sys.stderr)
        time.sleep(5)  # a late duplicate from a retry would show up here
        counts = sink.token_counts(accepted)
        ours = logged_twice(work)
    finally:
        registry.kill_all()
        sink.close()
    lost = sum(1 for n in counts.values() if n == 0)
    dup = sum(1 for n in counts.values() if n > 1)
    extra = sum(n - 1 for n in counts.values() if n > 1)
    n = len(accepted)
    print("| trials | accepted (250) | lost | delivered twice or more | of which after Levee had read the 250 "
          "| extra copies | duplicate rate | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rate = 100.0 * dup / n if n else 0.0
    print(f"| {TRIALS} | {n} | {lost} | {dup} | {ours} | {extra} | {rate:.3f}% | {time.time() - started:.0f} |")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
