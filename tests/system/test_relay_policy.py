"""Never an open relay: only configured, enabled, routed domains get mail."""

import subprocess
import time

import pytest

from harness import NMAP, head, RawSMTP, unique_token


def rcpt_reply(levee, addr: str, mail_from: str = "alice@sender.test"):
    c = RawSMTP(levee.port)
    c.ehlo()
    r = c.cmd(f"MAIL FROM:<{mail_from}>")
    assert r.code == 250, "\n".join(c.transcript)
    return c.cmd(f"RCPT TO:<{addr}>"), c


def test_other_domain_550_571(levee, sink):
    r, c = rcpt_reply(levee, "user@other.test")
    assert r.code == 550 and "5.7.1" in r.text, "\n".join(c.transcript)
    r = c.cmd("DATA")
    assert r.code in (503, 554), "DATA without any accepted recipient must fail:\n" + "\n".join(c.transcript)


@pytest.mark.parametrize("addr", [
    "user@example.test",
    "User@EXAMPLE.test",  # domains are case-insensitive
])
def test_configured_domain_accepted(levee, addr):
    r, c = rcpt_reply(levee, addr)
    assert r.code == 250, "\n".join(c.transcript)


TRICKS = [
    "user%other.test@example.test",       # percent hack
    "other.test!user@example.test",       # UUCP bang path
    "@relay.test:user@example.test",      # source route
    "@example.test:user@other.test",      # source route through us to elsewhere
    '"user@other.test"@example.test',     # quoted local part holding an address
    '"user%other.test"@example.test',
    "user@[127.0.0.1]",                   # address literal
    "user@[IPv6:::1]",
    "postmaster@[127.0.0.1]",
    "user@example.test.other.test",       # lookalikes
    "user@other.test.example.test",       # subdomain not configured
    "user@xexample.test",
    "user@example.tes",
    "user@example.test.",                 # trailing dot
    "user@example.test@other.test",
    "user@other.test@example.test",
    "user@other.test",
    "user",                               # no domain at all
    "user@",
    "user@other.test,user@example.test",
]


@pytest.mark.parametrize("addr", TRICKS)
def test_address_tricks_refused(levee, sink, addr):
    tok = unique_token("trick")
    r, c = rcpt_reply(levee, addr)
    assert r is not None and 500 <= r.code < 600, f"{addr!r} must be refused with 5xx:\n" + "\n".join(c.transcript)
    r = c.cmd("DATA")
    if r.code == 354:
        c.send(f"{head(tok)}\r\nrelay attempt\r\n.\r\n")
        c.reply()
        pytest.fail(f"DATA accepted after refused {addr!r}:\n" + "\n".join(c.transcript))
    c.cmd("QUIT")
    time.sleep(1.5)
    assert [m for m in sink.messages() if tok in m.text] == [], "a refused address was delivered"


def test_tricks_in_one_transaction_deliver_only_to_real_recipient(levee_factory, sink):
    lv = levee_factory([{"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"max_errors": 100, "soft_error_limit": 100})  # no error delays either
    tok = unique_token("mixed")
    c = RawSMTP(lv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<alice@sender.test>").code == 250
    for a in TRICKS:
        r = c.cmd(f"RCPT TO:<{a}>")
        assert r is not None and 500 <= r.code < 600, "\n".join(c.transcript)
    assert c.cmd("RCPT TO:<real@example.test>").code == 250, "\n".join(c.transcript)
    assert c.cmd("DATA").code == 354
    c.send(f"{head(tok)}\r\nx\r\n.\r\n")
    assert c.reply().code == 250, "\n".join(c.transcript)
    [m] = sink.wait_messages(1, pred=lambda m: tok in m.text)
    time.sleep(2)
    assert len([m for m in sink.messages() if tok in m.text]) == 1
    assert m.rcpts == ["<real@example.test>"]


def test_domain_without_downstream_451(levee_factory, sink):
    lv = levee_factory([
        {"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
        {"name": "pending.test"},
    ])
    r, c = rcpt_reply(lv, "user@pending.test")
    assert r.code == 451 and "4.3.0" in r.text, "\n".join(c.transcript)


def test_disabled_domain_451(levee_factory, sink):
    lv = levee_factory([
        {"name": "example.test", "downstream": f"127.0.0.1:{sink.port}"},
        {"name": "off.test", "downstream": f"127.0.0.1:{sink.port}", "enabled": False},
    ])
    r, c = rcpt_reply(lv, "user@off.test")
    assert r.code == 451 and "4.3.0" in r.text, "\n".join(c.transcript)
    assert c.cmd("RCPT TO:<user@example.test>").code == 250, "\n".join(c.transcript)


def nmap_open_relay(port: int, domain: str) -> str:
    # nmap's `domain` is the FOREIGN domain it tries to relay to (relaytest@DOMAIN, relaytest%DOMAIN@[ip],
    # ...), so it must not be one Levee serves. "+" runs the script although the port is not 25.
    argv = [NMAP, "-Pn", "-n", "-p", str(port), "--script", "+smtp-open-relay", "--script-args",
            f"smtp-open-relay.domain={domain},smtp-open-relay.ip=127.0.0.1", "127.0.0.1"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_nmap_detects_open_relay_control(sink):
    """Control: the same nmap invocation flags smtp-sink (which accepts anything) as an open relay."""
    out = nmap_open_relay(sink.port, "example.test")
    assert "Server is an open relay" in out, out


@pytest.mark.parametrize("served,foreign", [("served.test", "example.test"), ("example.test", "other.test")])
def test_nmap_smtp_open_relay(levee_factory, sink, served, foreign):
    # nmap sends 16 probes in one session; every refused one counts as an error, and the default
    # max_errors (10) would end the session (421) before nmap can conclude anything, and the
    # growing delays past soft_error_limit (3) would outlast nmap's patience.
    lv = levee_factory([{"name": served, "downstream": f"127.0.0.1:{sink.port}"}],
                       smtp={"max_errors": 50, "soft_error_limit": 50})
    out = nmap_open_relay(lv.port, foreign)
    assert "smtp-open-relay" in out, f"the script did not run:\n{out}"
    assert "Server is an open relay" not in out, out
    assert "Server doesn't seem to be an open relay" in out, out
    time.sleep(2)
    assert sink.messages() == [], "nmap's relay probes must deliver nothing"
