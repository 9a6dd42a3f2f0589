"""Basic SMTP service: swaks, smtplib+STARTTLS, pipelining, BDAT, and the small commands."""

import re
import smtplib
import ssl

from harness import QUEUED_RE, ehlo_keywords, head, RawSMTP, send_raw_message, unique_token

ADDED_HEADERS = {"received", "x-levee-verdict", "x-levee-score", "x-levee-stamp"}
# The design also names Authentication-Results as a header Levee may prepend.
ALLOWED_ADDED = ADDED_HEADERS | {"authentication-results", "x-levee-findings"}


def split_prepended(delivered: str, original: str) -> list[tuple[str, str]]:
    """Assert `delivered` == <header fields> + `original` and return those prepended fields."""
    assert delivered.endswith(original), (
        f"delivered message does not end with the original byte for byte\n--- delivered ---\n{delivered}"
        f"\n--- original ---\n{original}")
    prefix = delivered[: len(delivered) - len(original)]
    fields: list[tuple[str, str]] = []
    for line in prefix.split("\n")[:-1] if prefix else []:
        if line[:1] in (" ", "\t"):
            assert fields, f"continuation line first in the prepended block: {line!r}"
            fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line)
        else:
            assert re.match(r"^[!-9;-~]+:", line), f"not a header field in the prepended block: {line!r}"
            k, v = line.split(":", 1)
            fields.append((k, v.strip()))
    if prefix:
        assert prefix.endswith("\n"), "prepended block must end at a line end"
    names = {k.lower() for k, _ in fields}
    assert ADDED_HEADERS <= names, f"missing prepended headers: {ADDED_HEADERS - names}; got {fields}"
    # Which extra fields may appear is checked once, in test_prepended_headers_are_the_contract_set.
    return fields


def field(fields, name):
    vals = [v for k, v in fields if k.lower() == name]
    assert len(vals) == 1, f"{name}: expected exactly one, got {vals}"
    return vals[0]


ORIGINAL = (
    "From: Alice <alice@sender.test>\n"
    "To: Bob <bob@example.test>\n"
    "Subject: {tok}\n"
    "Date: Sun, 22 Nov 2026 12:00:00 +0000\n"
    "Message-ID: <{tok}@sender.test>\n"
    "X-Odd:   spaces   and\ttabs  \n"
    "\tfolded continuation\n"
    "\n"
    "First line.\n"
    ".a line starting with a dot\n"
    "..two dots\n"
    "\n"
    "   indented\ttab\n"
    "{long}\n"
    "last line\n"
)


