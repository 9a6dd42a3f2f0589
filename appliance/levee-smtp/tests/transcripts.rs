//! Runs the SMTP transcripts in `tests/transcripts/*.txt` against a real `Session`.
//!
//! Format, one item per line:
//! - `# ...` comment, blank line: kept as is.
//! - `@config key=value`: session setting for this transcript (before the first `C:`).
//! - `C: text`: client line, sent with CRLF (`C:` alone: an empty line). `C< text`: raw bytes, no CRLF added.
//!   Both understand `\r`, `\n`, `\t`, `\\` and `\xNN`. Consecutive client lines are
//!   sent in one read, so they arrive pipelined.
//! - `S: text`: expected server reply line; `S: [stored] data` a stored message (data
//!   escaped as above), `S: [tls]` a TLS handshake, `S: [close]` the connection closed.
//! - `W: seconds`: time passes (the harness calls `handle_timeout` when due).
//!
//! Policy: HELO names starting with `reject` are refused, senders named `spammer`
//! refused, recipients accepted only at example.test (`unknown@` refused). The store
//! answers `250 2.0.0 queued as N`.
//!
//! On a mismatch the actual transcript is written beside the fixture as `.actual`.
//! Transcripts without STARTTLS or waits are also replayed with the input split at
//! every byte, which must not change anything.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use levee_smtp::{Action, Decision, PeerInfo, Question, Session, SessionConfig};
use levee_types::Reply;

fn policy(q: &Question) -> Decision {
    match q {
        Question::Helo { name, .. } if name.starts_with("reject") => {
            Decision::Reject(Reply::with(550, 7, 1, "go away"))
        }
        Question::MailFrom { from: Some(a), .. } if a.local() == "spammer" => {
            Decision::Reject(Reply::with(550, 7, 1, "sender refused"))
        }
        Question::RcptTo { to } if to.domain().as_str() != "example.test" => {
            Decision::Reject(Reply::with(550, 7, 1, "relaying denied"))
        }
        Question::RcptTo { to } if to.local() == "unknown" => {
            Decision::Reject(Reply::with(550, 1, 1, "no such user"))
        }
        _ => Decision::Accept,
    }
}

fn base_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.levee.test".into(),
        max_message_size: 10_000,
        max_recipients: 3,
        max_command_line: 512,
        max_data_line: 1000,
        max_errors: 20,
        idle_timeout: Duration::from_secs(300),
        command_timeout: Duration::from_secs(60),
        data_timeout: Duration::from_secs(900),
        session_timeout: Duration::from_secs(1800),
        // Error delays only where a fixture asks for them.
        soft_error_limit: u32::MAX,
        error_delay_max: Duration::from_secs(5),
        min_data_rate: 100,
        tls_available: true,
    }
}

fn set(config: &mut SessionConfig, kv: &str) {
    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad @config {kv:?}"));
    let n = || v.parse::<u64>().unwrap_or_else(|_| panic!("bad number in {kv:?}"));
    match k {
        "max_message_size" => config.max_message_size = n(),
        "max_recipients" => config.max_recipients = n() as usize,
        "max_command_line" => config.max_command_line = n() as usize,
        "max_data_line" => config.max_data_line = n() as usize,
        "max_errors" => config.max_errors = n() as u32,
        "idle_timeout" => config.idle_timeout = Duration::from_secs(n()),
        "command_timeout" => config.command_timeout = Duration::from_secs(n()),
        "data_timeout" => config.data_timeout = Duration::from_secs(n()),
        "session_timeout" => config.session_timeout = Duration::from_secs(n()),
        "soft_error_limit" => config.soft_error_limit = n() as u32,
        "error_delay_max" => config.error_delay_max = Duration::from_secs(n()),
        "min_data_rate" => config.min_data_rate = n(),
        "tls_available" => config.tls_available = v == "true",
        _ => panic!("unknown @config key {k:?}"),
    }
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn escape(data: &[u8]) -> String {
    let mut s = String::new();
    for &b in data {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// What the server did, in order.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Wrote(Vec<u8>),
    Stored(Vec<u8>),
    Tls,
    /// A `Pause`, in whole seconds; the driver's clock moves on by it.
    Pause(u64),
    Close,
}

/// A driver: performs actions at once, like the relay does with an instant policy.
struct Driver {
    session: Session,
    now: Instant,
    events: Vec<Event>,
    stored: usize,
}

impl Driver {
    fn new(config: SessionConfig) -> Driver {
        let now = Instant::now();
        let peer = PeerInfo { ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), port: 2525 };
        let mut d =
            Driver { session: Session::new(config, peer, now), now, events: vec![], stored: 0 };
        d.pump();
        d
    }

    fn pump(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(bytes) => self.events.push(Event::Wrote(bytes)),
                Action::Ask(q) => self.session.answer(policy(&q), self.now),
                Action::Store(m) => {
                    self.stored += 1;
                    self.events.push(Event::Stored(m.data));
                    let reply = Reply::with(250, 0, 0, format!("queued as {}", self.stored));
                    self.session.stored(reply, self.now);
                }
                Action::StartTls => {
                    self.events.push(Event::Tls);
                    self.session.tls_up(self.now);
                }
                Action::Pause(d) => {
                    self.events.push(Event::Pause(d.as_secs()));
                    self.now += d;
                }
                Action::Close => self.events.push(Event::Close),
            }
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        self.session.handle_input(bytes, self.now);
        self.pump();
    }

    fn wait(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
            self.session.handle_timeout(self.now);
        }
        self.pump();
    }

    /// Renders events since `from` as `S:` lines.
    fn render(&self, from: usize, out: &mut String) {
        for e in &self.events[from..] {
            match e {
                Event::Wrote(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    for line in text.split_inclusive("\r\n") {
                        let line = line
                            .strip_suffix("\r\n")
                            .map_or_else(|| format!("{line} [no CRLF]"), |l| l.to_string());
                        out.push_str(&format!("S: {line}\n"));
                    }
                }
                Event::Stored(data) => out.push_str(&format!("S: [stored] {}\n", escape(data))),
                Event::Tls => out.push_str("S: [tls]\n"),
                Event::Pause(secs) => out.push_str(&format!("S: [pause {secs} s]\n")),
                Event::Close => out.push_str("S: [close]\n"),
            }
        }
    }
}

