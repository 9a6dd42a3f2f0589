"""SMTP smuggling: only <CRLF>.<CRLF> ends DATA. A body carrying a fake end-of-data followed by a
second envelope must yield ONE transaction (or a 550 5.6.11 for bare CR/LF, 550 5.6.0 for NUL), and the downstream
(Postfix's smtp-sink, which itself accepts bare LF line ends) must never see a second message."""

import time

import pytest

from harness import head, RawSMTP, unique_token

FAKE_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r.\r",
    b"\n.\r",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\n\n.\n\n",
    b"\r\n .\r\n",
]


def refused_as_expected(r, fake_end):
    """Bare CR/LF is refused with 550 5.6.11; a NUL octet with 550 5.6.0 (refused, never
    stripped: see ARCHITECTURE)."""
    return r.code == 550 and ("5.6.11" in r.text or (b"\x00" in fake_end and "5.6.0" in r.text))


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=[repr(x)[2:-1] for x in FAKE_ENDS])
def test_smuggled_transaction_is_not_separate(levee, sink, fake_end):
    tok = unique_token("smug")
    evil = unique_token("SMUGGLED")
    c = RawSMTP(levee.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<rcpt@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    payload = (f"{head(tok)}\r\nhello".encode() + fake_end
               + b"MAIL FROM:<admin@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
               + f"From: admin@sender.test\r\nSubject: {evil}\r\n\r\nsmuggled body\r\n".encode()
               + b"\r\n.\r\n")
    c.send(payload)
    replies = c.replies_until_quiet(quiet=2.5)
    transcript = "\n".join(c.transcript)
    assert len(replies) == 1, f"expected exactly one reply to the whole payload:\n{transcript}"
    [r] = replies
    assert r.code == 250 or refused_as_expected(r, fake_end), transcript
    # The connection is still usable for a clean QUIT.
    q = c.cmd("QUIT")
    assert q is not None and q.code == 221, "\n".join(c.transcript)
    c.close()

    if r.code == 250:
        sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(3)  # room for a smuggled second message to show up
    msgs = sink.messages()
    assert all("victim" not in " ".join(m.rcpts) for m in msgs), f"smuggled envelope reached the sink: {msgs}"
    mine = [m for m in msgs if tok in m.text or evil in m.text]
    assert len(mine) == (1 if r.code == 250 else 0), f"transactions at the sink: {[m.text for m in mine]}"
    for m in mine:
        assert m.rcpts == ["<rcpt@example.test>"]
        # Whatever bytes were delivered, the smuggled header is never a header of its own message.
        assert m.header("Subject") == tok, m.text
        subjects = [v for k, v in m.headers() if k.lower() == "subject"]
        assert subjects == [tok], m.text


def test_smuggling_via_bdat_then_data(levee, sink):
    """A BDAT chunk holding a fake DATA transaction is data, never commands."""
    tok = unique_token("bdatsmug")
    c = RawSMTP(levee.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<rcpt@example.test>").code == 250
    chunk = (f"{head(tok)}\r\nx\r\n.\r\n".encode()
             + b"MAIL FROM:<admin@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nevil\r\n.\r\n")
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    replies = c.replies_until_quiet(quiet=2.5)
    assert [r.code for r in replies] == [250], "\n".join(c.transcript)
    [m] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(2)
    assert all("victim" not in " ".join(x.rcpts) for x in sink.messages())
    assert m.rcpts == ["<rcpt@example.test>"]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=[repr(x)[2:-1] for x in FAKE_ENDS])
def test_bdat_content_cannot_smuggle_downstream(levee, sink, fake_end):
    """BDAT carries any bytes, bare LF included; relayed with DATA to a downstream that (like
    smtp-sink and many real servers) ends DATA at a bare-LF dot, those bytes must not become a
    second transaction there."""
    tok = unique_token("bdatdown")
    evil = unique_token("SMUGGLED")
    chunk = (f"{head(tok)}\r\nhello".encode() + fake_end
             + b"MAIL FROM:<admin@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
             + f"From: admin@sender.test\r\nSubject: {evil}\r\n\r\nsmuggled body\r\n".encode()
             + b"\r\n.\r\nQUIT\r\n")
    c = RawSMTP(levee.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<rcpt@example.test>").code == 250
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    replies = c.replies_until_quiet(quiet=2.5)
    transcript = "\n".join(c.transcript)
    assert len(replies) == 1, transcript
    [r] = replies
    assert r.code == 250 or refused_as_expected(r, fake_end), transcript
    c.close()
    if r.code == 250:
        sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(3)
    msgs = sink.messages()
    assert all("victim" not in " ".join(m.rcpts) for m in msgs), f"smuggled envelope reached the sink: {msgs}"
    mine = [m for m in msgs if tok in m.text or evil in m.text]
    assert len(mine) == (1 if r.code == 250 else 0), f"transactions at the sink: {[m.text for m in mine]}"
    for m in mine:
        assert [v for k, v in m.headers() if k.lower() == "subject"] == [tok], m.text