def test_swaks_plain_delivered_byte_exact(levee, sink, tmp_path):
    stamps = []
    for i in range(2):
        tok = unique_token(f"basic{i}")
        original = ORIGINAL.format(tok=tok, long="x" * 900)
        f = tmp_path / f"m{i}.eml"
        f.write_bytes(original.replace("\n", "\r\n").encode()[:-2])  # swaks adds the last CRLF itself
        r = levee.swaks("-f", "alice@sender.test", "-t", "bob@example.test", "--data", str(f))
        assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        m = QUEUED_RE.search(r.stdout)
        assert m, f"no `queued as <16 hex>` in the 250 reply:\n{r.stdout}"
        qid = m.group(1)
        [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
        assert msg.mail_from == "<alice@sender.test>"
        assert msg.rcpts == ["<bob@example.test>"]
        fields = split_prepended(msg.text, original)
        assert qid.lower() in field(fields, "received").lower(), "Received must carry the queue id"
        assert field(fields, "x-levee-verdict").split()[0] == "accept"
        assert re.fullmatch(r"-?\d+(\.\d+)?", field(fields, "x-levee-score")), field(fields, "x-levee-score")
        stamp = field(fields, "x-levee-stamp")
        assert re.fullmatch(r"[0-9a-fA-F]{16,}", stamp), f"stamp is not hex: {stamp!r}"
        stamps.append(stamp)
    assert stamps[0] == stamps[1], f"the install stamp must not change between messages: {stamps}"


def test_exact_bytes_at_recording_downstream(levee_factory, pysink_factory):
    """The bytes after the prepended headers equal the bytes sent (CRs, dots, 8-bit, trailing space)."""
    ps = pysink_factory()
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{ps.port}"}])
    tok = unique_token("exact")
    body = (f"{head(tok)}\r\n"
            "caf\u00e9 na\u00efve \u2603\r\n.\r\n..\r\n.dot\r\ntrailing spaces   \r\n\r\n\r\n").encode("utf-8")
    c = RawSMTP(lv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@sender.test> BODY=8BITMIME").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"\r\n".join(b"." + l if l.startswith(b".") else l for l in body.split(b"\r\n")) + b".\r\n")
    r = c.reply()
    assert r.code == 250, "\n".join(c.transcript)
    c.close()
    [tx] = ps.wait_delivered(1)
    assert tx.rcpts == ["bob@example.test"]
    assert tx.data.endswith(body), f"not byte-exact:\n{tx.data!r}\nvs\n{body!r}"
    added = tx.data[: len(tx.data) - len(body)].decode()
    names = {l.split(":", 1)[0].lower() for l in added.split("\r\n") if l and l[0] not in " \t"}
    assert ADDED_HEADERS <= names, names


def test_prepended_headers_are_the_contract_set(levee, sink):
    """cli.md: Received, X-Levee-Verdict, X-Levee-Score, X-Levee-Stamp (DESIGN.md adds
    Authentication-Results); nothing else is prepended."""
    tok = unique_token("hdrset")
    original = head(tok).replace("\r\n", "\n") + "\nbody\n"
    r, c = send_raw_message(levee.port, "alice@sender.test", ["bob@example.test"],
                            original.replace("\n", "\r\n").encode())
    assert r.code == 250, "\n".join(c.transcript)
    [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    names = {k.lower() for k, _ in split_prepended(msg.text, original)}
    assert names <= ALLOWED_ADDED, f"prepended headers outside the contract: {names - ALLOWED_ADDED}"


def test_starttls_smtplib(levee, sink):
    tok = unique_token("tls")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed certificate generated by levee
    with smtplib.SMTP("127.0.0.1", levee.port, timeout=15) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls"), f"STARTTLS not advertised: {s.esmtp_features}"
        code, _ = s.starttls(context=ctx)
        assert code == 220
        s.ehlo("client.test")
        assert not s.has_extn("starttls"), "STARTTLS must not be offered again inside TLS"
        refused = s.sendmail("alice@sender.test", ["bob@example.test"],
                             f"{head(tok)}\r\nover tls\r\n")
        assert refused == {}
    [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    assert "over tls\n" in msg.text
    assert msg.rcpts == ["<bob@example.test>"]


def test_pipelining(levee, sink):
    tok = unique_token("pipe")
    c = RawSMTP(levee.port)
    kw = ehlo_keywords(c.ehlo())
    assert "PIPELINING" in kw, kw
    # The whole envelope in one write: replies must come back in order, one per command.
    c.send("MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\n"
           "RCPT TO:<carol@other.test>\r\nRCPT TO:<dave@example.test>\r\nDATA\r\n")
    rs = [c.reply() for _ in range(5)]
    assert [r.code for r in rs] == [250, 250, 550, 250, 354], "\n".join(c.transcript)
    c.send(f"{head(tok)}\r\npipelined\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    rs = [c.reply() for _ in range(4)]
    assert [r.code for r in rs] == [250, 250, 250, 221], "\n".join(c.transcript)
    assert c.closed(), "server must close after QUIT"
    [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    assert sorted(msg.rcpts) == ["<bob@example.test>", "<dave@example.test>"]


def test_swaks_pipe(levee, sink):
    tok = unique_token("swakspipe")
    r = levee.swaks("--pipeline", "-f", "alice@sender.test", "-t", "bob@example.test", "--header",
                    f"Subject: {tok}")
    assert r.returncode == 0, r.stdout + r.stderr
    sink.wait_messages(1, pred=lambda m: tok in m.text)


def test_bdat_chunking(levee, sink):
    tok = unique_token("bdat")
    c = RawSMTP(levee.port)
    kw = ehlo_keywords(c.ehlo())
    assert "CHUNKING" in kw, kw
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    # Inside BDAT, "\r\n.\r\n" is just data and a leading dot is not stuffing.
    part1 = f"{head(tok)}\r\nchunk one\r\n.\r\n".encode()
    part2 = b"..not unstuffed\r\n.\r\nlast line\r\n"
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    r = c.reply()
    assert r.code == 250, "\n".join(c.transcript)
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    r = c.reply()
    assert r.code == 250 and QUEUED_RE.search(r.text), "\n".join(c.transcript)
    c.close()
    [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    want = (part1 + part2).decode().replace("\r\n", "\n")
    split_prepended(msg.text, want)


def test_bdat_pipelined_with_envelope(levee, sink):
    tok = unique_token("bdatpipe")
    body = f"{head(tok)}\r\nall at once\r\n".encode()
    c = RawSMTP(levee.port)
    c.ehlo()
    c.send(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT %d LAST\r\n" % len(body) + body)
    rs = [c.reply() for _ in range(3)]
    assert [r.code for r in rs] == [250, 250, 250], "\n".join(c.transcript)
    sink.wait_messages(1, pred=lambda m: tok in m.text)


def test_vrfy_252(levee):
    c = RawSMTP(levee.port)
    c.ehlo()
    r = c.cmd("VRFY bob@example.test")
    assert r.code == 252, "\n".join(c.transcript)


def test_unknown_command_500(levee):
    c = RawSMTP(levee.port)
    c.ehlo()
    r = c.cmd("FROB nicate")
    assert r.code == 500, "\n".join(c.transcript)
    assert c.cmd("NOOP").code == 250, "the session must go on after one error"


def test_rcpt_before_mail_503(levee):
    c = RawSMTP(levee.port)
    c.ehlo()
    r = c.cmd("RCPT TO:<bob@example.test>")
    assert r.code == 503, "\n".join(c.transcript)
    r = c.cmd("DATA")
    assert r.code == 503, "\n".join(c.transcript)


def test_null_sender_accepted_and_delivered(levee, sink):
    tok = unique_token("null")
    r, c = send_raw_message(levee.port, "", ["bob@example.test"], f"{head(tok)}\r\nbounce\r\n".encode())
    assert r.code == 250, "\n".join(c.transcript)
    [msg] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    assert msg.mail_from == "<>"


def test_ehlo_advertises_8bitmime_smtputf8(levee):
    c = RawSMTP(levee.port)
    kw = ehlo_keywords(c.ehlo())
    assert {"8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"} <= kw, kw
    assert c.banner.code == 220


def test_smtputf8_address_delivered(levee_factory, pysink_factory):
    # PySink, not smtp-sink: smtp-sink prints non-ASCII envelope bytes as "?".
    ps = pysink_factory()
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{ps.port}"}])
    tok = unique_token("utf8")
    c = RawSMTP(lv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8").code == 250, "\n".join(c.transcript)
    assert c.cmd("RCPT TO:<b\u00f6b@example.test>").code == 250, "\n".join(c.transcript)
    assert c.cmd("DATA").code == 354
    c.send(f"{head(tok)}\r\nutf8\r\n.\r\n".encode())
    assert c.reply().code == 250, "\n".join(c.transcript)
    [tx] = ps.wait_delivered(1)
    assert tok.encode() in tx.data
    assert tx.rcpts == ["b\u00f6b@example.test"] and tx.mail_from == "j\u00f6rg@sender.test"


def test_helo_then_mail(levee, sink):
    """Plain HELO (no ESMTP) still relays."""
    tok = unique_token("helo")
    with smtplib.SMTP("127.0.0.1", levee.port, timeout=15) as s:
        code, _ = s.helo("client.test")
        assert code == 250
        s.sendmail("alice@sender.test", ["bob@example.test"], f"{head(tok)}\r\nhelo\r\n")
    sink.wait_messages(1, pred=lambda m: tok in m.text)


def test_starttls_discards_pipelined_plaintext(levee):
    """Commands sent in plaintext after STARTTLS (same packet) must not run inside TLS (CVE-2011-0411)."""
    c = RawSMTP(levee.port)
    c.ehlo()
    c.send("STARTTLS\r\nMAIL FROM:<injected@sender.test>\r\n")
    r = c.reply()
    if r is None or r.code != 220:
        print(f"pipelined STARTTLS refused: {r}")
        return  # refusing pipelined STARTTLS outright is also safe
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
    tls.settimeout(10)
    tls.sendall(b"EHLO client.test\r\n")
    data = b""
    while not re.search(rb"(^|\r\n)250 [^\r\n]*\r\n", data):
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"250-") or data.startswith(b"250 "), data
    assert b"2.1.0" not in data, f"the injected MAIL FROM was executed inside TLS: {data!r}"
    tls.sendall(b"MAIL FROM:<alice@sender.test>\r\n")
    more = tls.recv(4096)
    assert more.startswith(b"250"), f"a fresh MAIL after EHLO inside TLS must work (no transaction leaked): {more!r}"
    tls.close()
