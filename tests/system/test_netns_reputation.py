"""Connection reputation end to end, from real (non-loopback) client addresses.

Every other system test connects from 127/8, where Levee's resolver (hickory) answers PTR
queries itself and never asks the configured server, so reverse DNS and country could not be
shown through SMTP. Here the clients live in their own network namespaces with addresses from
the documentation ranges, joined to a "box" namespace by veth pairs:

    lvc1-PID eth0 192.0.2.10,11,12,66/24 2001:db8::10/64 -- c1 192.0.2.1/24 2001:db8::1/64 \
    lvc2-PID eth0 198.51.100.7/24 ------------------------- c2 198.51.100.1/24              lvbox-PID
    lvc3-PID eth0 203.0.113.9/24 -------------------------- c3 203.0.113.1/24               /

Levee (listening on 0.0.0.0 or, dual-stack, [::]), unbound (dnsworld.Unbound with
tests/dns/netcheck.conf: 192.0.2.10 forward-confirms as mail.good.test, 192.0.2.11 points at
liar.good.test which resolves elsewhere, 192.0.2.12 has no PTR, 192.0.2.66 is listed in bl.test,
2001:db8::10 forward-confirms as mail6.good.test) and smtp-sink all run inside lvbox, on its own
127.0.0.1, so nothing here touches the host's network or nftables. Clients are swaks (`ip netns
exec`, bound to their address) and raw sockets opened inside the client namespaces. The country
database is a MaxMind DB written by this file (`country_mmdb`; no Python package needed); the
`block country` list entry is added through the console, as an admin would.

Needs root and iproute2 (`ip netns`); skipped with the reason otherwise. Debian `unbound`,
`swaks`, `postfix` (smtp-sink) as for the rest of the suite.
"""

from __future__ import annotations

import ctypes
import http.client
import ipaddress
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.parse
from email.utils import formatdate
from pathlib import Path

import pytest

import dnsworld
from harness import (IO_TIMEOUT, QUEUED_RE, SWAKS, Levee, RawSMTP, Sink, free_port, render_config, unique_token,
                     finish_levees, wait_until)

PID = os.getpid()
BOX = f"lvbox-{PID}"
RCPT = "bob@example.test"
SENDER = "alice@sender.test"
FINDING_RE = re.compile(r"([A-Z0-9_]+)\((-?[0-9]+\.[0-9]+)\)")

