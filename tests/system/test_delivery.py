"""Outbound delivery: DSNs (RFC 3464), retries on 4xx, maximum lifetime, partial failure, load."""

import email
import email.policy
import subprocess
import time

from harness import SMTP_SOURCE, head, send_raw_message, unique_token, wait_until


def routes(example_port, sender_port):
    """example.test -> the downstream under test; sender.test -> where DSNs land."""
    return [{"name": "example.test", "downstream": f"127.0.0.1:{example_port}"},
            {"name": "sender.test", "downstream": f"127.0.0.1:{sender_port}"}]


def parse_dsn(text: str):
    msg = email.message_from_string(text, policy=email.policy.compat32)
    ctype = msg.get("Content-Type", "")
    assert msg.get_content_type() == "multipart/report", f"DSN Content-Type: {ctype!r}\n{text}"
    assert msg.get_param("report-type") == "delivery-status", f"DSN Content-Type: {ctype!r}"
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, f"DSN must have >= 2 parts:\n{text}"
    assert parts[1].get_content_type() == "message/delivery-status", [p.get_content_type() for p in parts]
    # compat32 parses message/delivery-status into a list of header blocks: per-message, then per-recipient.
    blocks = parts[1].get_payload()
    if isinstance(blocks, str):
        raw = blocks
    else:
        raw = "\n\n".join(b.as_string() if hasattr(b, "as_string") else str(b) for b in blocks)
    return msg, parts, raw


def is_dsn(m):
    return "multipart/report" in (m.header("Content-Type") or "")


def dsn_fields(raw: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in raw.replace("\r\n", "\n").split("\n"):
        if ":" in line and line[:1] not in " \t":
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), []).append(v.strip())
    return out


def test_5xx_sends_dsn_to_sender(levee_factory, pysink_factory, sink):
    down = pysink_factory(lambda addr, n: "550 5.1.1 no such user")
    lv = levee_factory(routes(down.port, sink.port))
    tok = unique_token("dsn5")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"],
                            f"{head(tok)}\r\nbody\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [dsn] = sink.wait_messages(1, pred=is_dsn)
    assert dsn.mail_from == "<>", f"a DSN is sent from the null sender, got MAIL FROM {dsn.mail_from}"
    assert dsn.rcpts == ["<alice@sender.test>"]
    _, parts, raw = parse_dsn(dsn.text)
    f = dsn_fields(raw)
    assert any("bob@example.test" in v for v in f.get("final-recipient", [])), raw
    assert f.get("action") == ["failed"], raw
    assert f.get("status", [""])[0].startswith("5."), raw
    assert any("550" in v for v in f.get("diagnostic-code", [])), raw
    assert tok in dsn.text, "the DSN should return the original headers"
    assert down.delivered() == [], "the downstream refused; nothing is delivered there"
    time.sleep(3)
    assert len([m for m in sink.messages() if is_dsn(m)]) == 1, "exactly one DSN"
    # A permanent failure is not retried.
    assert down.rcpt_counts.get("bob@example.test") == 1, down.rcpt_counts


