"""Session limits: message size, recipients, errors, command line length."""

import socket
import time

import pytest

from harness import ehlo_keywords, head, RawSMTP, unique_token


@pytest.fixture
def limited(levee_factory, sink):
    return levee_factory(
        [{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
        smtp={"max_message_size": 20000, "max_recipients": 3, "max_errors": 3},
    )


def test_message_over_size_552(limited, sink):
    tok = unique_token("big")
    c = RawSMTP(limited.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(f"{head(tok)}\r\n".encode() + b"y" * 70 + b"\r\n")
    c.send((b"z" * 98 + b"\r\n") * 400 + b".\r\n")  # ~40 KB > 20000
    r = c.reply()
    assert r is not None and r.code == 552, "\n".join(c.transcript[-5:])
    # The session survives and a right-sized message still goes through.
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250, "\n".join(c.transcript[-5:])
    c.close()
    time.sleep(2)
    assert [m for m in sink.messages() if tok in m.text] == []


def test_size_declared_at_mail_552(limited):
    c = RawSMTP(limited.port)
    kw = ehlo_keywords(c.ehlo())
    r = c.cmd("MAIL FROM:<alice@sender.test> SIZE=50000")
    if "SIZE" in kw:
        assert r.code == 552, "\n".join(c.transcript)
    else:
        pytest.fail(f"SIZE (RFC 1870) not advertised: {kw}")


def test_exactly_max_size_accepted(limited, sink):
    tok = unique_token("fits")
    hdr = f"{head(tok)}\r\n".encode()
    body = hdr + (b"a" * 98 + b"\r\n") * ((15000 - len(hdr)) // 100)
    c = RawSMTP(limited.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(body + b".\r\n")
    assert c.reply().code == 250, "\n".join(c.transcript[-3:])
    sink.wait_messages(1, pred=lambda m: tok in m.text)


def test_too_many_recipients_452(limited):
    c = RawSMTP(limited.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    for i in range(3):
        assert c.cmd(f"RCPT TO:<u{i}@example.test>").code == 250, "\n".join(c.transcript)
    r = c.cmd("RCPT TO:<u3@example.test>")
    assert r.code == 452, "\n".join(c.transcript)


def test_too_many_errors_421_and_close(limited):
    c = RawSMTP(limited.port)
    c.ehlo()
    codes = []
    for i in range(6):
        try:
            r = c.cmd(f"BOGUS{i}")
        except (ConnectionResetError, BrokenPipeError):
            r = None
        if r is None:
            break
        codes.append(r.code)
        if r.code == 421:
            break
    assert 421 in codes, f"no 421 after {len(codes)} bad commands with max_errors=3:\n" + "\n".join(c.transcript)
    assert codes.index(421) <= 3, codes
    assert c.closed(), "server must close after 421"


def test_overlong_command_line_500(limited):
    c = RawSMTP(limited.port)
    c.ehlo()
    # RFC 5321 allows servers longer lines than 512 octets (extensions); 8000 is overlong for anyone.
    r = c.cmd("MAIL FROM:<" + "a" * 8000 + "@sender.test>")
    assert r is not None and r.code == 500, "\n".join(t[:200] for t in c.transcript)
    r = c.cmd("NOOP")
    assert r is not None and r.code == 250, "the session goes on after an overlong line"


def test_huge_line_without_newline_does_not_kill_server(limited):
    c = RawSMTP(limited.port)
    c.ehlo()
    try:
        c.send(b"X" * (4 << 20))  # 4 MiB, no line end
        r = c.reply()
        assert r is None or 400 <= r.code < 600, str(r)
    except (ConnectionResetError, BrokenPipeError, TimeoutError, socket.timeout):
        pass  # a reply, a close or silence are all fine; what matters is what follows
    c.close()
    c2 = RawSMTP(limited.port)
    assert c2.banner.code == 220
    c2.ehlo()
    assert limited.alive(), limited.log_tail()


def test_idle_timeout_421(levee_factory, sink):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"idle_timeout_secs": 2})
    c = RawSMTP(lv.port)
    c.ehlo()
    t0 = time.monotonic()
    r = c.reply()  # nothing sent: the next thing from the server is the timeout
    waited = time.monotonic() - t0
    assert r is not None and r.code == 421, "\n".join(c.transcript)
    assert 1.5 <= waited <= 10, f"421 after {waited:.1f}s with idle_timeout_secs=2"
    assert c.closed()


def test_session_timeout_421_though_never_idle(levee_factory, sink):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"session_timeout_secs": 3, "data_timeout_secs": 2})
    c = RawSMTP(lv.port)
    t0 = time.monotonic()
    c.ehlo()
    while time.monotonic() - t0 < 2:  # busy, never idle, until shortly before the deadline
        assert c.cmd("NOOP").code == 250, "\n".join(c.transcript)
        time.sleep(0.3)
    r = c.reply()  # nothing more sent: the next thing from the server is the session's end
    waited = time.monotonic() - t0
    assert r is not None and r.code == 421 and "session timeout" in r.text, "\n".join(c.transcript)
    assert 2.5 <= waited <= 10, f"421 after {waited:.1f}s with session_timeout_secs=3"
    assert c.closed()


def test_errors_past_the_soft_limit_are_delayed(levee_factory, sink):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"max_errors": 10, "soft_error_limit": 1, "error_delay_max_secs": 2})
    c = RawSMTP(lv.port)
    c.ehlo()
    waits = []
    for i in range(4):
        t0 = time.monotonic()
        r = c.cmd(f"BOGUS{i}")
        assert r is not None and r.code == 500, "\n".join(c.transcript)
        waits.append(time.monotonic() - t0)
    # 0, then 1 s, then 2 s (the cap), and 2 s again.
    assert waits[0] < 0.5 and 0.8 <= waits[1] < 1.8 and 1.8 <= waits[2] < 3 and 1.8 <= waits[3] < 3, waits


def test_max_connections_per_ip(levee_factory, sink):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"max_connections_per_ip": 2})
    # The harness's readiness probe was a connection from this address too; on a loaded
    # machine the engine may not have released its slot yet.
    time.sleep(1)
    a, b = RawSMTP(lv.port), RawSMTP(lv.port)
    assert a.banner.code == 220 and b.banner.code == 220
    c = RawSMTP(lv.port)
    assert c.banner is not None and c.banner.code == 421, "\n".join(c.transcript)
    assert c.closed()
    a.cmd("QUIT")
    a.close()
    time.sleep(0.5)
    d = RawSMTP(lv.port)
    assert d.banner.code == 220, "a slot frees when a session ends:\n" + "\n".join(d.transcript)


def test_bdat_over_size_552(limited, sink):
    tok = unique_token("bigbdat")
    c = RawSMTP(limited.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    chunk = f"{head(tok)}\r\n".encode() + (b"q" * 98 + b"\r\n") * 150  # 15 KB
    c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
    r1 = c.reply()
    replies = [r1]
    if r1 is not None and r1.code == 250:
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)  # 30 KB in all > 20000
        replies.append(c.reply())
    assert replies[-1] is not None and replies[-1].code == 552, "\n".join(t[:120] for t in c.transcript)
    c.close()
    time.sleep(2)
    assert [m for m in sink.messages() if tok in m.text] == []
