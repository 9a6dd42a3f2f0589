"""`levee check-config FILE`: exit 0 + "ok", or exit 1 with FILE:LINE:COL: message."""

import re
import subprocess

import pytest

from harness import LEVEE_BIN

MINIMAL = """\
hostname = "mx.example.test"
data_dir = "/var/lib/levee"
[smtp]
listen = ["127.0.0.1:2525"]
[[domain]]
name = "example.test"
downstream = "127.0.0.1:2626"
"""

FULL = """\
hostname = "mx.example.test"
data_dir = "/var/lib/levee"
[smtp]
listen = ["127.0.0.1:2525"]
max_message_size = 26214400
max_recipients = 100
max_connections = 500
max_connections_per_ip = 20
max_errors = 10
idle_timeout_secs = 300
min_free_bytes = 67108864
tls = true
[delivery]
retry_first_secs = 60
retry_max_interval_secs = 3600
max_lifetime_secs = 432000
connect_timeout_secs = 30
command_timeout_secs = 300
[[domain]]
name = "example.test"
downstream = "127.0.0.1:2626"
tls = "opportunistic"
source_address = "127.0.0.1"
enabled = true
[[domain]]
name = "pending.test"
[[domain]]
name = "named.test"
downstream = "mail.named.test"
tls = "required"
enabled = false
"""


def check(tmp_path, text, name="levee.toml"):
    p = tmp_path / name
    p.write_text(text)
    r = subprocess.run([LEVEE_BIN, "check-config", str(p)], capture_output=True, text=True, timeout=30)
    return p, r


def test_minimal_ok(tmp_path):
    _, r = check(tmp_path, MINIMAL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in (r.stdout + r.stderr).lower()


def test_full_ok(tmp_path):
    _, r = check(tmp_path, FULL)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mx_prefix_downstream_ok(tmp_path):
    """cli.md: a downstream with the "mx:" prefix means an MX lookup."""
    _, r = check(tmp_path, MINIMAL.replace('downstream = "127.0.0.1:2626"', 'downstream = "mx:example.net"'))
    assert r.returncode == 0, r.stdout + r.stderr


def with_line(text: str, after_line: int, new: str) -> str:
    lines = text.splitlines()
    lines.insert(after_line, new)
    return "\n".join(lines) + "\n"


def replace_line(text: str, lineno: int, new: str) -> str:
    lines = text.splitlines()
    lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


BAD = [
    # (id, config text, 1-based line the error must name)
    ("unknown-top-key", with_line(MINIMAL, 2, 'colour = "blue"'), 3),
    ("unknown-smtp-key", with_line(MINIMAL, 4, "max_mesage_size = 10"), 5),
    ("unknown-domain-key", with_line(MINIMAL, 7, 'downstraem = "x:1"'), 8),
    ("port-99999", replace_line(MINIMAL, 4, 'listen = ["127.0.0.1:99999"]'), 4),
    ("downstream-garbage", replace_line(MINIMAL, 7, 'downstream = "not a host:port:x"'), 7),
    ("downstream-port-0x", replace_line(MINIMAL, 7, 'downstream = "127.0.0.1:notaport"'), 7),
    ("domain-tls-bogus", with_line(MINIMAL, 7, 'tls = "sometimes"'), 8),
    ("wrong-type", with_line(MINIMAL, 4, 'max_recipients = "many"'), 5),
    ("negative", with_line(MINIMAL, 4, "max_recipients = -1"), 5),
    ("bad-domain-name", replace_line(MINIMAL, 6, 'name = "exa mple..test"'), 6),
    ("toml-syntax", with_line(MINIMAL, 4, "max_errors = = 3"), 5),
]


@pytest.mark.parametrize("text,line", [(t, l) for _, t, l in BAD], ids=[i for i, _, _ in BAD])
def test_bad_config_names_line(tmp_path, text, line):
    p, r = check(tmp_path, text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}, expected 1:\n{text}\n---\n{out}"
    m = re.search(re.escape(str(p)) + r":(\d+):(\d+): \S", out)
    assert m, f"no `{p}:LINE:COL: message` in output:\n{out}"
    assert int(m.group(1)) == line, f"error names line {m.group(1)}, the fault is on line {line}:\n{text}\n---\n{out}"


@pytest.mark.parametrize("missing", ["hostname", "data_dir"])
def test_missing_required_key(tmp_path, missing):
    text = "\n".join(l for l in MINIMAL.splitlines() if not l.startswith(missing)) + "\n"
    p, r = check(tmp_path, text)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert str(p) in out and missing in out, out


def test_missing_file(tmp_path):
    r = subprocess.run([LEVEE_BIN, "check-config", str(tmp_path / "nope.toml")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
