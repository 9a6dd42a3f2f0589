"""Filtering end to end: the real binary, real unbound on loopback, real smtp-sink downstream.

Clients connect from 127.0.0.2-4 (127.0.0.1 is trusted and skips the network checks). The DNS world
is tests/dns/netcheck.conf plus dnsworld.world_records: 127.0.0.2 is listed in bl.test, 127.0.0.3 is
the only SPF-allowed sender for signed.test (DMARC p=reject, DKIM key generated per run), evil-shop.com
is listed in dbl.test. rDNS is not tested here (Levee's resolver answers 127/8 PTR queries itself):
test_netns_reputation.py covers it, with country and DNSBL, from non-loopback clients.

Needs: Debian `unbound`, `openssl`, `postfix` (smtp-sink). No Python packages beyond pytest.
"""

from __future__ import annotations

import re
import socket
import time
from email.utils import formatdate

import pytest

import dnsworld
from dnsworld import CLEAN_IP, CLEAN_HELO, FORGER_IP, LISTED_IP, SENDER_DOMAIN
from harness import IO_TIMEOUT, QUEUED_RE, RawSMTP, dot_stuff, unique_token

AUTHSERV = "mx.example.test"  # the harness's Levee hostname: the authserv-id of Authentication-Results
RCPT = "bob@example.test"
FINDING_RE = re.compile(r"([A-Z0-9_]+)\((-?[0-9]+\.[0-9]+)\)")


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One unbound for the module, with this run's DKIM key published."""
    key = dnsworld.DkimKey(tmp_path_factory.mktemp("dkim"))
    server = dnsworld.Unbound(dnsworld.world_records(key.public_b64))
    server.key = key
    yield server
    server.close()


def toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return f"{v}.0"  # every number below is an f64 in levee-config
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def filter_config(dns_addr: str, weights: dict[str, float], dns_timeout_ms: int = 2000,
                  connect_reject_at: float = 10.0, tag_at: float = 4.0, quarantine_at: float = 6.0,
                  reject_at: float = 15.0) -> str:
    lines = [
        "", "[checks]", f'dns_server = "{dns_addr}"', f"dns_timeout_ms = {dns_timeout_ms}",
        "rdns = true", "auth = true", f"connect_reject_at = {toml(connect_reject_at)}",
        "", "[[checks.dnsbl]]", 'zone = "bl.test"', 'symbol = "RBL_TEST"',
        "", "[[checks.uribl]]", 'zone = "dbl.test"', 'symbol = "URIBL_DBL"',
        "", "[policy]", f"tag_at = {toml(tag_at)}", f"quarantine_at = {toml(quarantine_at)}",
        f"reject_at = {toml(reject_at)}",
        "", "[policy.weights]",
    ]
    lines += [f"{k} = {toml(float(v))}" for k, v in weights.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def filtering_levee(levee_factory, sink):
    """make(dns_addr, weights, **policy) -> a started Levee relaying example.test to `sink`."""

    def make(dns_addr: str, weights: dict[str, float], **kw):
        lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}], start=False)
        with open(lv.config_path, "a") as f:
            f.write(filter_config(dns_addr, weights, **kw))
        return lv.start()

    return make


