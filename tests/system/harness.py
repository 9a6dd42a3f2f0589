"""Harness for Levee's system tests: real peers on 127.0.0.1, bounded waits, every process reaped.

Peers:
- `Sink`: Postfix's real `smtp-sink`, dumping each transaction to a file (`-d`), with fault modes.
- `PySink`: a small recording SMTP server for what smtp-sink cannot do (reject one recipient of
  two, keep the exact bytes received, count delivery attempts).
- `Levee`: `levee run --config` on a generated config.
- `RawSMTP`: a raw-socket client, for pipelining, BDAT, smuggling and limit tests.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEVEE_BIN = os.environ.get("LEVEE_BIN", str(REPO / "target" / "debug" / "levee"))
SMTP_SINK = os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink")
SMTP_SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
SWAKS = os.environ.get("SWAKS", "/usr/bin/swaks")
NMAP = os.environ.get("NMAP", "/usr/bin/nmap")

# Every wait in the suite is bounded by one of these.
START_TIMEOUT = 30.0
IO_TIMEOUT = 15.0
DELIVERY_TIMEOUT = 30.0

QUEUED_RE = re.compile(r"queued as ([0-9A-Fa-f]{16})")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `pred` until it returns a truthy value or `timeout` passes; return the value or raise."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ProcessRegistry:
    """Every child the suite starts, so teardown can kill whatever is still alive (by pid)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv, **kw) -> subprocess.Popen:
        # Own session so a kill reaches the child's own children too, and only those.
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------------------------
# smtp-sink


@dataclass
class SinkMessage:
    """One transaction captured by smtp-sink (`-d`): envelope plus the message, LF line ends."""

    path: Path
    mail_from: str
    rcpts: list[str]
    helo: str | None
    text: str  # the message as received, CRLF turned into LF by smtp-sink

    @property
    def header_text(self) -> str:
        return self.text.split("\n\n", 1)[0]

    def headers(self) -> list[tuple[str, str]]:
        """(name, value) in order, folded lines unfolded."""
        out: list[tuple[str, str]] = []
        for line in self.header_text.split("\n"):
            if line[:1] in (" ", "\t") and out:
                out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
            elif ":" in line:
                k, v = line.split(":", 1)
                out.append((k, v.strip()))
        return out

    def header(self, name: str) -> str | None:
        for k, v in self.headers():
            if k.lower() == name.lower():
                return v
        return None


