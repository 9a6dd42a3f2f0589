"""A small DNS world on loopback for Levee's filtering tests.

`Unbound` runs Debian's real `unbound -d` on 127.0.0.1@<free port>, answering only from local data:
`local-zone: "." static`, the shared records of tests/dns/netcheck.conf (the same world levee-netcheck's
own tests use), and the extra records below (a sender domain whose SPF allows 127.0.0.3 only,
DMARC p=reject, and a DKIM key generated per run). `BlackHole` is a port that takes DNS queries and never
answers. `query` is a minimal stub resolver used to wait for readiness and to prove the world holds
what the tests assume. `DkimKey` is an RSA key made with openssl and a small DKIM signer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ZONE_FILE = REPO / "tests" / "dns" / "netcheck.conf"
UNBOUND = os.environ.get("UNBOUND", "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else "unbound")
OPENSSL = os.environ.get("OPENSSL", "openssl")

# Clients of the filtering tests: Linux answers for all of 127/8 on lo, so each is a distinct peer.
LISTED_IP = "127.0.0.2"  # 2.0.0.127.bl.test is in netcheck.conf
CLEAN_IP = "127.0.0.3"  # the only address SPF allows for SENDER_DOMAIN
FORGER_IP = "127.0.0.4"  # no PTR, not allowed by SPF
CLEAN_HELO = "client3.good.test"
SENDER_DOMAIN = "signed.test"
DKIM_SELECTOR = "sel"

TYPE_A, TYPE_PTR, TYPE_TXT = 1, 12, 16


def _txt_strings(value: str, size: int = 200) -> str:
    """A TXT rdata longer than one 255-byte string, as several quoted strings."""
    return " ".join(f'"{value[i:i + size]}"' for i in range(0, len(value), size))


def world_records(dkim_public_b64: str) -> str:
    """This suite's records on top of netcheck.conf, as unbound `server:` lines."""
    dkim = _txt_strings(f"v=DKIM1; k=rsa; p={dkim_public_b64}")
    return "\n".join([
        "# --- levee system tests: filtering ---",
        # No PTR records for the clients: Levee's resolver (hickory) answers every 127/8 PTR
        # itself with "localhost." (RFC 6761) and never asks the server, so rDNS on loopback
        # always reads RDNS_NOT_CONFIRMED whatever this world says.
        f"local-data: '{SENDER_DOMAIN}. 300 IN TXT \"v=spf1 ip4:{CLEAN_IP} -all\"'",
        f"local-data: '_dmarc.{SENDER_DOMAIN}. 300 IN TXT \"v=DMARC1; p=reject\"'",
        f"local-data: '{DKIM_SELECTOR}._domainkey.{SENDER_DOMAIN}. 300 IN TXT {dkim}'",
        "",
    ])


# ----------------------------------------------------------------------------------------------
# A minimal DNS client (RFC 1035), enough to probe and to check records.


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def _read_name(msg: bytes, i: int) -> str:
    labels, hops = [], 0
    while True:
        n = msg[i]
        if n == 0:
            return ".".join(labels)
        if n & 0xC0 == 0xC0:
            i = ((n & 0x3F) << 8) | msg[i + 1]
            hops += 1
            if hops > 20:
                raise ValueError("compression loop")
            continue
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n


class DnsAnswer:
    def __init__(self, rcode: int, records: list[tuple[int, str]]):
        self.rcode = rcode
        self.records = records  # (type, text form)

    def values(self, rtype: int) -> list[str]:
        return [v for t, v in self.records if t == rtype]

    def __repr__(self):
        return f"DnsAnswer(rcode={self.rcode}, records={self.records})"


def query(port: int, name: str, rtype: int, timeout: float = 1.0, host: str = "127.0.0.1") -> DnsAnswer:
    """One UDP query; raises socket.timeout if nothing answers within `timeout`."""
    qid = random.randrange(1 << 16)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack(">HH", rtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (host, port))
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            msg, _ = s.recvfrom(65535)
            if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    records = []
    for _ in range(an):
        i = _skip_name(msg, i)
        t, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        rdata = msg[i:i + rdlen]
        if t == TYPE_A and rdlen == 4:
            text = socket.inet_ntoa(rdata)
        elif t == TYPE_TXT:
            parts, j = [], 0
            while j < len(rdata):
                parts.append(rdata[j + 1:j + 1 + rdata[j]].decode("utf-8", "replace"))
                j += 1 + rdata[j]
            text = "".join(parts)
        elif t == TYPE_PTR:
            text = _read_name(msg, i)
        else:
            text = rdata.hex()
        records.append((t, text))
        i += rdlen
    return DnsAnswer(flags & 0xF, records)


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


# ----------------------------------------------------------------------------------------------
# Servers


def _free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


