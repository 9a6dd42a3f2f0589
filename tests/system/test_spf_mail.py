"""SPF at MAIL FROM end to end: the real binary, real unbound on loopback, real smtp-sink downstream.

spf-fail.test publishes `v=spf1 ip4:127.0.0.3 -all`. With SPF_FAIL weighing 20 and reject_at 15, a
client at 127.0.0.4 sending as that domain is refused at RCPT (550 5.7.23, naming SPF) before any
data is sent, while 127.0.0.3 sending as the same domain is delivered with `spf=pass` in the
Authentication-Results header, the result found at MAIL. A domain whose own policy has a higher
reject_at takes the forged sender's mail in the very same transaction, and its
Authentication-Results carries the MAIL-stage `spf=fail`.

127.0.0.1 is trusted (no network checks), so clients use 127.0.0.3 and 127.0.0.4.
Needs: Debian `unbound`, postfix (smtp-sink).
"""

from __future__ import annotations

import socket

import pytest

import dnsworld
from harness import IO_TIMEOUT, QUEUED_RE, RawSMTP, dot_stuff, unique_token

PASS_IP, FAIL_IP = "127.0.0.3", "127.0.0.4"
SPF_DOMAIN = "spf-fail.test"
RECORDS = f"local-data: '{SPF_DOMAIN}. 300 IN TXT \"v=spf1 ip4:{PASS_IP} -all\"'\n"


@pytest.fixture(scope="module")
def dns():
    server = dnsworld.Unbound(RECORDS)
    yield server
    server.close()


def start(levee_factory, sink, dns_addr: str):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}], start=False)
    with open(lv.config_path, "a") as f:
        f.write(f"""
[[domain]]
name = "lenient.test"
downstream = "127.0.0.1:{sink.port}"

[domain.policy]
quarantine_at = 50.0
reject_at = 100.0

[checks]
dns_server = "{dns_addr}"
auth = true

[policy]
tag_at = 4.0
quarantine_at = 6.0
reject_at = 15.0

[policy.weights]
SPF_FAIL = 20.0
""")
    return lv.start()


class Client(RawSMTP):
    """RawSMTP from a chosen loopback source address."""

    def __init__(self, port: int, source: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT, source_address=(source, 0))
        self.sock.settimeout(IO_TIMEOUT)
        self.buf = b""
        self.transcript = [f"(connected from {source})"]
        self.banner = self.reply()

    def dump(self) -> str:
        return "\n".join(self.transcript)


def message(token: str, to: str) -> bytes:
    from email.utils import formatdate
    return (f"From: Alice <alice@{SPF_DOMAIN}>\r\nTo: {to}\r\nSubject: figures {token}\r\n"
            f"Date: {formatdate(localtime=False)}\r\nMessage-ID: <{token}@{SPF_DOMAIN}>\r\n\r\n"
            f"The figures are attached.\r\nref {token}\r\n").encode()


def test_spf_fail_refused_at_rcpt_and_pass_delivered(dns, levee_factory, sink):
    assert dns.query(SPF_DOMAIN, dnsworld.TYPE_TXT).values(dnsworld.TYPE_TXT) == [f"v=spf1 ip4:{PASS_IP} -all"]
    lv = start(levee_factory, sink, dns.addr)
    sender = f"alice@{SPF_DOMAIN}"

    # The forger: refused at RCPT for example.test, nothing accepted, so nothing to bounce.
    c = Client(lv.port, FAIL_IP)
    try:
        assert c.banner and c.banner.code == 220, c.dump()
        c.ehlo("mail.elsewhere.test")
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert r and r.code == 250, c.dump()
        r = c.cmd("RCPT TO:<bob@example.test>")
        assert r and r.code == 550, c.dump()
        assert "5.7.23" in r.text and "SPF" in r.text and SPF_DOMAIN in r.text, c.dump()
        # The same transaction to a domain whose policy would not reject: taken, judged, and
        # stamped with the SPF result found at MAIL.
        token = unique_token("spf-lenient")
        r = c.cmd("RCPT TO:<carol@lenient.test>")
        assert r and r.code == 250, c.dump()
        r = c.cmd("DATA")
        assert r and r.code == 354, c.dump()
        c.send(dot_stuff(message(token, "carol@lenient.test")) + b".\r\n")
        r = c.reply()
        assert r and r.code == 250 and QUEUED_RE.search(r.text), c.dump()
    finally:
        c.close()
    m = sink.wait_messages(1, pred=lambda m: token in m.text)[0]
    assert [x.strip("<>") for x in m.rcpts] == ["carol@lenient.test"], m.rcpts
    ar = m.header("Authentication-Results") or ""
    assert "spf=fail" in ar and SPF_DOMAIN in ar, m.header_text
    assert "SPF_FAIL(20.00)" in (m.header("X-Levee-Findings") or ""), m.header_text
    refused = [l for l in lv.log().splitlines() if "refused at RCPT" in l]
    assert refused and "SPF_FAIL" in refused[0], lv.log_tail()

    # The authorised host: delivered to example.test with spf=pass.
    token = unique_token("spf-pass")
    c = Client(lv.port, PASS_IP)
    try:
        assert c.banner and c.banner.code == 220, c.dump()
        c.ehlo("mail.spf-fail.test")
        for cmd, want in [(f"MAIL FROM:<{sender}>", 250), ("RCPT TO:<bob@example.test>", 250), ("DATA", 354)]:
            r = c.cmd(cmd)
            assert r and r.code == want, f"{cmd}: {r}\n{c.dump()}"
        c.send(dot_stuff(message(token, "bob@example.test")) + b".\r\n")
        r = c.reply()
        assert r and r.code == 250, c.dump()
    finally:
        c.close()
    m = sink.wait_messages(1, pred=lambda m: token in m.text)[0]
    ar = m.header("Authentication-Results") or ""
    assert ar.startswith("mx.example.test") and "spf=pass" in ar, m.header_text
    assert "SPF_PASS" in (m.header("X-Levee-Findings") or ""), m.header_text
    assert m.header("X-Levee-Verdict") in ("accept", "tag"), m.header_text
