"""Per-domain policy overrides end to end: the real binary, real SMTP, real smtp-sink downstream.

Three domains share one downstream and one global policy (tag 4, quarantine 6, reject 15) in which
MISSING_DATE weighs 5, so a message without a Date header scores about 5 everywhere. Each domain's
own `[domain.policy]` turns that same score into a different outcome:

- lenient.test: no overrides, so the message is tagged and delivered;
- held.test: quarantine_at 4.5, so its copy is quarantined;
- strict.test: reject_at 4.5, so alone it is refused at the end of DATA, and beside the others its
  copy is held rather than bounced (REJECT_HELD).

Clients come from 127.0.0.1 (trusted: no network checks), so only the content findings count.
Needs: postfix (smtp-sink).
"""

from __future__ import annotations

import re
import time

from harness import QUEUED_RE, send_raw_message, unique_token

FINDING_RE = re.compile(r"([A-Z0-9_]+)\((-?[0-9]+\.[0-9]+)\)")

POLICY = """
[[domain]]
name = "held.test"
downstream = "127.0.0.1:{port}"

[domain.policy]
quarantine_at = 4.5

[[domain]]
name = "strict.test"
downstream = "127.0.0.1:{port}"

[domain.policy]
tag_at = 1.0
quarantine_at = 2.0
reject_at = 4.5

[policy]
tag_at = 4.0
quarantine_at = 6.0
reject_at = 15.0

[policy.weights]
MISSING_DATE = 5.0
"""


def undated(token: str) -> bytes:
    """A plain message without a Date header (MISSING_DATE), otherwise ordinary."""
    return (f"From: Alice <alice@sender.test>\r\nTo: team@lenient.test\r\nSubject: plans {token}\r\n"
            f"Message-ID: <{token}@sender.test>\r\n\r\n"
            f"The plans for next week are below.\r\nref {token}\r\n").encode()


def start(levee_factory, sink):
    lv = levee_factory([{"name": "lenient.test", "downstream": f"127.0.0.1:{sink.port}"}], start=False)
    with open(lv.config_path, "a") as f:
        f.write(POLICY.format(port=sink.port))
    return lv.start()


def accepted_line(lv, rcpt: str, token_ids: list[str]) -> str:
    """The relay's `accepted` log line of the copy for `rcpt` among this message's queue ids."""
    for line in lv.log().splitlines():
        if "accepted" in line and rcpt in line and any(i in line for i in token_ids):
            return line
    raise AssertionError(f"no `accepted` line for {rcpt} ({token_ids}):\n{lv.log_tail()}")


def test_same_message_gets_each_recipient_domains_outcome(levee_factory, sink):
    lv = start(levee_factory, sink)
    token = unique_token("dompol")
    rcpts = ["a@lenient.test", "b@held.test", "c@strict.test"]
    reply, c = send_raw_message(lv.port, "alice@sender.test", rcpts, undated(token))
    c.close()
    assert reply is not None and reply.code == 250, f"{reply}\n" + "\n".join(c.transcript)
    ids = re.findall(r"\b[0-9A-Fa-f]{16}\b", reply.text)
    assert QUEUED_RE.search(reply.text) and len(ids) == 3, f"one stored copy per outcome: {reply}"

    # lenient.test: tagged and delivered, alone, with its own truthful score and findings.
    m = sink.wait_messages(1, pred=lambda m: token in m.text)[0]
    assert [r.strip("<>") for r in m.rcpts] == ["a@lenient.test"], m.rcpts
    assert m.header("X-Levee-Verdict") == "tag", m.header_text
    score = float(m.header("X-Levee-Score"))
    assert 4.0 <= score < 6.0, m.header_text
    found = dict(FINDING_RE.findall(m.header("X-Levee-Findings") or ""))
    assert float(found.get("MISSING_DATE", "nan")) == 5.0, m.header_text
    assert "REJECT_HELD" not in found, m.header_text

    # held.test: quarantined by its lower quarantine_at; strict.test: past its reject_at, but the
    # message was taken for the others, so held too instead of bounced or dropped.
    held = accepted_line(lv, "b@held.test", ids)
    strict = accepted_line(lv, "c@strict.test", ids)
    assert "verdict=quarantine" in held and "verdict=quarantine" in strict, f"{held}\n{strict}"
    assert "lenient.test" not in held and "lenient.test" not in strict, f"{held}\n{strict}"
    assert "verdict=tag" in accepted_line(lv, "a@lenient.test", ids)
    # Give a wrongly released copy time to arrive (retries start after 1 s).
    time.sleep(2)
    arrived = [m for m in sink.messages() if token in m.text]
    assert len(arrived) == 1, [(m.rcpts, m.path) for m in arrived]


def test_message_refused_only_when_every_recipients_policy_refuses(levee_factory, sink):
    lv = start(levee_factory, sink)
    token = unique_token("dompol-rej")
    reply, c = send_raw_message(lv.port, "alice@sender.test", ["c@strict.test"], undated(token))
    try:
        assert reply is not None and reply.code == 550, f"{reply}\n" + "\n".join(c.transcript)
        assert "queued" not in reply.text
        # The same message for lenient.test in the same session is taken: the policy was
        # the domain's, not the message's.
        for cmd, want in [("RSET", 250), ("MAIL FROM:<alice@sender.test>", 250),
                          ("RCPT TO:<a@lenient.test>", 250), ("DATA", 354)]:
            r = c.cmd(cmd)
            assert r and r.code == want, f"{cmd}: {r}\n" + "\n".join(c.transcript)
        c.send(undated(token) + b".\r\n")
        r = c.reply()
        assert r is not None and r.code == 250, f"{r}\n" + "\n".join(c.transcript)
    finally:
        c.close()
    m = sink.wait_messages(1, pred=lambda m: token in m.text)[0]
    assert [r.strip("<>") for r in m.rcpts] == ["a@lenient.test"], m.rcpts
    assert m.header("X-Levee-Verdict") == "tag", m.header_text
    assert any("rejected" in l and "MISSING_DATE" in l for l in lv.log().splitlines()), lv.log_tail()