def parse_sink_dump(path: Path) -> SinkMessage | None:
    raw = path.read_bytes()
    # The dump ends with the message plus one empty line; until that is there it is still open.
    if not raw.endswith(b"\n\n"):
        return None
    text = raw.decode("utf-8", errors="surrogateescape")
    lines = text[:-1].split("\n")  # drop smtp-sink's trailing empty line
    mail_from, rcpts, helo = "", [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("X-Mail-Args: "):
            mail_from = line[len("X-Mail-Args: "):]
        elif line.startswith("X-Rcpt-Args: "):
            rcpts.append(line[len("X-Rcpt-Args: "):])
        elif line.startswith("X-Helo-Args: "):
            helo = line[len("X-Helo-Args: "):]
        elif line.startswith("Received: ") and i + 1 < len(lines) and "(smtp-sink)" in lines[i + 1]:
            i += 3  # smtp-sink's own three-line Received ends its headers
            break
        i += 1
    body = "\n".join(lines[i:])
    # `lines` ended with "" (the message's last LF), so re-add it.
    return SinkMessage(path, mail_from, rcpts, helo, body)


SINK_MODES = {
    # mode: (extra smtp-sink args, transactions in this mode count as delivered)
    "ok": ([], True),
    "rcpt4xx": (["-r", "RCPT"], False),
    "rcpt5xx": (["-f", "RCPT"], False),
    "data4xx": (["-r", "DATA"], False),
    "data5xx": (["-f", "DATA"], False),
    "dot4xx": (["-r", "."], False),  # reject after the whole message: the dump is an attempt
    "dot5xx": (["-f", "."], False),
}


class Sink:
    """Postfix smtp-sink on a fixed free port. Not running = connections refused."""

    def __init__(self, registry: ProcessRegistry):
        self.registry = registry
        self.port = free_port()
        # smtp-sink drops to an unprivileged user when run as root; it must be able to write here.
        self.root = Path(tempfile.mkdtemp(prefix="levee-sink-"))
        os.chmod(self.root, 0o777)
        self.proc: subprocess.Popen | None = None
        self.runs: list[tuple[Path, str]] = []
        self.log = self.root / "smtp-sink.log"
        self._cache: dict[Path, tuple[int, int, SinkMessage | None]] = {}

    def start(self, mode: str = "ok"):
        self.stop()
        args, _ = SINK_MODES[mode]
        run_dir = self.root / f"run{len(self.runs)}-{mode}"
        run_dir.mkdir()
        os.chmod(run_dir, 0o777)
        self.runs.append((run_dir, mode))
        argv = [SMTP_SINK, "-4", "-t", "30", "-h", "sink.test"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += args + ["-d", f"{run_dir}/%Y%m%d%H%M%S.", f"127.0.0.1:{self.port}", "64"]
        logf = open(self.log, "ab")
        self.proc = self.registry.spawn(argv, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        try:
            wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, START_TIMEOUT,
                       what="smtp-sink to listen")
        except TimeoutError:
            raise RuntimeError(f"smtp-sink did not start: {self.log.read_text(errors='replace')}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {self.log.read_text(errors='replace')}")
        return self

    def stop(self):
        """Stop listening: from now on connections to the port are refused."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def _collect(self, delivered: bool) -> list[SinkMessage]:
        out = []
        for run_dir, mode in self.runs:
            if SINK_MODES[mode][1] != delivered:
                continue
            for p in sorted(run_dir.rglob("*")):
                if p.is_file():
                    m = self._parse_cached(p)
                    if m is not None:
                        out.append(m)
        return out

    def _parse_cached(self, p: Path) -> SinkMessage | None:
        st = p.stat()
        hit = self._cache.get(p)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        m = parse_sink_dump(p)
        self._cache[p] = (st.st_size, st.st_mtime_ns, m)
        return m

    def token_counts(self, tokens) -> dict[str, int]:
        """How many accepted messages contain each token."""
        counts = {t: 0 for t in tokens}
        pat = re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None
        for m in self.messages():
            for t in set(pat.findall(m.text)) if pat else ():
                counts[t] += 1
        return counts

    def wait_tokens(self, tokens, timeout: float = DELIVERY_TIMEOUT) -> dict[str, int]:
        """Wait until every token has arrived in at least one message; return the counts."""
        tokens = list(tokens)
        last = {}

        def done():
            nonlocal last
            last = self.token_counts(tokens)
            return all(last.values())

        try:
            wait_until(done, timeout, interval=0.5, what="all tokens at smtp-sink")
        except TimeoutError:
            missing = [t for t, n in last.items() if n == 0]
            raise AssertionError(f"{len(missing)} of {len(tokens)} accepted messages never arrived "
                                 f"within {timeout}s, e.g. {missing[:5]}")
        return last

    def messages(self) -> list[SinkMessage]:
        """Transactions the sink accepted (only runs in an accepting mode)."""
        return self._collect(True)

    def attempts(self) -> list[SinkMessage]:
        """Transactions dumped in a rejecting mode (e.g. `dot4xx`): seen, but refused."""
        return self._collect(False)

    def wait_messages(self, n: int, timeout: float = DELIVERY_TIMEOUT, pred=None) -> list[SinkMessage]:
        def have():
            ms = [m for m in self.messages() if pred is None or pred(m)]
            return ms if len(ms) >= n else None

        try:
            return wait_until(have, timeout, what=f"{n} message(s) at smtp-sink")
        except TimeoutError:
            got = [m for m in self.messages() if pred is None or pred(m)]
            raise AssertionError(f"expected {n} message(s) at the sink within {timeout}s, got {len(got)}")

    def close(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# PySink


@dataclass
class PyTransaction:
    mail_from: str
    rcpts: list[str]  # accepted recipients
    rejected: list[str]
    data: bytes | None = None  # exact bytes between DATA's 354 and the final ".", dots unstuffed
    delivered: bool = False


class PySink:
    """A recording SMTP server. `rcpt_reply(addr, attempt_no)` returns a reply line to refuse
    that recipient (e.g. "550 5.1.1 no such user") or None to accept it; `attempt_no` counts
    RCPTs seen for that address, from 1."""

    def __init__(self, rcpt_reply=None, hostname="pysink.test"):
        self.rcpt_reply = rcpt_reply or (lambda addr, n: None)
        self.hostname = hostname
        self.lock = threading.Lock()
        self.transactions: list[PyTransaction] = []
        self.rcpt_counts: dict[str, int] = {}
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self):
                sink._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _session(self, rfile, wfile):
        def reply(s: str):
            wfile.write(s.encode() + b"\r\n")
            wfile.flush()

        reply(f"220 {self.hostname} ESMTP pysink")
        tx: PyTransaction | None = None
        while True:
            line = rfile.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "LHLO"):
                reply(f"250-{self.hostname}")
                reply("250-PIPELINING")
                reply("250-8BITMIME")
                reply("250-SMTPUTF8")
                reply("250 ENHANCEDSTATUSCODES")
            elif verb == "HELO":
                reply(f"250 {self.hostname}")
            elif verb == "MAIL":
                m = re.match(r"(?i)MAIL FROM:\s*<([^>]*)>", cmd)
                tx = PyTransaction(m.group(1) if m else cmd, [], [])
                with self.lock:
                    self.transactions.append(tx)
                reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                m = re.match(r"(?i)RCPT TO:\s*<([^>]*)>", cmd)
                addr = m.group(1) if m else cmd
                with self.lock:
                    n = self.rcpt_counts.get(addr.lower(), 0) + 1
                    self.rcpt_counts[addr.lower()] = n
                r = self.rcpt_reply(addr, n)
                if tx is None:
                    reply("503 5.5.1 need MAIL")
                elif r:
                    tx.rejected.append(addr)
                    reply(r)
                else:
                    tx.rcpts.append(addr)
                    reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if tx is None or not tx.rcpts:
                    reply("554 5.5.1 no valid recipients")
                    continue
                reply("354 go ahead")
                buf = []
                while True:
                    dl = rfile.readline(1 << 20)
                    if not dl:
                        return
                    if dl == b".\r\n":
                        break
                    if dl.startswith(b"."):
                        dl = dl[1:]
                    buf.append(dl)
                tx.data = b"".join(buf)
                tx.delivered = True
                reply("250 2.0.0 Ok: stored")
                tx = None
            elif verb == "RSET":
                tx = None
                reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                reply("221 2.0.0 Bye")
                return
            else:
                reply("502 5.5.2 not implemented")

    def delivered(self) -> list[PyTransaction]:
        with self.lock:
            return [t for t in self.transactions if t.delivered]

    def wait_delivered(self, n: int, timeout: float = DELIVERY_TIMEOUT) -> list[PyTransaction]:
        try:
            return wait_until(lambda: (d := self.delivered()) and len(d) >= n and d, timeout,
                              what=f"{n} delivery(ies) at pysink")
        except TimeoutError:
            raise AssertionError(f"expected {n} delivered message(s) at pysink within {timeout}s, "
                                 f"got {len(self.delivered())}; transactions: {self.transactions}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# Levee


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def render_config(hostname: str, data_dir: str, smtp: dict, delivery: dict, domains: list[dict]) -> str:
    out = [f"hostname = {toml_value(hostname)}", f"data_dir = {toml_value(data_dir)}", "", "[smtp]"]
    out += [f"{k} = {toml_value(v)}" for k, v in smtp.items()]
    if delivery:
        out += ["", "[delivery]"] + [f"{k} = {toml_value(v)}" for k, v in delivery.items()]
    for d in domains:
        out += ["", "[[domain]]"] + [f"{k} = {toml_value(v)}" for k, v in d.items()]
    return "\n".join(out) + "\n"


class Levee:
    """`levee run --config` on a generated config; restartable on the same ports and data_dir."""

    def __init__(self, registry: ProcessRegistry, workdir: Path, domains: list[dict],
                 smtp: dict | None = None, delivery: dict | None = None, data_dir: Path | None = None,
                 hostname: str = "mx.example.test"):
        self.registry = registry
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = data_dir or (workdir / "data")
        self.smtp = {"listen": [f"127.0.0.1:{self.port}"]}
        self.smtp.update(smtp or {})
        # Fast retries so tests observe several attempts within seconds.
        self.delivery = {"retry_first_secs": 1, "retry_max_interval_secs": 2, "connect_timeout_secs": 5,
                         "command_timeout_secs": 15}
        self.delivery.update(delivery or {})
        self.config_path = workdir / "levee.toml"
        self.config_path.write_text(render_config(hostname, str(self.data_dir), self.smtp, self.delivery, domains))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = workdir / "levee-0.log"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not os.access(LEVEE_BIN, os.X_OK):
            raise RuntimeError(f"levee binary not found at {LEVEE_BIN} (set LEVEE_BIN or cargo build -p levee)")
        self.log_path = self.workdir / f"levee-{self.starts}.log"
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        logf = open(self.log_path, "wb")
        self.proc = self.registry.spawn([LEVEE_BIN, "run", "--config", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                return "exited"
            return "listening" in self.log_path.read_text(errors="replace") and "up"

        try:
            state = wait_until(ready, START_TIMEOUT, what="levee's `listening` line")
        except TimeoutError:
            raise RuntimeError(f"levee printed no `listening` line within {START_TIMEOUT}s:\n{self.log_tail()}")
        if state == "exited":
            raise RuntimeError(f"levee exited with {self.proc.returncode} at start:\n{self.log_tail()}")
        # The line is printed once SMTP is ready; accept no excuse for a closed port.
        if not port_open(self.port):
            raise RuntimeError(f"levee said `listening` but {self.addr} refuses connections:\n{self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        assert self.alive(), f"levee is not running:\n{self.log_tail()}"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (bounded); returns the exit status (negative = killed by a signal)."""
        assert self.alive(), f"levee is not running:\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(f"levee did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")

    def restart(self):
        if self.alive():
            self.terminate()
        return self.start()

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("levee-*.log")))

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def spool_dir(self, sub: str) -> Path:
        return self.data_dir / "spool" / sub

    # Clients ------------------------------------------------------------------------------------

    def raw(self) -> "RawSMTP":
        return RawSMTP(self.port)

    def swaks(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return swaks(self.port, *args, timeout=timeout)


def finish_levees(request, made: list["Levee"]) -> None:
    """Fixture teardown: kill what is still running and, when the test failed, print each
    Levee's log tail and config (the first thing to read after a failure)."""
    for lv in made:
        if lv.alive():
            lv.kill9()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for lv in made:
            print(f"\n===== levee log ({lv.workdir}) =====\n{lv.log()[-20000:]}")
            print(f"===== config =====\n{lv.config_path.read_text()}")


def swaks(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [SWAKS, "--server", f"127.0.0.1:{port}", "--timeout", "15", "--helo", "client.test", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Raw client


@dataclass
class Reply:
    code: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self):
        return " | ".join(f"{self.code} {l}" for l in self.lines)


class RawSMTP:
    """Byte-level SMTP client: send anything, read replies one at a time with a timeout."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.transcript: list[str] = []
        self.banner = self.reply()

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(f"C: {data!r}")
        self.sock.sendall(data)

    def _line(self) -> bytes | None:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self) -> Reply | None:
        """The next (possibly multi-line) reply, or None if the server closed the connection."""
        r = None
        while True:
            line = self._line()
            if line is None:
                self.transcript.append("S: <closed>")
                return r if r and r.lines else None
            s = line.decode("utf-8", errors="replace")
            self.transcript.append(f"S: {s}")
            code = int(s[:3]) if s[:3].isdigit() else -1
            if r is None:
                r = Reply(code)
            r.lines.append(s[4:])
            if len(s) < 4 or s[3] != "-":
                return r

    def cmd(self, line: str | bytes) -> Reply | None:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def replies_until_quiet(self, quiet: float = 2.0, limit: float = 20.0) -> list[Reply]:
        """Read replies until none arrives for `quiet` seconds (or the peer closes)."""
        out = []
        old = self.sock.gettimeout()
        self.sock.settimeout(quiet)
        deadline = time.monotonic() + limit
        try:
            while time.monotonic() < deadline:
                try:
                    r = self.reply()
                except (socket.timeout, TimeoutError):
                    break
                if r is None:
                    break
                out.append(r)
        finally:
            self.sock.settimeout(old)
        return out

    def closed(self, timeout: float = 5.0) -> bool:
        """True if the peer has closed (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    def ehlo(self, name: str = "client.test") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r is not None and r.code == 250, f"EHLO failed: {r}"
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def ehlo_keywords(r: Reply) -> set[str]:
    return {l.split(" ", 1)[0].upper() for l in r.lines[1:]}


def dot_stuff(body: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency for a CRLF-normalised body."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def send_raw_message(port: int, mail_from: str, rcpts: list[str], body: bytes) -> tuple[Reply, RawSMTP]:
    """One transaction over a raw socket; `body` must be CRLF and end with CRLF. Returns the
    reply to the final dot (and the open connection)."""
    c = RawSMTP(port)
    c.ehlo()
    r = c.cmd(f"MAIL FROM:<{mail_from}>")
    assert r and r.code == 250, f"MAIL: {r}\n" + "\n".join(c.transcript)
    for a in rcpts:
        r = c.cmd(f"RCPT TO:<{a}>")
        assert r and r.code == 250, f"RCPT {a}: {r}\n" + "\n".join(c.transcript)
    r = c.cmd("DATA")
    assert r and r.code == 354, f"DATA: {r}\n" + "\n".join(c.transcript)
    c.send(dot_stuff(body) + b".\r\n")
    return c.reply(), c


def head(tok: str, frm: str = "alice@sender.test") -> str:
    """Ordinary header fields with Subject = tok (CRLF, no blank line): test mail should look like
    mail, so that content scoring (missing Date/From/Message-ID) never decides a relay test."""
    return (f"From: {frm}\r\nTo: bob@example.test\r\nDate: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{tok}@sender.test>\r\nSubject: {tok}\r\n")


def unique_token(prefix: str = "tok") -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"
