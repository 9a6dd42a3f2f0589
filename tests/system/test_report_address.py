"""Report addresses end to end: a user forwards spam as an attachment to spam@<hostname>.

The real binary, smtplib as the reporting client on 127.0.0.1. example.test's downstream is
127.0.0.1 (the sink), so its users reporting from loopback come from their own mail server and
are authorised; other.test's downstream is elsewhere, so its users on loopback are not (no SPF or
DKIM either: loopback skips the network checks). A report is the reporter's vote: it shapes the
reporter's own verdicts at once (the same message is then held for them) and reaches the global
model only through validated batches, so the model's counts, which Levee logs when it starts
again, do not move.
"""

from __future__ import annotations

import re
import smtplib
from email import policy
from email.message import EmailMessage

import pytest

from harness import IO_TIMEOUT

HOST = "mx.example.test"  # the harness's Levee hostname


@pytest.fixture
def reports_levee(levee_factory, sink):
    return levee_factory([
        {"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
        {"name": "other.test", "downstream": "192.0.2.25:25"},
    ])


def spam_message(n: int = 0) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "winner@lottery.invalid"
    m["To"] = "bob@example.test"
    m["Subject"] = f"You have won {n}"
    m.set_content(f"Claim your prize {n} now: cheap pills, casino bonus, wire transfer.\n")
    return m


def report(reporter: str, to: str, attached: list[EmailMessage]) -> bytes:
    m = EmailMessage()
    m["From"] = reporter
    m["To"] = to
    m["Subject"] = "this got through"
    m.set_content("Forwarded as attachment.\n")
    for a in attached:
        m.add_attachment(a)
    return m.as_bytes(policy=policy.SMTP)


def send(lv, mail_from: str, rcpts: list[str], data: bytes):
    """(rcpt replies, data reply or None) of one transaction."""
    with smtplib.SMTP("127.0.0.1", lv.port, timeout=IO_TIMEOUT) as s:
        s.ehlo("client.test")
        s.mail(mail_from)
        rr = [s.rcpt(r) for r in rcpts]
        if not any(code == 250 for code, _ in rr):
            return rr, None
        code, text = s.data(data)
        return rr, (code, text.decode(errors="replace"))


def model_counts(lv) -> tuple[int, int]:
    """The (spam, ham) counts of the stored model, as Levee logs them when it starts."""
    lv.restart()
    line = [l for l in lv.log_tail(400).splitlines() if "Bayes model loaded" in l][-1]
    return int(re.search(r"nspam=(\d+)", line).group(1)), int(re.search(r"nham=(\d+)", line).group(1))


def test_authorised_report_is_learned_and_not_delivered(reports_levee, sink):
    lv = reports_levee
    rr, data = send(lv, "bob@example.test", [f"spam@{HOST}"],
                    report("bob@example.test", f"spam@{HOST}", [spam_message(1), spam_message(2)]))
    assert rr[0][0] == 250, rr
    assert data == (250, "2.0.0 report received: 2 message(s) learned as spam"), data
    rr, data = send(lv, "bob@example.test", [f"HAM@{HOST.upper()}"],
                    report("Bob@Example.test", f"ham@{HOST}", [spam_message(3)]))
    assert data and data[0] == 250 and "1 message(s) learned as ham" in data[1], data
    assert "report received" in lv.log()
    votes = [l for l in lv.log().splitlines() if " vote " in l and "voter=bob@example.test" in l]
    assert [("spam=true" in l) for l in votes] == [True, True, False], votes
    # Consumed: nothing reached the downstream, nothing was queued.
    assert sink.messages() == []
    assert "accepted" not in lv.log()
    # Bob's own verdict follows his vote: the reported message is now held for him, and only
    # for him (alice never voted).
    for rcpt in ("bob@example.test", "alice@example.test"):
        rr, data = send(lv, "winner@lottery.invalid", [rcpt], spam_message(1).as_bytes(policy=policy.SMTP))
        assert data and data[0] == 250, data
    verdicts = {rcpt: re.search(r"verdict=(\w+)", l).group(1)
                for l in lv.log().splitlines() if " accepted " in l or l.endswith(" accepted")
                for rcpt in ("bob@example.test", "alice@example.test") if f"to={rcpt}" in l}
    assert verdicts["bob@example.test"] == "quarantine", lv.log_tail()
    assert verdicts["alice@example.test"] != "quarantine", lv.log_tail()
    # One user's reports never steer the global model directly.
    assert model_counts(lv) == (0, 0)


def test_unauthorised_reports_are_refused(reports_levee):
    lv = reports_levee
    # A user of a configured domain, but not from its mail server and not authenticated.
    _, data = send(lv, "eve@other.test", [f"spam@{HOST}"],
                   report("eve@other.test", f"spam@{HOST}", [spam_message()]))
    assert data and data[0] == 550 and data[1].startswith("5.7.1 report refused"), data
    # Not a user of the gateway's domains at all.
    _, data = send(lv, "mallory@elsewhere.test", [f"spam@{HOST}"],
                   report("mallory@elsewhere.test", f"spam@{HOST}", [spam_message()]))
    assert data and data[0] == 550 and "5.7.1" in data[1], data
    assert model_counts(lv) == (0, 0)


def test_report_without_an_attachment_is_refused(reports_levee):
    m = EmailMessage()
    m["From"] = "bob@example.test"
    m["Subject"] = "spam"
    m.set_content("I got spam, pasted below: buy now\n")
    _, data = send(reports_levee, "bob@example.test", [f"spam@{HOST}"], m.as_bytes(policy=policy.SMTP))
    assert data and data[0] == 550 and data[1].startswith("5.6.0") and "attachment" in data[1], data


def test_only_the_two_exact_addresses_are_accepted(reports_levee):
    lv = reports_levee
    for rcpt in ["spam@otherhost.test", f"abuse@{HOST}", f"spam+x@{HOST}", f"spam@sub.{HOST}"]:
        rr, data = send(lv, "bob@example.test", [rcpt], b"Subject: x\r\n\r\nx\r\n")
        assert data is None and rr[0][0] == 550, (rcpt, rr)
        assert b"relay access denied" in rr[0][1], (rcpt, rr)
    # A report travels alone: an ordinary recipient after it is deferred to its own transaction.
    rr, _ = send(lv, "bob@example.test", [f"spam@{HOST}", "alice@example.test"],
                 report("bob@example.test", f"spam@{HOST}", [spam_message()]))
    assert rr[0][0] == 250 and rr[1][0] == 452, rr
