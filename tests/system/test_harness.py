"""Controls for the harness itself: the peers behave as the other tests assume, so a passing
Levee test means Levee passed, not that the harness saw nothing."""

import smtplib

import pytest

from harness import RawSMTP, swaks, unique_token
from test_basics import ORIGINAL


def test_sink_roundtrip_is_exact_modulo_crlf(sink, tmp_path):
    tok = unique_token("ctl")
    original = ORIGINAL.format(tok=tok, long="x" * 900)
    f = tmp_path / "m.eml"
    f.write_bytes(original.replace("\n", "\r\n").encode()[:-2])  # swaks adds the last CRLF itself
    r = swaks(sink.port, "-f", "alice@sender.test", "-t", "bob@example.test", "--data", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    [m] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    assert m.text == original
    assert m.mail_from == "<alice@sender.test>" and m.rcpts == ["<bob@example.test>"]


@pytest.mark.parametrize("mode,stage,code", [
    ("rcpt4xx", "RCPT", 450), ("rcpt5xx", "RCPT", 500), ("data4xx", "DATA", 450), ("data5xx", "DATA", 500),
    ("dot4xx", ".", 450), ("dot5xx", ".", 500),
])
def test_sink_fault_modes(sink_factory, mode, stage, code):
    s = sink_factory(mode)
    c = RawSMTP(s.port)
    c.ehlo()
    replies = {"MAIL": c.cmd("MAIL FROM:<a@sender.test>"), "RCPT": c.cmd("RCPT TO:<b@example.test>")}
    if stage != "RCPT":
        replies["DATA"] = c.cmd("DATA")
    if stage == ".":
        replies["."] = c.cmd(b"Subject: x\r\n\r\nx\r\n.")
    assert replies[stage].code == code, "\n".join(c.transcript)
    assert s.messages() == []


def test_sink_stopped_refuses(sink_factory):
    s = sink_factory(None)
    with pytest.raises(OSError):
        RawSMTP(s.port)


def test_pysink_records_exact_bytes(pysink_factory):
    ps = pysink_factory(lambda a, n: "550 5.1.1 no" if a.startswith("bad@") else None)
    with smtplib.SMTP("127.0.0.1", ps.port, timeout=10) as s:
        refused = s.sendmail("a@sender.test", ["good@example.test", "bad@example.test"],
                             b"Subject: x\r\n\r\n.dot\r\nend\r\n")
    assert list(refused) == ["bad@example.test"]
    [tx] = ps.wait_delivered(1)
    assert tx.data == b"Subject: x\r\n\r\n.dot\r\nend\r\n"
    assert tx.rcpts == ["good@example.test"] and tx.rejected == ["bad@example.test"]