class Client(RawSMTP):
    """RawSMTP from a chosen loopback source address (RawSMTP itself always comes from 127.0.0.1)."""

    def __init__(self, port: int, source: str, timeout: float = IO_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buf = b""
        self.transcript = [f"(connected from {source})"]
        self.banner = self.reply()

    def send_message(self, mail_from: str, body: bytes, rcpt: str = RCPT):
        """One transaction on this session; returns the reply to the final dot."""
        r = self.cmd(f"MAIL FROM:<{mail_from}>")
        assert r and r.code == 250, f"MAIL: {r}\n{self.dump()}"
        r = self.cmd(f"RCPT TO:<{rcpt}>")
        assert r and r.code == 250, f"RCPT: {r}\n{self.dump()}"
        r = self.cmd("DATA")
        assert r and r.code == 354, f"DATA: {r}\n{self.dump()}"
        self.send(dot_stuff(body) + b".\r\n")
        return self.reply()

    def dump(self) -> str:
        return "\n".join(self.transcript)


def session(lv, source: str, helo: str = "client.test") -> Client:
    c = Client(lv.port, source)
    assert c.banner and c.banner.code == 220, f"banner from {source}: {c.banner}\n{c.dump()}"
    c.ehlo(helo)
    return c


def message(from_addr: str, token: str, body: str, subject: str = "Quarterly figures") -> bytes:
    text = (f"From: Alice <{from_addr}>\r\nTo: Bob <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: {formatdate(localtime=False)}\r\nMessage-ID: <{token}@{from_addr.split('@')[1]}>\r\n"
            f"\r\n{body}\r\n\r\nref {token}\r\n")
    return text.encode()


def queue_id(reply, c: Client) -> str:
    assert reply is not None and reply.code == 250, f"expected 250 after DATA, got {reply}\n{c.dump()}"
    m = QUEUED_RE.search(reply.text)
    assert m, f"no queue id in {reply}"
    return m.group(1)


def findings(msg) -> dict[str, float]:
    value = msg.header("X-Levee-Findings") or ""
    return {s: float(w) for s, w in FINDING_RE.findall(value)}


def one_at_sink(sink, token: str):
    return sink.wait_messages(1, pred=lambda m: token in m.text)[0]


def log_lines(lv, *needles: str) -> list[str]:
    return [l for l in lv.log().splitlines() if all(n in l for n in needles)]


def assert_never_delivered(sink, token: str, lv):
    got = [m.path for m in sink.messages() if token in m.text]
    assert not got, f"message {token} reached the sink: {got}\n{lv.log_tail()}"


# ----------------------------------------------------------------------------------------------
# 1. DNSBL at connect


def test_listed_client_refused_before_banner_unlisted_served(world, filtering_levee, sink):
    # The world is what the test assumes: 127.0.0.2 listed, 127.0.0.3 not.
    assert world.query("2.0.0.127.bl.test", dnsworld.TYPE_A).values(dnsworld.TYPE_A) == ["127.0.0.2"]
    assert world.query("3.0.0.127.bl.test", dnsworld.TYPE_A).rcode == 3

    lv = filtering_levee(world.addr, {"RBL_TEST": 20}, connect_reject_at=10.0)

    c = Client(lv.port, LISTED_IP)
    try:
        assert c.banner is not None, f"no reply at all:\n{c.dump()}"
        assert c.banner.code == 554, f"listed client got {c.banner}\n{c.dump()}"
        assert c.banner.text.startswith("5.7.1"), c.dump()
        assert "RBL_TEST" in c.banner.text, c.dump()
        assert not any(l.startswith("S: 220") for l in c.transcript), c.dump()
        # Refused means refused: the session does not go on to take commands.
        r = None
        try:
            r = c.cmd("EHLO client.test")
        except OSError:
            pass
        assert r is None or r.code >= 500, f"listed client could talk on: {r}\n{c.dump()}"
    finally:
        c.close()
    assert log_lines(lv, "refused at connect", LISTED_IP), lv.log_tail()

    token = unique_token("unlisted")
    c = session(lv, CLEAN_IP)
    try:
        qid = queue_id(c.send_message(f"alice@{SENDER_DOMAIN}", message(f"alice@{SENDER_DOMAIN}", token,
                                                                       "Hello Bob, the figures are attached.")), c)
    finally:
        c.close()
    m = one_at_sink(sink, token)
    assert m.header("X-Levee-Verdict") == "accept", m.header_text
    received = m.header("Received")
    assert f"[{CLEAN_IP}]" in received and qid in received, received
    assert "RBL_TEST" not in findings(m), m.header("X-Levee-Findings")


# ----------------------------------------------------------------------------------------------
# 2. SPF, DKIM, DMARC


def test_dkim_signed_spf_aligned_passes_with_authentication_results(world, filtering_levee, sink):
    lv = filtering_levee(world.addr, {"RBL_TEST": 20, "DMARC_POLICY_REJECT": 20})
    token = unique_token("signed")
    sender = f"alice@{SENDER_DOMAIN}"
    signed = world.key.sign(message(sender, token, "Hello Bob,\r\n\r\nLunch on Friday?\r\n.\r\nAlice"))
    c = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    try:
        queue_id(c.send_message(sender, signed), c)
    finally:
        c.close()
    m = one_at_sink(sink, token)
    ar = m.header("Authentication-Results")
    assert ar is not None, m.header_text
    assert re.match(rf"{re.escape(AUTHSERV)};", ar), ar
    for method in ("spf", "dkim", "dmarc"):
        assert re.search(rf"\b{method}=pass\b", ar), f"{method}=pass missing in: {ar}"
    assert f"header.d={SENDER_DOMAIN}" in ar or f"header.i=@{SENDER_DOMAIN}" in ar, ar
    f = findings(m)
    assert {"SPF_PASS", "DKIM_PASS", "DMARC_PASS"} <= f.keys(), m.header("X-Levee-Findings")
    assert "DMARC_POLICY_REJECT" not in f, f
    assert m.header("X-Levee-Verdict") == "accept", m.header_text
    # The signature survived the relay: the signed headers are still there, unchanged.
    assert m.header("DKIM-Signature") and f"d={SENDER_DOMAIN}" in m.header("DKIM-Signature")


def test_body_changed_after_signing_is_dkim_fail(world, filtering_levee, sink):
    """The control for the pass above: the same signer, one body byte changed in transit."""
    lv = filtering_levee(world.addr, {"RBL_TEST": 20, "DMARC_POLICY_REJECT": 20})
    token = unique_token("tampered")
    sender = f"alice@{SENDER_DOMAIN}"
    signed = world.key.sign(message(sender, token, "Pay invoice 1000 EUR."))
    tampered = signed.replace(b"1000 EUR", b"9000 EUR")
    assert tampered != signed
    c = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    try:
        queue_id(c.send_message(sender, tampered), c)
    finally:
        c.close()
    m = one_at_sink(sink, token)
    ar = m.header("Authentication-Results") or ""
    assert re.search(r"\bdkim=fail\b", ar), ar
    f = findings(m)
    assert "DKIM_FAIL" in f and "DKIM_PASS" not in f, m.header("X-Levee-Findings")
    # SPF still passes and is aligned, so DMARC passes on SPF alone.
    assert {"SPF_PASS", "DMARC_PASS"} <= f.keys(), m.header("X-Levee-Findings")


@pytest.mark.parametrize("weight,outcome", [(20, "reject"), (8, "quarantine")])
def test_forged_sender_dmarc_policy(world, filtering_levee, sink, weight, outcome):
    """SPF -all fails for 127.0.0.4, no signature, p=reject: DMARC_POLICY_REJECT, weighed as set."""
    lv = filtering_levee(world.addr, {"RBL_TEST": 20, "DMARC_POLICY_REJECT": weight})
    forged = unique_token("forged")
    clean = unique_token("clean")
    sender = f"ceo@{SENDER_DOMAIN}"
    c = session(lv, FORGER_IP, helo="forger.test")
    try:
        r = c.send_message(sender, message(sender, forged, "Please wire the money today."))
        if outcome == "reject":
            assert r is not None and r.code == 550, f"forged mail got {r}\n{c.dump()}"
            assert r.text.startswith("5.7.1"), c.dump()
            refused = log_lines(lv, "rejected", f"client={FORGER_IP}", "DMARC_POLICY_REJECT(20.00)")
            assert refused, lv.log_tail()
        else:
            qid = queue_id(r, c)
            assert log_lines(lv, qid, "verdict=quarantine"), lv.log_tail()
    finally:
        c.close()
    # The domain's real, signed mail from its SPF-allowed host still flows.
    c = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    try:
        queue_id(c.send_message(sender, world.key.sign(message(sender, clean, "Real one."))), c)
    finally:
        c.close()
    one_at_sink(sink, clean)
    assert_never_delivered(sink, forged, lv)


# ----------------------------------------------------------------------------------------------
# 3. URI blocklist


def test_listed_link_quarantined_clean_delivered(world, filtering_levee, sink):
    assert world.query("evil-shop.com.dbl.test", dnsworld.TYPE_A).values(dnsworld.TYPE_A) == ["127.0.1.2"]
    assert world.query("good-shop.org.dbl.test", dnsworld.TYPE_A).rcode == 3
    lv = filtering_levee(world.addr, {"RBL_TEST": 20, "URIBL_DBL": 7}, quarantine_at=6.0, reject_at=15.0)
    spam, ham = unique_token("uribl"), unique_token("clean")
    sender = f"alice@{SENDER_DOMAIN}"
    # Two sessions open at once, the listed link's message first.
    a = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    b = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    try:
        spam_id = queue_id(a.send_message(sender, message(
            sender, spam, "Best prices: https://www.evil-shop.com/deals?id=7 today only.")), a)
        ham_id = queue_id(b.send_message(sender, message(
            sender, ham, "The catalogue is at https://good-shop.org/catalogue as promised.")), b)
    finally:
        a.close()
        b.close()
    assert spam_id != ham_id
    m = one_at_sink(sink, ham)
    assert m.header("X-Levee-Verdict") == "accept", m.header_text
    assert "URIBL_DBL" not in findings(m), m.header("X-Levee-Findings")
    quarantined = log_lines(lv, spam_id, "verdict=quarantine")
    assert quarantined, f"no `verdict=quarantine` log line for {spam_id}:\n{lv.log_tail()}"
    assert not log_lines(lv, ham_id, "verdict=quarantine"), lv.log_tail()
    # Give a wrongly queued message time to be delivered (the retry schedule starts at 1 s).
    time.sleep(2)
    assert_never_delivered(sink, spam, lv)


# ----------------------------------------------------------------------------------------------
# 4. GTUBE


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def test_gtube_rejected_at_end_of_data(world, filtering_levee, sink):
    lv = filtering_levee(world.addr, {"RBL_TEST": 20})
    spam, ham = unique_token("gtube"), unique_token("clean")
    sender = f"alice@{SENDER_DOMAIN}"
    c = session(lv, CLEAN_IP, helo=CLEAN_HELO)
    try:
        r = c.send_message(sender, message(sender, spam, f"This is a test.\r\n{GTUBE}\r\n"))
        assert r is not None and r.code == 550, f"GTUBE got {r}\n{c.dump()}"
        assert "queued" not in r.text, c.dump()
        # Rejected at end of DATA, the session stays usable.
        queue_id(c.send_message(sender, message(sender, ham, "No test string here.")), c)
    finally:
        c.close()
    one_at_sink(sink, ham)
    assert log_lines(lv, "rejected", "GTUBE"), lv.log_tail()
    assert_never_delivered(sink, spam, lv)


# ----------------------------------------------------------------------------------------------
# 5. DNS down


def test_unreachable_dns_mail_still_flows_with_timeout_findings(filtering_levee, sink):
    hole = dnsworld.BlackHole()
    try:
        # Heavy weights on the listings: a timeout read as a listing would refuse or reject.
        lv = filtering_levee(hole.addr, {"RBL_TEST": 20, "URIBL_DBL": 20, "DMARC_POLICY_REJECT": 20},
                             dns_timeout_ms=300)
        token = unique_token("dnsdown")
        sender = f"alice@{SENDER_DOMAIN}"
        start = time.monotonic()
        c = session(lv, CLEAN_IP, helo=CLEAN_HELO)
        try:
            queue_id(c.send_message(sender, message(
                sender, token, "Link: https://www.evil-shop.com/deals and nothing else.")), c)
        finally:
            c.close()
        took = time.monotonic() - start
        m = one_at_sink(sink, token)
    finally:
        hole.close()
    f = findings(m)
    timeouts = {s: w for s, w in f.items() if s.endswith("_TIMEOUT")}
    assert "RBL_TEST_TIMEOUT" in timeouts, m.header("X-Levee-Findings")
    assert "URIBL_DBL_TIMEOUT" in timeouts, m.header("X-Levee-Findings")
    assert all(w == 0.0 for w in timeouts.values()), timeouts
    # SPF and DMARC go through mail-auth, which reports an unanswered lookup as temperror.
    temperrors = {s: w for s, w in f.items() if s in ("SPF_TEMPERROR", "DMARC_TEMPERROR")}
    assert temperrors == {"SPF_TEMPERROR": 0.0, "DMARC_TEMPERROR": 0.0}, m.header("X-Levee-Findings")
    assert "RBL_TEST" not in f and "URIBL_DBL" not in f, f
    assert m.header("X-Levee-Verdict") == "accept", m.header_text
    assert float(m.header("X-Levee-Score")) < 4.0, m.header_text
    ar = m.header("Authentication-Results") or ""
    assert "temperror" in ar, ar
    # Short timeouts keep the session moving (the stage deadlines are 8 s and 20 s).
    assert took < 15, f"transaction took {took:.1f}s with an unreachable DNS server"


# ----------------------------------------------------------------------------------------------
# 6. Pregreet: a client that talks before the banner is a bot (postscreen's test).


def test_pregreeting_client_is_refused_and_a_patient_one_served(world, filtering_levee, sink):
    lv = filtering_levee(world.addr, {})
    s = socket.create_connection(("127.0.0.1", lv.port), timeout=IO_TIMEOUT, source_address=(CLEAN_IP, 0))
    try:
        # Talk at once, before any banner can have been sent (the pause is 1 s).
        s.sendall(b"EHLO bot.test\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"554 5.5.1"), data
        assert b"220 " not in data, data
    finally:
        s.close()
    assert log_lines(lv, "pregreet", CLEAN_IP), lv.log_tail()
    # A client that waits for the banner is served as usual.
    c = session(lv, CLEAN_IP)
    c.close()