class Unbound:
    """`unbound -d -c <conf>` answering from netcheck.conf plus `extra`; `stop()` kills it by pid."""

    def __init__(self, extra: str = "", ready_timeout: float = 10.0):
        self.dir = Path(tempfile.mkdtemp(prefix="levee-unbound-"))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        zone = ZONE_FILE.read_text()
        last_log = ""
        # The port can be taken between probing and unbound binding it: try a few.
        for attempt in range(3):
            self.port = _free_udp_tcp_port()
            conf = self.dir / "unbound.conf"
            conf.write_text(
                "server:\n"
                f"  interface: 127.0.0.1@{self.port}\n  port: {self.port}\n  do-daemonize: no\n"
                f'  chroot: ""\n  username: ""\n  directory: "{self.dir}"\n  pidfile: ""\n'
                '  use-syslog: no\n  logfile: ""\n  verbosity: 0\n  do-ip6: no\n  num-threads: 1\n'
                "  so-reuseport: no\n  access-control: 127.0.0.0/8 allow\n"
                '  module-config: "iterator"\n  local-zone: "." static\n'
                f"{zone}\n{extra}\nremote-control:\n  control-enable: no\n")
            self.log = self.dir / f"unbound-{attempt}.log"
            with open(self.log, "wb") as logf:
                self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready(ready_timeout):
                return
            self.stop()
            last_log = self.log.read_text(errors="replace")
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"unbound did not answer on 127.0.0.1@{self.port}:\n{last_log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if query(self.port, "ready.test", TYPE_TXT, timeout=0.2).values(TYPE_TXT) == ["ready"]:
                    return True
            except (socket.timeout, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        return False

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def query(self, name: str, rtype: int) -> DnsAnswer:
        return query(self.port, name, rtype)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class BlackHole:
    """A loopback port (UDP and TCP) that is bound and never read: DNS queries to it time out,
    where a closed port would fail at once."""

    def __init__(self):
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", port))
                tcp.listen(1)
            except OSError:
                udp.close()
                tcp.close()
                continue
            self.udp, self.tcp, self.port = udp, tcp, port
            return
        raise RuntimeError("no loopback port free for both UDP and TCP")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.udp.close()
        self.tcp.close()


# ----------------------------------------------------------------------------------------------
# DKIM


def _relaxed_header(name: str, value: str) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded value, WSP runs as one space, no WSP at the ends."""
    value = re.sub(r"[ \t]+", " ", value.replace("\r\n", "")).strip(" ")
    return f"{name.strip().lower()}:{value}".encode()


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs as one space, none at line ends, no empty lines at the end."""
    lines = [re.sub(rb"[ \t]+", b" ", l).rstrip(b" ") for l in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(l + b"\r\n" for l in lines)


def _headers(head: bytes) -> list[tuple[str, str]]:
    """(name, raw value with its folding) in order."""
    out: list[tuple[str, str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + "\r\n" + line)
        elif ":" in line:
            name, value = line.split(":", 1)
            out.append((name, value))
    return out


class DkimKey:
    """A fresh RSA-2048 key (openssl); `public_b64` is the p= of its DKIM record. `sign` is a
    small rsa-sha256 relaxed/relaxed signer (RFC 6376 section 5) whose RSA step is openssl's:
    the verifier under test is Levee's, so the signer only has to be right, and a wrong one
    fails the dkim=pass assertions."""

    SIGNED = ("from", "to", "subject", "date", "message-id")

    def __init__(self, workdir: Path):
        self.path = workdir / "dkim.key"
        subprocess.run([OPENSSL, "genrsa", "-out", str(self.path), "2048"], check=True,
                       capture_output=True, timeout=60)
        der = subprocess.run([OPENSSL, "rsa", "-in", str(self.path), "-pubout", "-outform", "DER"], check=True,
                             capture_output=True, timeout=60).stdout
        self.public_b64 = base64.b64encode(der).decode()

    def sign(self, message: bytes, domain: str = SENDER_DOMAIN, selector: str = DKIM_SELECTOR) -> bytes:
        """`message` (CRLF, with a header/body separator) with a DKIM-Signature prepended."""
        head, body = message.split(b"\r\n\r\n", 1)
        bh = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
        fields = _headers(head)
        signed = []
        for name in self.SIGNED:
            # RFC 6376 5.4.2: the last instance of a header is signed first.
            matches = [f for f in fields if f[0].strip().lower() == name]
            assert matches, f"message has no {name} header to sign"
            signed.append(matches[-1])
        value = (f" v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector}; t={int(time.time())}; "
                 f"h={':'.join(self.SIGNED)}; bh={bh}; b=")
        data = b"".join(_relaxed_header(n, v) + b"\r\n" for n, v in signed)
        data += _relaxed_header("DKIM-Signature", value)  # the signature's own header, b= empty, no CRLF
        sig = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", str(self.path)], input=data, check=True,
                             capture_output=True, timeout=60).stdout
        return f"DKIM-Signature:{value}{base64.b64encode(sig).decode()}\r\n".encode() + message
