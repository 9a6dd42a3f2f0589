"""A 250 means the message survives anything: kill -9, a full disk, SIGTERM under load."""

import os
import signal
import smtplib
import subprocess
import threading
import time

import pytest

from harness import LEVEE_BIN, QUEUED_RE, head, RawSMTP, send_raw_message, unique_token


def domains_to(sink):
    return [{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
            {"name": "sender.test", "downstream": f"127.0.0.1:{sink.port}"}]


def count_tok(sink, tok):
    return len([m for m in sink.messages() if tok in m.text])


def test_kill9_after_250_delivered_exactly_once(levee_factory, sink_factory):
    sink = sink_factory(None)  # downstream down: the message must stay queued
    lv = levee_factory(domains_to(sink))
    tok = unique_token("k9")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"],
                            f"{head(tok)}\r\nsurvive kill -9\r\n".encode())
    assert r.code == 250 and QUEUED_RE.search(r.text), "\n".join(c.transcript)
    lv.kill9()
    sink.start("ok")
    lv.start()
    sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(5)  # a duplicate would show up within a few retry intervals
    assert count_tok(sink, tok) == 1, f"delivered {count_tok(sink, tok)} times"


def test_kill9_during_data_leaves_no_debris(levee_factory, sink):
    lv = levee_factory(domains_to(sink))
    tok = unique_token("half")
    c = RawSMTP(lv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(f"{head(tok)}\r\n".encode() + b"half a message\r\n" * 20000)
    time.sleep(1)
    lv.kill9()
    c.close()
    lv.start()
    time.sleep(5)
    assert count_tok(sink, tok) == 0, "a message that never got its 250 was delivered"
    tmp = lv.spool_dir("tmp")
    debris = sorted(os.listdir(tmp)) if tmp.exists() else []
    assert debris == [], f"spool/tmp holds debris after restart: {debris}"
    queue = lv.spool_dir("queue")
    queued = sorted(os.listdir(queue)) if queue.exists() else []
    assert queued == [], f"spool/queue holds a message that never got 250: {queued}"
    # And the engine still works.
    tok2 = unique_token("after")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"Subject: {tok2}\r\n\r\nok\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    sink.wait_messages(1, pred=lambda m: tok2 in m.text)


def test_downstream_down_then_up_retried(levee_factory, sink_factory):
    sink = sink_factory(None)
    lv = levee_factory(domains_to(sink))
    tok = unique_token("retry")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"{head(tok)}\r\nlater\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    time.sleep(3)  # at least one failed attempt (retry_first_secs = 1)
    sink.start("ok")
    sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(3)
    assert count_tok(sink, tok) == 1


def test_full_disk_tempfails_and_loses_nothing(levee_factory, sink_factory, small_tmpfs):
    sink = sink_factory(None)
    data_dir = small_tmpfs / "levee"
    lv = levee_factory(domains_to(sink), data_dir=data_dir, smtp={"min_free_bytes": 3 * 1024 * 1024})
    body_line = b"0123456789abcdef" * 4 + b"\r\n"  # 66 bytes
    accepted, refused, transcripts = [], [], []
    for i in range(40):  # 40 x ~400 KiB = 16 MiB: far more than an 8 MiB tmpfs holds
        tok = unique_token(f"disk{i}")
        c = RawSMTP(lv.port)
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@sender.test>")
        if r.code != 250:
            transcripts.append("\n".join(c.transcript))
            refused.append((tok, "MAIL", r))
            c.close()
            continue
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250, "\n".join(c.transcript)
        assert c.cmd("DATA").code == 354, "\n".join(c.transcript)
        try:
            c.send(f"{head(tok)}\r\n".encode() + body_line * 6200 + b".\r\n")
            r = c.reply()
        except OSError as e:  # includes socket timeouts: no reply within IO_TIMEOUT
            c.transcript.append(f"error: {e!r}")
            r = None
        c.close()
        if r is not None and r.code == 250:
            accepted.append(tok)
        else:
            transcripts.append("\n".join(c.transcript))
            refused.append((tok, "DATA", r))
    print(f"accepted {len(accepted)}; refused {len(refused)}, first: {[(s, str(r)) for _, s, r in refused[:2]]}")
    assert lv.alive(), f"levee died on a full disk:\n{lv.log_tail()}"
    assert accepted, "not even one message fit"
    assert refused, f"{len(accepted)} messages accepted on an 8 MiB disk with min_free_bytes=3MiB"
    for tok, stage, r in refused:
        assert r is not None, f"connection dropped at {stage} instead of a 4xx:\n" + "\n".join(transcripts)
        if stage == "MAIL":
            assert r.code == 452 and "4.3.1" in r.text, f"{stage}: {r}"
        else:
            assert r.code in (451, 452), f"{stage}: {r}"
    assert any(stage == "MAIL" for _, stage, _ in refused), \
        f"below min_free_bytes MAIL must get 452 4.3.1; refusals: {[(s, str(r)) for _, s, r in refused]}"
    sink.start("ok")
    sink.wait_tokens(accepted, timeout=60)
    time.sleep(3)
    counts = sink.token_counts(accepted)
    assert {t: n for t, n in counts.items() if n != 1} == {}, "delivered more than once"


def test_sigterm_under_load_loses_nothing(levee_factory, sink_factory):
    sink = sink_factory(None)
    lv = levee_factory(domains_to(sink))
    accepted: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n):
        i = 0
        while not stop.is_set():
            tok = unique_token(f"load{n}-{i}")
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", lv.port, timeout=15) as s:
                    s.sendmail("alice@sender.test", ["bob@example.test"],
                               f"{head(tok)}\r\n".encode() + b"load line\r\n" * 500)
                with lock:
                    accepted.append(tok)
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors.append(f"{tok}: {e!r}")
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    with lock:
        before = len(accepted)
    assert before > 0, f"nothing accepted under load: {errors[:5]}\n{lv.log_tail()}"
    rc = lv.terminate(timeout=30)
    print(f"accepted before SIGTERM: {before}; errors so far: {errors[:3]}")
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert rc == 0, f"SIGTERM exit status {rc}:\n{lv.log_tail()}"
    sink.start("ok")
    lv.start()
    with lock:
        toks = list(accepted)
    sink.wait_tokens(toks, timeout=90)
    time.sleep(3)
    counts = sink.token_counts(toks)
    assert {t: n for t, n in counts.items() if n != 1} == {}, "delivered more than once"