def test_null_sender_5xx_no_dsn(levee_factory, pysink_factory, sink):
    down = pysink_factory(lambda addr, n: "550 5.1.1 no such user")
    lv = levee_factory(routes(down.port, sink.port))
    tok = unique_token("nulldsn")
    r, c = send_raw_message(lv.port, "", ["bob@example.test"], f"{head(tok)}\r\nbounce\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    # Proof that delivery was attempted (so "no DSN" is meaningful), then room for a DSN to appear.
    wait_until(lambda: down.rcpt_counts.get("bob@example.test"), 20, what="a delivery attempt")
    time.sleep(5)
    assert sink.messages() == [], f"no DSN for a null sender, got: {[m.text for m in sink.messages()]}"
    assert [t for t in down.transactions if t.mail_from == "" and t.delivered] == []


def test_4xx_is_retried_then_delivered(levee_factory, pysink_factory, sink):
    down = pysink_factory(lambda addr, n: "451 4.3.0 try later" if n <= 2 else None)
    lv = levee_factory(routes(down.port, sink.port))
    tok = unique_token("retry4")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"{head(tok)}\r\nx\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [tx] = down.wait_delivered(1, timeout=40)
    assert tok.encode() in tx.data
    assert down.rcpt_counts["bob@example.test"] == 3, down.rcpt_counts
    time.sleep(3)
    assert len(down.delivered()) == 1
    assert [m for m in sink.messages() if is_dsn(m)] == [], "a temporary failure that then succeeded needs no DSN"


def test_4xx_at_end_of_data_retried_with_postfix_sink(levee_factory, sink_factory):
    """Same with Postfix's smtp-sink refusing the final dot with 450, then accepting."""
    down = sink_factory("dot4xx")
    dsn_sink = sink_factory("ok")
    lv = levee_factory(routes(down.port, dsn_sink.port))
    tok = unique_token("dot4")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"{head(tok)}\r\nx\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    wait_until(lambda: len([m for m in down.attempts() if tok in m.text]) >= 2, 30, what="two refused attempts")
    down.start("ok")
    down.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(3)
    assert len([m for m in down.messages() if tok in m.text]) == 1
    assert dsn_sink.messages() == []


def test_max_lifetime_dsn(levee_factory, sink_factory, sink):
    down = sink_factory(None)  # never comes up
    lv = levee_factory(routes(down.port, sink.port), delivery={"max_lifetime_secs": 4})
    tok = unique_token("life")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["bob@example.test"], f"{head(tok)}\r\nx\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [dsn] = sink.wait_messages(1, timeout=40, pred=is_dsn)
    assert dsn.rcpts == ["<alice@sender.test>"] and dsn.mail_from == "<>"
    _, _, raw = parse_dsn(dsn.text)
    f = dsn_fields(raw)
    assert any("bob@example.test" in v for v in f.get("final-recipient", [])), raw
    assert f.get("action") == ["failed"], raw
    assert f.get("status", [""])[0].startswith(("4.", "5.")), raw
    # Expired means gone: bringing the downstream up later delivers nothing.
    down.start("ok")
    time.sleep(5)
    assert down.messages() == [], "an expired message was still delivered"


def test_partial_rejection_one_delivery_one_dsn(levee_factory, pysink_factory, sink):
    down = pysink_factory(lambda addr, n: "550 5.1.1 unknown user" if addr.lower().startswith("bad@") else None)
    lv = levee_factory(routes(down.port, sink.port))
    tok = unique_token("partial")
    r, c = send_raw_message(lv.port, "alice@sender.test", ["good@example.test", "bad@example.test"],
                            f"{head(tok)}\r\ntwo rcpts\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [tx] = down.wait_delivered(1)
    assert tx.rcpts == ["good@example.test"] and tok.encode() in tx.data
    [dsn] = sink.wait_messages(1, pred=is_dsn)
    assert dsn.rcpts == ["<alice@sender.test>"]
    _, _, raw = parse_dsn(dsn.text)
    finals = dsn_fields(raw).get("final-recipient", [])
    assert len(finals) == 1 and "bad@example.test" in finals[0], raw
    assert "good@example.test" not in raw, "the delivered recipient must not be reported as failed"
    time.sleep(3)
    assert len(down.delivered()) == 1, "the good recipient gets exactly one copy"
    assert len([m for m in sink.messages() if is_dsn(m)]) == 1


def test_smtp_source_load_all_arrive(levee_factory, sink):
    lv = levee_factory(routes(sink.port, sink.port))
    argv = [SMTP_SOURCE, "-s", "5", "-m", "50", "-c", "-f", "from@sender.test", "-t", "to@example.test",
            "-S", "levee-load", f"127.0.0.1:{lv.port}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"smtp-source failed:\n{r.stdout}\n{r.stderr}"
    sink.wait_messages(50, timeout=90, pred=lambda m: m.rcpts == ["<to@example.test>"])
    time.sleep(3)
    got = [m for m in sink.messages() if m.rcpts == ["<to@example.test>"]]
    assert len(got) == 50, f"expected 50 at the sink, got {len(got)}"


def test_recipients_at_two_domains_each_get_one_copy(levee_factory, pysink_factory, sink):
    ps = pysink_factory()
    lv = levee_factory(routes(ps.port, sink.port))
    tok = unique_token("split")
    r, c = send_raw_message(lv.port, "carol@elsewhere.test", ["a@example.test", "b@sender.test", "c@example.test"],
                            f"{head(tok)}\r\nsplit\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [tx] = ps.wait_delivered(1)
    assert sorted(tx.rcpts) == ["a@example.test", "c@example.test"], tx
    [m] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    assert m.rcpts == ["<b@sender.test>"]
    time.sleep(3)
    assert len(ps.delivered()) == 1 and len([m for m in sink.messages() if tok in m.text]) == 1


def test_dsn_that_bounces_is_not_bounced_again(levee_factory, pysink_factory):
    """The sender's own domain rejects too: the DSN (from <>) fails and nothing more is sent."""
    down = pysink_factory(lambda addr, n: "550 5.1.1 nobody here")
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{down.port}"}])
    tok = unique_token("loop")
    r, c = send_raw_message(lv.port, "alice@example.test", ["bob@example.test"], f"{head(tok)}\r\nx\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    wait_until(lambda: down.rcpt_counts.get("alice@example.test"), 30, what="the DSN delivery attempt")
    time.sleep(6)
    assert down.rcpt_counts == {"bob@example.test": 1, "alice@example.test": 1}, down.rcpt_counts
    dsn_tx = [t for t in down.transactions if "alice@example.test" in t.rejected]
    assert dsn_tx and all(t.mail_from == "" for t in dsn_tx), "a DSN is sent from <>"
    assert lv.alive()