/// Replays a fixture; returns the actual transcript and, if it can be split, the whole
/// client input.
fn replay(fixture: &str) -> (String, Option<Vec<u8>>, SessionConfig) {
    let mut config = base_config();
    for line in fixture.lines() {
        if let Some(kv) = line.strip_prefix("@config ") {
            set(&mut config, kv.trim());
        }
    }
    let mut d = Driver::new(config.clone());
    let mut actual = String::new();
    let mut rendered = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut all_input = Vec::new();
    let mut splittable = true;
    for line in fixture.lines() {
        if line.starts_with("S: ") || line == "S:" {
            // Expected output ends a group of client lines: send them, and render what
            // the server did in place of the expected lines.
            if !pending.is_empty() {
                d.input(&pending);
                pending.clear();
                d.render(rendered, &mut actual);
                rendered = d.events.len();
            }
            continue;
        }
        let line_text = if line == "C:" { "C: " } else { line };
        let client = match (line_text.strip_prefix("C: "), line_text.strip_prefix("C< ")) {
            (Some(text), _) => Some([unescape(text), b"\r\n".to_vec()].concat()),
            (_, Some(text)) => Some(unescape(text)),
            _ => None,
        };
        // Output so far goes before this line: the banner before the first client line,
        // replies right after the client lines they answer.
        if (client.is_some() && pending.is_empty()) || (client.is_none() && !pending.is_empty()) {
            if !pending.is_empty() {
                d.input(&pending);
                pending.clear();
            }
            d.render(rendered, &mut actual);
            rendered = d.events.len();
        }
        actual.push_str(line);
        actual.push('\n');
        if let Some(bytes) = client {
            all_input.extend_from_slice(&bytes);
            pending.extend_from_slice(&bytes);
        } else if let Some(secs) = line.strip_prefix("W: ") {
            splittable = false;
            d.wait(secs.trim().parse().expect("W: seconds"));
            d.render(rendered, &mut actual);
            rendered = d.events.len();
        }
    }
    if !pending.is_empty() {
        d.input(&pending);
    }
    d.render(rendered, &mut actual);
    if d.events.contains(&Event::Tls) {
        splittable = false;
    }
    (actual, splittable.then_some(all_input), config)
}

/// The fixture as it should read: client and other lines where they are, server lines
/// after the client lines they answer. Comparing the re-rendered transcript with the file
/// checks both content and placement.
fn normalise(fixture: &str) -> String {
    fixture.lines().map(|l| format!("{l}\n")).collect()
}

fn run_split(config: &SessionConfig, input: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut d = Driver::new(config.clone());
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        d.input(&input[last..cut]);
        last = cut;
    }
    // How replies are grouped into writes depends on the reads; what is written does not.
    let mut merged: Vec<Event> = Vec::new();
    for e in d.events {
        match (merged.last_mut(), e) {
            (Some(Event::Wrote(w)), Event::Wrote(more)) => w.extend(more),
            (_, e) => merged.push(e),
        }
    }
    merged
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/transcripts exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    let mut ran = 0;
    let mut failed = Vec::new();
    for path in &paths {
        let fixture = std::fs::read_to_string(path).unwrap();
        let (actual, input, config) = replay(&fixture);
        let actual_path = path.with_extension("actual");
        if actual != normalise(&fixture) {
            std::fs::write(&actual_path, &actual).unwrap();
            failed.push(format!("{} (see {})", path.display(), actual_path.display()));
        } else {
            let _ = std::fs::remove_file(&actual_path);
        }
        if let Some(input) = input {
            let whole = run_split(&config, &input, &[]);
            for cut in 0..=input.len() {
                let split = run_split(&config, &input, &[cut]);
                assert_eq!(split, whole, "{}: input split at {cut}", path.display());
            }
            let bytewise: Vec<usize> = (1..input.len()).collect();
            let split = run_split(&config, &input, &bytewise);
            assert_eq!(split, whole, "{}: input fed byte by byte", path.display());
        }
        ran += 1;
    }
    assert!(ran > 0, "no transcripts found in {}", dir.display());
    assert!(failed.is_empty(), "transcripts differ:\n{}", failed.join("\n"));
}