def test_sigterm_answers_live_sessions_421(levee_factory, sink):
    lv = levee_factory(domains_to(sink))
    idle = RawSMTP(lv.port)
    idle.ehlo()
    mid = RawSMTP(lv.port)
    mid.ehlo()
    assert mid.cmd("MAIL FROM:<alice@sender.test>").code == 250
    lv.proc.send_signal(signal.SIGTERM)
    for c in (idle, mid):
        r = c.reply()
        assert r is not None and r.code == 421, "\n".join(c.transcript)
        assert c.closed()
    assert lv.proc.wait(timeout=30) == 0, lv.log_tail()


def queue_one_then_kill(lv, tok):
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"],
                            f"{head(tok)}\r\n".encode() + b"queued body line\r\n" * 100)
    assert r.code == 250, "\n".join(c.transcript)
    qid = QUEUED_RE.search(r.text).group(1)
    lv.kill9()
    return qid


def test_queue_listing_shows_deferred_message(levee_factory, sink_factory):
    sink = sink_factory(None)
    lv = levee_factory(domains_to(sink))
    qid = queue_one_then_kill(lv, unique_token("qlist"))
    r = subprocess.run([LEVEE_BIN, "queue", "--config", str(lv.config_path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert qid.lower() in r.stdout.lower() and "bob@example.test" in r.stdout, r.stdout


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_queue_file_is_set_aside(levee_factory, sink_factory, damage):
    sink = sink_factory(None)
    lv = levee_factory(domains_to(sink))
    tok = unique_token("corrupt")
    queue_one_then_kill(lv, tok)
    files = [p for p in lv.spool_dir("queue").iterdir() if p.is_file()]
    assert len(files) == 1, files
    raw = bytearray(files[0].read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        i = bytes(raw).index(b"queued body line") + 3
        raw[i] ^= 0x20  # one changed byte inside the body: the checksum must catch it
    files[0].write_bytes(bytes(raw))
    sink.start("ok")
    lv.start()
    time.sleep(5)
    assert lv.alive(), f"a corrupt queue file crashed the engine:\n{lv.log_tail()}"
    assert count_tok(sink, tok) == 0, "a damaged message was delivered"
    assert [p.name for p in lv.spool_dir("corrupt").iterdir()], "the damaged file was not moved to spool/corrupt"
    assert not any(p.is_file() for p in lv.spool_dir("queue").iterdir())
    tok2 = unique_token("fresh")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"Subject: {tok2}\r\n\r\nok\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    sink.wait_messages(1, pred=lambda m: tok2 in m.text)