# Client namespace -> (box-side interface, box address, client addresses), all /24.
NETS = {
    f"lvc1-{PID}": ("c1", "192.0.2.1", ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.66"]),
    f"lvc2-{PID}": ("c2", "198.51.100.1", ["198.51.100.7"]),
    f"lvc3-{PID}": ("c3", "203.0.113.1", ["203.0.113.9"]),
}
CONFIRMED_IP, MISMATCH_IP, NO_PTR_IP, LISTED_IP = NETS[f"lvc1-{PID}"][2]
# IPv6 on the first client net too: 2001:db8::10 forward-confirms as mail6.good.test (AAAA).
BOX_IP6, CONFIRMED_IP6 = "2001:db8::1", "2001:db8::10"
BLOCKED_COUNTRY_IP = "198.51.100.7"
SERVED_COUNTRY_IP = "203.0.113.9"
COUNTRIES = [("192.0.2.0/24", "NL"), ("198.51.100.0/24", "KP"), ("203.0.113.0/24", "NZ")]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` for network namespaces"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


# ----------------------------------------------------------------------------------------------
# Network namespaces


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def run(*argv: str):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def in_ns(ns: str, fn, *args, **kw):
    """`fn(*args)` on a fresh thread that has joined namespace `ns` (setns(2) moves only the
    calling thread). Sockets it opens and processes it starts stay in `ns`; the test's own
    thread never leaves the host's namespace."""
    result: dict = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=body, name=f"in-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class Lab:
    """The box and client namespaces; `close()` deletes every one it made (veths go with them)."""

    def __init__(self):
        self.made: list[str] = []
        try:
            for ns in [BOX, *NETS]:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)  # stale
                run("ip", "netns", "add", ns)
                self.made.append(ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            for ns, (box_if, box_ip, clients) in NETS.items():
                run("ip", "-n", BOX, "link", "add", box_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
                run("ip", "-n", BOX, "addr", "add", f"{box_ip}/24", "dev", box_if)
                run("ip", "-n", BOX, "link", "set", box_if, "up")
                for ip in clients:
                    run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
            c1 = f"lvc1-{PID}"
            run("ip", "-n", BOX, "addr", "add", f"{BOX_IP6}/64", "dev", NETS[c1][0], "nodad")
            run("ip", "-n", c1, "addr", "add", f"{CONFIRMED_IP6}/64", "dev", "eth0", "nodad")
        except BaseException:
            self.close()
            raise

    def close(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()


def client_ns(ip: str) -> tuple[str, str]:
    """(namespace, box address) a client address lives behind."""
    if ip == CONFIRMED_IP6:
        return f"lvc1-{PID}", BOX_IP6
    for ns, (_, box_ip, clients) in NETS.items():
        if ip in clients:
            return ns, box_ip
    raise KeyError(ip)


# ----------------------------------------------------------------------------------------------
# A MaxMind DB (format 2.0) writer: IPv6 tree with IPv4 under ::/96, 24-bit records,
# {country: {iso_code}} values (https://maxmind.github.io/MaxMind-DB/).


def _ctrl(typ: int, size: int) -> bytes:
    assert size < 29, "short values only"
    if typ <= 7:
        return bytes([(typ << 5) | size])
    return bytes([size, typ - 7])  # extended type


def _str(s: str) -> bytes:
    b = s.encode()
    return _ctrl(2, len(b)) + b


def _uint(typ: int, v: int) -> bytes:
    b = v.to_bytes(8, "big").lstrip(b"\0")
    return _ctrl(typ, len(b)) + b


def country_mmdb(networks: list[tuple[str, str]]) -> bytes:
    data = b""
    nodes: list[list] = [[None, None]]  # None = empty, ("n", i) = node, ("d", off) = data
    for net, iso in networks:
        off = len(data)
        data += _ctrl(7, 1) + _str("country") + _ctrl(7, 1) + _str("iso_code") + _str(iso)
        n = ipaddress.ip_network(net)
        bits = int(n.network_address)  # an IPv4 network sits under ::/96: the same integer
        prefix = n.prefixlen + (96 if n.version == 4 else 0)
        node = 0
        for depth in range(prefix):
            bit = (bits >> (127 - depth)) & 1
            if depth == prefix - 1:
                nodes[node][bit] = ("d", off)
            else:
                rec = nodes[node][bit]
                if rec is None or rec[0] != "n":
                    nodes.append([None, None])
                    nodes[node][bit] = ("n", len(nodes) - 1)
                node = nodes[node][bit][1]
    count = len(nodes)
    tree = b""
    for pair in nodes:
        for rec in pair:
            v = count if rec is None else rec[1] if rec[0] == "n" else count + 16 + rec[1]
            tree += struct.pack(">I", v)[1:]
    meta = _ctrl(7, 9)
    meta += _str("node_count") + _uint(6, count)
    meta += _str("record_size") + _uint(5, 24)
    meta += _str("ip_version") + _uint(5, 6)
    meta += _str("database_type") + _str("Levee-Test-Country")
    meta += _str("languages") + _ctrl(11, 1) + _str("en")
    meta += _str("binary_format_major_version") + _uint(5, 2)
    meta += _str("binary_format_minor_version") + _uint(5, 0)
    meta += _str("build_epoch") + _uint(9, 1_700_000_000)
    meta += _str("description") + _ctrl(7, 1) + _str("en") + _str("Levee netns test database")
    return tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def lab():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def world(lab):
    """unbound inside the box namespace, on the box's own loopback."""
    server = in_ns(BOX, dnsworld.Unbound)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def box_sink(procs):
    s = in_ns(BOX, lambda: Sink(procs).start("ok"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def geoip_db(tmp_path) -> Path:
    p = tmp_path / "country.mmdb"
    p.write_bytes(country_mmdb(COUNTRIES))
    return p


def _num(v: float) -> str:
    return repr(float(v))


@pytest.fixture
def box_levee(procs, tmp_path, world, box_sink, request):
    """make(weights, **checks) -> a Levee started in the box, listening on every box address."""
    made: list[Levee] = []

    def make(weights: dict[str, float], connect_reject_at: float = 10.0, quarantine_at: float = 6.0,
             reject_at: float = 15.0, geoip: Path | None = None,
             listen: str = "0.0.0.0", console: bool = False) -> Levee:
        def build():
            lv = Levee(procs, tmp_path / f"levee{len(made)}",
                       [{"name": "example.test", "downstream": f"127.0.0.1:{box_sink.port}"}],
                       smtp={"greet_pause_ms": 300})
            # Every box address (the veths), and 127.0.0.1 inside the box, which `start` probes.
            lv.smtp["listen"] = [f"{listen}:{lv.port}"]
            text = render_config("mx.example.test", str(lv.data_dir), lv.smtp, lv.delivery,
                                 [{"name": "example.test", "downstream": f"127.0.0.1:{box_sink.port}"}])
            text += "\n".join([
                "", "[checks]", f'dns_server = "{world.addr}"', "dns_timeout_ms = 2000",
                "rdns = true", "auth = true",
                f"connect_reject_at = {_num(connect_reject_at)}",
                *([f'geoip_db = "{geoip}"'] if geoip else []),
                "", "[[checks.dnsbl]]", 'zone = "bl.test"', 'symbol = "RBL_TEST"',
                "", "[policy]", "tag_at = 4.0", f"quarantine_at = {_num(quarantine_at)}",
                f"reject_at = {_num(reject_at)}",
                "", "[policy.weights]", *[f"{k} = {_num(v)}" for k, v in weights.items()], "",
            ])
            if console:
                lv.console_port = free_port()
                while lv.console_port == lv.port:
                    lv.console_port = free_port()
                text += f'\n[console]\nlisten = ["127.0.0.1:{lv.console_port}"]\n'

            lv.config_path.write_text(text)
            made.append(lv)
            return lv.start()

        return in_ns(BOX, build)

    yield make
    finish_levees(request, made)


# ----------------------------------------------------------------------------------------------
# Clients


class NsClient(RawSMTP):
    """RawSMTP from `source`, a client address inside its namespace, to the box's address there."""

    def __init__(self, port: int, source: str, timeout: float = IO_TIMEOUT):
        ns, box_ip = client_ns(source)
        self.sock = in_ns(ns, socket.create_connection, (box_ip, port), timeout=timeout,
                          source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buf = b""
        self.transcript = [f"(connected from {source} in {ns} to {box_ip}:{port})"]
        self.banner = self.reply()

    def dump(self) -> str:
        return "\n".join(self.transcript)


def message(token: str, body: str = "Hello Bob, the minutes of Tuesday's meeting are below.") -> str:
    return (f"From: Alice <{SENDER}>\r\nTo: Bob <{RCPT}>\r\nSubject: Minutes {token}\r\n"
            f"Date: {formatdate(localtime=False)}\r\nMessage-ID: <{token}@sender.test>\r\n\r\n"
            f"{body}\r\n\r\nref {token}\r\n")


def swaks_from(lv: Levee, source: str, token: str, helo: str) -> subprocess.CompletedProcess:
    """Real swaks run inside the client's namespace, bound to `source`."""
    ns, box_ip = client_ns(source)
    argv = ["ip", "netns", "exec", ns, SWAKS, "--server", box_ip, "--port", str(lv.port), "--local-interface", source,
            "--timeout", "15", "--helo", helo, "--from", SENDER, "--to", RCPT, "--data", "-"]
    return subprocess.run(argv, input=message(token), capture_output=True, text=True, timeout=60)


def queued_id(out: subprocess.CompletedProcess) -> str:
    m = QUEUED_RE.search(out.stdout)
    assert out.returncode == 0 and m, f"swaks failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return m.group(1)


def findings(msg) -> dict[str, float]:
    return {s: float(w) for s, w in FINDING_RE.findall(msg.header("X-Levee-Findings") or "")}


def at_sink(sink: Sink, token: str):
    return sink.wait_messages(1, pred=lambda m: token in m.text)[0]


def log_lines(lv: Levee, *needles: str) -> list[str]:
    return [l for l in lv.log().splitlines() if all(n in l for n in needles)]


def refused_at_connect(lv: Levee, source: str) -> RawSMTP:
    c = NsClient(lv.port, source)
    try:
        assert c.banner is not None, f"no reply at all:\n{c.dump()}"
        assert c.banner.code == 554 and c.banner.text.startswith("5.7.1"), \
            f"{source} got {c.banner}, expected 554 5.7.1 before the banner\n{c.dump()}"
        assert not any(l.startswith("S: 220") for l in c.transcript), c.dump()
        try:
            r = c.cmd("EHLO client.test")
        except OSError:
            r = None
        assert r is None or r.code >= 500, f"refused client could talk on: {r}\n{c.dump()}"
    finally:
        c.close()
    return c


# ----------------------------------------------------------------------------------------------
# The lab is what the tests assume


def test_lab_world_and_addresses(lab, world):
    """Controls: the DNS world holds the records below, seen from the box; each client address
    reaches the box from its own namespace, with its own source address."""
    q = lambda name, t: in_ns(BOX, world.query, name, t)
    assert q(dnsworld.reverse_name(CONFIRMED_IP), dnsworld.TYPE_PTR).values(dnsworld.TYPE_PTR) == ["mail.good.test"]
    assert q("mail.good.test", dnsworld.TYPE_A).values(dnsworld.TYPE_A) == [CONFIRMED_IP]
    assert q(dnsworld.reverse_name(MISMATCH_IP), dnsworld.TYPE_PTR).values(dnsworld.TYPE_PTR) == ["liar.good.test"]
    assert q("liar.good.test", dnsworld.TYPE_A).values(dnsworld.TYPE_A) == ["192.0.2.99"]
    assert q(dnsworld.reverse_name(NO_PTR_IP), dnsworld.TYPE_PTR).rcode == 3
    for ip in (BLOCKED_COUNTRY_IP, SERVED_COUNTRY_IP):
        assert q(dnsworld.reverse_name(ip), dnsworld.TYPE_PTR).rcode == 3

    def accept_one():
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", 0))
        srv.listen(8)
        return srv

    srv = in_ns(BOX, accept_one)
    try:
        port = srv.getsockname()[1]
        srv.settimeout(IO_TIMEOUT)
        for ns, (_, box_ip, clients) in NETS.items():
            for ip in clients:
                c = in_ns(ns, socket.create_connection, (box_ip, port), timeout=IO_TIMEOUT,
                          source_address=(ip, 0))
                conn, peer = srv.accept()
                assert peer[0] == ip, (ns, ip, peer)
                conn.close()
                c.close()
    finally:
        srv.close()


# ----------------------------------------------------------------------------------------------
# Reverse DNS


@pytest.mark.parametrize("source,helo,finding,name", [
    (CONFIRMED_IP, "mail.good.test", None, "mail.good.test"),
    (MISMATCH_IP, "liar.good.test", "RDNS_NOT_CONFIRMED", None),
    (NO_PTR_IP, "nobody.test", "RDNS_NONE", None),
])
def test_rdns_findings_and_trace_header(box_levee, box_sink, source, helo, finding, name):
    """Default weights (RDNS_NONE 1.5, RDNS_NOT_CONFIRMED 0.5): every client is served, and
    what rDNS said shows in the Received line and X-Levee-Findings at the downstream."""
    lv = box_levee({"RBL_TEST": 20})
    token = unique_token("rdns")
    qid = queued_id(swaks_from(lv, source, token, helo))
    m = at_sink(box_sink, token)
    received = m.header("Received")
    assert qid in received, received
    f = findings(m)
    rdns = {s: w for s, w in f.items() if s.startswith("RDNS")}
    if name:
        # FCrDNS passed: the confirmed name is the client's name in the trace header.
        assert f"from {helo} ({name} [{source}])" in received, received
        assert rdns == {}, m.header("X-Levee-Findings")
    else:
        assert f"from {helo} ([{source}])" in received, received
        assert set(rdns) == {finding}, m.header("X-Levee-Findings")
        assert rdns[finding] == {"RDNS_NONE": 1.5, "RDNS_NOT_CONFIRMED": 0.5}[finding]
    assert m.header("X-Levee-Verdict") == "accept", m.header_text


def test_no_ptr_refused_at_connect_when_decisive(box_levee, box_sink):
    """RDNS_NONE weighted past connect_reject_at: the PTR-less client gets 554 before the
    banner; a mismatching PTR (lighter) and a confirmed one are served by the same Levee."""
    lv = box_levee({"RBL_TEST": 20, "RDNS_NONE": 12, "RDNS_NOT_CONFIRMED": 3}, connect_reject_at=10)
    c = refused_at_connect(lv, NO_PTR_IP)
    assert "RDNS_NONE" in c.banner.text, c.dump()
    assert log_lines(lv, "refused at connect", NO_PTR_IP, "RDNS_NONE"), lv.log_tail()

    tokens = {}
    for source, helo in ((CONFIRMED_IP, "mail.good.test"), (MISMATCH_IP, "liar.good.test")):
        tokens[source] = unique_token("served")
        queued_id(swaks_from(lv, source, tokens[source], helo))
    good = at_sink(box_sink, tokens[CONFIRMED_IP])
    assert not any(s.startswith("RDNS") for s in findings(good)), good.header("X-Levee-Findings")
    liar = at_sink(box_sink, tokens[MISMATCH_IP])
    assert findings(liar).get("RDNS_NOT_CONFIRMED") == 3.0, liar.header("X-Levee-Findings")
    assert not log_lines(lv, "refused at connect", CONFIRMED_IP), lv.log_tail()


def test_no_ptr_quarantined_when_weighted(box_levee, box_sink):
    """RDNS_NONE between quarantine_at and connect_reject_at: the PTR-less client's mail is taken
    (250) and held, never delivered; the confirmed client's mail flows."""
    lv = box_levee({"RBL_TEST": 20, "RDNS_NONE": 7}, connect_reject_at=10, quarantine_at=6)
    held, ok = unique_token("noptr"), unique_token("fcrdns")
    held_id = queued_id(swaks_from(lv, NO_PTR_IP, held, "nobody.test"))
    ok_id = queued_id(swaks_from(lv, CONFIRMED_IP, ok, "mail.good.test"))
    at_sink(box_sink, ok)
    quarantined = log_lines(lv, held_id, "verdict=quarantine")
    assert quarantined, f"no `verdict=quarantine` line for {held_id}:\n{lv.log_tail()}"
    assert f"client={NO_PTR_IP}" in quarantined[0], quarantined
    # Held with its findings: the spool record (what the quarantine view and a release read) names
    # the reason.
    record = (lv.spool_dir("queue") / held_id).read_bytes()
    assert b"quarantine" in record and f"{NO_PTR_IP} has no PTR record".encode() in record, record[:400]
    assert not log_lines(lv, ok_id, "verdict=quarantine"), lv.log_tail()
    time.sleep(2)  # a wrongly queued message would be delivered by now (retries start at 1 s)
    assert not [m.path for m in box_sink.messages() if held in m.text], "quarantined mail reached the sink"


def test_listed_non_loopback_client_refused(box_levee, box_sink):
    """DNSBL on a real address: 66.2.0.192.bl.test answers two codes; 192.0.2.66 is refused."""
    lv = box_levee({"RBL_TEST": 20})
    c = refused_at_connect(lv, LISTED_IP)
    assert "RBL_TEST" in c.banner.text, c.dump()
    token = unique_token("unlisted")
    queued_id(swaks_from(lv, CONFIRMED_IP, token, "mail.good.test"))
    assert "RBL_TEST" not in findings(at_sink(box_sink, token))


# ----------------------------------------------------------------------------------------------
# Country


def test_blocked_country_refused_at_connect_other_country_served(box_levee, box_sink, geoip_db):
    """The database (written above) puts 198.51.100.0/24 in KP and 203.0.113.0/24 in NZ;
    COUNTRY_KP weighs past connect_reject_at, so only the KP client is refused."""
    lv = box_levee({"RBL_TEST": 20, "COUNTRY_KP": 20, "RDNS_NONE": 0}, connect_reject_at=10, geoip=geoip_db)
    c = refused_at_connect(lv, BLOCKED_COUNTRY_IP)
    assert "COUNTRY_KP" in c.banner.text, c.dump()
    assert log_lines(lv, "refused at connect", BLOCKED_COUNTRY_IP, "COUNTRY_KP"), lv.log_tail()

    token = unique_token("nz")
    queued_id(swaks_from(lv, SERVED_COUNTRY_IP, token, "mx.nz.test"))
    m = at_sink(box_sink, token)
    f = findings(m)
    assert f.get("COUNTRY_NZ") == 0.0, m.header("X-Levee-Findings")
    assert "COUNTRY_KP" not in f, f
    assert m.header("X-Levee-Verdict") == "accept", m.header_text
    # The third net is in NL: also located, also served.
    token = unique_token("nl")
    queued_id(swaks_from(lv, CONFIRMED_IP, token, "mail.good.test"))
    assert "COUNTRY_NL" in findings(at_sink(box_sink, token))


def test_without_database_no_country_and_kp_client_served(box_levee, box_sink):
    """The control: the same weights without a database let the 198.51.100.7 client through,
    so the refusal above is the database's doing."""
    lv = box_levee({"RBL_TEST": 20, "COUNTRY_KP": 20, "RDNS_NONE": 0}, connect_reject_at=10)
    token = unique_token("nodb")
    queued_id(swaks_from(lv, BLOCKED_COUNTRY_IP, token, "mx.kp.test"))
    m = at_sink(box_sink, token)
    assert not any(s.startswith("COUNTRY_") for s in findings(m)), m.header("X-Levee-Findings")


# ----------------------------------------------------------------------------------------------
# A dual-stack listener


def test_dual_stack_listener_sees_ipv4_clients_as_ipv4(box_levee, box_sink, geoip_db):
    """Listening on [::] (one socket for both families), an IPv4 client arrives as
    ::ffff:a.b.c.d. The checks must still see 192.0.2.x: FCrDNS under in-addr.arpa, the DNSBL
    entry for 192.0.2.66, the country of 198.51.100.0/24."""
    lv = box_levee({"RBL_TEST": 20, "COUNTRY_KP": 20}, connect_reject_at=10, geoip=geoip_db, listen="[::]")
    refused_at_connect(lv, LISTED_IP)
    refused_at_connect(lv, BLOCKED_COUNTRY_IP)
    token = unique_token("dual")
    queued_id(swaks_from(lv, CONFIRMED_IP, token, "mail.good.test"))
    m = at_sink(box_sink, token)
    f = findings(m)
    assert not any(s.startswith("RDNS") for s in f), m.header("X-Levee-Findings")
    assert "COUNTRY_NL" in f, m.header("X-Levee-Findings")
    assert "(mail.good.test [" in m.header("Received"), m.header("Received")  # the confirmed name


# ----------------------------------------------------------------------------------------------
# A country block list entry, added the way an admin does: through the console


class ConsoleClient:
    """HTTPS to Levee's console inside the box (self-signed certificate, so unverified), with the
    cookies kept by hand and the form's `_csrf` token read from each page."""

    CSRF_RE = re.compile(r'name="_csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="_csrf"')

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, dict, str]:
        return in_ns(BOX, self._request, method, path, form)

    def _request(self, method, path, form):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=IO_TIMEOUT)
        try:
            headers = {}
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            for value in r.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                val = rest.split(";", 1)[0]
                if "max-age=0" in value.lower() or not val:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = val
            return r.status, {k.lower(): v for k, v in r.headers.items()}, text
        finally:
            conn.close()

    def csrf(self, path: str) -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, f"GET {path}: {status}\n{page[:500]}"
        m = self.CSRF_RE.search(page)
        assert m, f"no _csrf field on {path}:\n{page[:2000]}"
        return m.group(1) or m.group(2)

    def post(self, path: str, form: dict, csrf_from: str) -> tuple[int, dict, str]:
        return self.request("POST", path, {"_csrf": self.csrf(csrf_from), **form})


def console_block_country(lv: Levee, sink_port: int, entry: str):
    """First-run setup with the code from data_dir/setup-code, then `entry` on the list page."""
    code_file = lv.data_dir / "setup-code"
    code = wait_until(lambda: code_file.exists() and code_file.read_text().strip(), 30, what="setup-code")
    c = ConsoleClient(lv.console_port)
    wait_until(lambda: _console_up(c), 30, what="the console to answer")
    status, headers, page = c.post("/setup", {
        "code": code, "password": "netns-test-password-1", "password2": "netns-test-password-1",
        "hostname": "mx.example.test", "domain": "example.test", "downstream": f"127.0.0.1:{sink_port}",
    }, csrf_from="/setup")
    assert status in (302, 303), f"setup: {status}\n{page[:2000]}"
    status, headers, page = c.post("/lists", {"entry": entry, "note": "netns test"}, csrf_from="/lists")
    assert status in (302, 303) and "Added" in headers.get("location", ""), \
        f"list entry not added: {status} {headers.get('location')}\n{page[:2000]}"
    status, _, page = c.request("GET", "/lists")
    assert entry in page, page[:4000]


def _console_up(c: ConsoleClient) -> bool:
    try:
        return c.request("GET", "/setup")[0] == 200
    except OSError:
        return False


def test_country_block_list_entry_refuses_at_rcpt(box_levee, box_sink, geoip_db):
    """`block country KP` (a list entry, added in the console): the KP client passes the connect
    stage (no weight on COUNTRY_KP) but every recipient is refused 550 5.7.1 at RCPT; the NZ
    client is served by the same Levee."""
    lv = box_levee({"RBL_TEST": 20}, geoip=geoip_db, console=True)
    console_block_country(lv, box_sink.port, "block country KP")

    c = NsClient(lv.port, BLOCKED_COUNTRY_IP)
    try:
        assert c.banner and c.banner.code == 220, f"KP client refused at connect: {c.banner}\n{c.dump()}"
        c.ehlo("mx.kp.test")
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        assert r and r.code == 250, c.dump()
        r = c.cmd(f"RCPT TO:<{RCPT}>")
        assert r and r.code == 550 and r.text.startswith("5.7.1"), f"KP client's RCPT got {r}\n{c.dump()}"
        r = c.cmd("DATA")
        assert r and r.code >= 500, f"DATA without a recipient got {r}\n{c.dump()}"
    finally:
        c.close()
    assert log_lines(lv, "blocked by list", "country KP"), lv.log_tail()

    token = unique_token("nz")
    queued_id(swaks_from(lv, SERVED_COUNTRY_IP, token, "mx.nz.test"))
    assert "COUNTRY_NZ" in findings(at_sink(box_sink, token))


def test_ipv6_client_forward_confirmed(box_levee, box_sink):
    """FCrDNS over IPv6: the PTR under ip6.arpa names mail6.good.test, whose AAAA is the client."""
    lv = box_levee({"RBL_TEST": 20}, listen="[::]")
    token = unique_token("v6")
    queued_id(swaks_from(lv, CONFIRMED_IP6, token, "mail6.good.test"))
    m = at_sink(box_sink, token)
    received = m.header("Received")
    assert f"(mail6.good.test [{CONFIRMED_IP6}])" in received, received
    assert not any(s.startswith("RDNS") for s in findings(m)), m.header("X-Levee-Findings")


def test_dual_stack_trace_header_names_the_ipv4_address(box_levee, box_sink):
    lv = box_levee({"RBL_TEST": 20}, listen="[::]")
    token = unique_token("dualrcv")
    queued_id(swaks_from(lv, CONFIRMED_IP, token, "mail.good.test"))
    received = at_sink(box_sink, token).header("Received")
    assert f"(mail.good.test [{CONFIRMED_IP}])" in received, received
