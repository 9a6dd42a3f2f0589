//! Session tests through a small client DSL:
//! `c.cmd("EHLO x.test", "250").assert_contains("STARTTLS")`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use levee_types::{Body, Reply};

use crate::{Action, Decision, Incoming, PeerInfo, Question, Session, SessionConfig};

type Policy = Box<dyn FnMut(&Question) -> Decision>;

/// The policy used throughout: accepts mail for example.test only.
fn standard_policy(q: &Question) -> Decision {
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

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.levee.test".into(),
        max_message_size: 10_000,
        max_recipients: 3,
        max_command_line: 512,
        max_data_line: 1000,
        max_errors: 5,
        idle_timeout: Duration::from_secs(300),
        command_timeout: Duration::from_secs(60),
        data_timeout: Duration::from_secs(900),
        session_timeout: Duration::from_secs(1800),
        soft_error_limit: 3,
        error_delay_max: Duration::from_secs(5),
        min_data_rate: 100,
        tls_available: true,
    }
}

fn peer() -> PeerInfo {
    PeerInfo { ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port: 40000 }
}

/// A scripted client: feeds bytes, performs the session's actions like a driver would
/// (policy answers, stores, TLS), and collects what the server wrote.
struct Client {
    session: Session,
    start: Instant,
    now: Instant,
    policy: Policy,
    out: Vec<u8>,
    seen: usize,
    stored: Vec<Incoming>,
    closed: bool,
    tls_handshakes: u32,
    /// Every `Pause` so far, each taken on the client's clock like a driver's sleep.
    pauses: Vec<Duration>,
}

/// Server output since the last command.
#[derive(Debug)]
struct Replies(String);

impl Replies {
    #[track_caller]
    fn assert_contains(&self, needle: &str) -> &Self {
        assert!(self.0.contains(needle), "expected {needle:?} in {:?}", self.0);
        self
    }

    #[track_caller]
    fn assert_not_contains(&self, needle: &str) -> &Self {
        assert!(!self.0.contains(needle), "unexpected {needle:?} in {:?}", self.0);
        self
    }

    #[track_caller]
    fn assert_eq(&self, text: &str) -> &Self {
        assert_eq!(self.0, text);
        self
    }
}

impl Client {
    fn new(config: SessionConfig) -> Client {
        Client::with_policy(config, Box::new(standard_policy))
    }

    fn with_policy(config: SessionConfig, policy: Policy) -> Client {
        let now = Instant::now();
        let mut c = Client {
            session: Session::new(config, peer(), now),
            start: now,
            now,
            policy,
            out: Vec::new(),
            seen: 0,
            stored: Vec::new(),
            closed: false,
            tls_handshakes: 0,
            pauses: Vec::new(),
        };
        c.pump();
        c
    }

    fn pump(&mut self) {
        while let Some(action) = self.session.poll_action() {
            assert!(!self.closed, "action after Close: {action:?}");
            match action {
                Action::Send(bytes) => self.out.extend_from_slice(&bytes),
                Action::Ask(q) => {
                    assert!(!self.session.wants_input());
                    let d = (self.policy)(&q);
                    self.session.answer(d, self.now);
                }
                Action::Store(m) => {
                    assert!(!self.session.wants_input());
                    let id = self.stored.len() + 1;
                    self.stored.push(m);
                    self.session
                        .stored(Reply::with(250, 0, 0, format!("queued as {id}")), self.now);
                }
                Action::StartTls => {
                    self.tls_handshakes += 1;
                    self.session.tls_up(self.now);
                }
                Action::Pause(d) => {
                    self.pauses.push(d);
                    self.now += d;
                }
                Action::Close => self.closed = true,
            }
        }
    }

    fn take(&mut self) -> Replies {
        let text = String::from_utf8(self.out[self.seen..].to_vec()).unwrap();
        self.seen = self.out.len();
        Replies(text)
    }

    fn send(&mut self, bytes: &[u8]) -> Replies {
        self.session.handle_input(bytes, self.now);
        self.pump();
        self.take()
    }

    /// Sends one command line and checks the first reply starts with `code`.
    #[track_caller]
    fn cmd(&mut self, line: &str, code: &str) -> Replies {
        let r = self.send(format!("{line}\r\n").as_bytes());
        assert!(r.0.starts_with(code), "{line:?}: expected {code}, got {:?}", r.0);
        r
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
            self.session.handle_timeout(self.now);
        }
        self.pump();
    }

    fn ready(config: SessionConfig) -> Client {
        let mut c = Client::new(config);
        c.take().assert_eq("220 mx.levee.test ESMTP Levee\r\n");
        c.cmd("EHLO client.test", "250");
        c
    }
}

#[test]
fn happy_path_stores_the_envelope_and_unstuffed_data() {
    let mut c = Client::ready(config());
    c.cmd("MAIL FROM:<alice@sender.test> SIZE=20 BODY=8BITMIME", "250 2.1.0");
    c.cmd("RCPT TO:<bob@example.test>", "250 2.1.5");
    c.cmd("RCPT TO:<carol@Example.TEST>", "250 2.1.5");
    c.cmd("DATA", "354");
    c.send(b"Subject: hi\r\n\r\n..dot\r\n.\r\n").assert_eq("250 2.0.0 queued as 1\r\n");
    c.cmd("QUIT", "221 2.0.0");
    assert!(c.closed);
    let m = &c.stored[0];
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.dot\r\n");
    let e = &m.envelope;
    assert_eq!(e.mail_from_path(), "<alice@sender.test>");
    assert_eq!(e.rcpt_to.len(), 2);
    assert_eq!(e.rcpt_to[1].to_string(), "carol@example.test");
    assert_eq!((e.helo.as_str(), e.tls, e.body), ("client.test", false, Body::EightBitMime));
    assert_eq!((e.declared_size, e.smtputf8, e.client_name.clone()), (Some(20), false, None));
    assert_eq!(e.client_ip, peer().ip);
}

#[test]
fn ehlo_advertises_extensions_and_starttls_only_before_tls() {
    let mut c = Client::new(config());
    c.take();
    c.cmd("EHLO client.test", "250-mx.levee.test\r\n")
        .assert_contains("250-PIPELINING\r\n")
        .assert_contains("250-SIZE 10000\r\n")
        .assert_contains("250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n")
        .assert_contains("CHUNKING")
        .assert_contains("250 STARTTLS\r\n");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@sender.test>\r\n")
        .assert_eq("220 2.0.0 ready to start TLS\r\n");
    assert_eq!(c.tls_handshakes, 1);
    assert!(c.session.is_tls());
    // The injected MAIL was discarded and the EHLO state reset.
    c.cmd("MAIL FROM:<a@sender.test>", "503 5.5.1");
    c.cmd("EHLO client.test", "250").assert_not_contains("STARTTLS");
    c.cmd("STARTTLS", "503 5.5.1");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("BDAT 5 LAST", "").assert_eq("");
    c.send(b"hi\n!!").assert_contains("550 5.6.11");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.send(b"BDAT 4 LAST\r\nhi\r\n").assert_eq("250 2.0.0 queued as 1\r\n");
    assert!(c.stored[0].envelope.tls);
}

#[test]
fn starttls_refusals() {
    let mut c = Client::ready(SessionConfig { tls_available: false, ..config() });
    c.cmd("EHLO client.test", "250").assert_not_contains("STARTTLS");
    c.cmd("STARTTLS", "502 5.5.1");
    let mut c = Client::ready(config());
    c.cmd("STARTTLS now", "501 5.5.4");
}

#[test]
fn policy_rejections_and_sequence_errors() {
    let mut c = Client::new(config());
    c.take();
    c.cmd("MAIL FROM:<a@sender.test>", "503 5.5.1");
    c.cmd("RCPT TO:<b@example.test>", "503 5.5.1");
    c.cmd("DATA", "503 5.5.1");
    c.cmd("HELO reject.test", "550 5.7.1");
    c.cmd("HELO ok.test", "250 mx.levee.test\r\n");
    c.cmd("MAIL FROM:<spammer@sender.test>", "550 5.7.1");
    assert_eq!(c.session.error_count(), 5);
    assert!(c.closed, "max_errors reached");
    assert!(c.take().0.is_empty());
    let mut c = Client::ready(SessionConfig { max_errors: 100, ..config() });
    c.cmd("MAIL FROM:<>", "250 2.1.0");
    c.cmd("MAIL FROM:<>", "503 5.5.1");
    c.cmd("DATA", "554 5.5.1");
    c.cmd("RCPT TO:<b@other.test>", "550 5.7.1");
    c.cmd("RCPT TO:<unknown@example.test>", "550 5.1.1");
    c.cmd("RCPT TO:<postmaster>", "550 5.1.1");
    c.cmd("RCPT TO:<b@example.test> NOTIFY=NEVER", "555 5.5.4");
    c.cmd("RCPT TO:b@example.test", "501 5.1.3");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("RCPT TO:<c@example.test>", "250");
    c.cmd("RCPT TO:<d@example.test>", "250");
    c.cmd("RCPT TO:<e@example.test>", "452 4.5.3");
    c.cmd("VRFY b", "252 2.5.0");
    c.cmd("EXPN list", "502 5.5.1");
    c.cmd("HELP", "214 2.0.0");
    c.cmd("NOOP", "250 2.0.0");
    c.cmd("xyzzy", "500 5.5.1");
    c.cmd("RSET", "250 2.0.0");
    c.cmd("RCPT TO:<b@example.test>", "503 5.5.1");
    c.cmd("", "500 5.5.1");
    assert!(!c.closed);
}

#[test]
fn http_probes_are_hung_up_on() {
    let mut c = Client::new(config());
    c.take();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").assert_eq("500 5.5.1 this is an SMTP server\r\n");
    assert!(c.closed);
}

#[test]
fn connect_rejection_sends_the_reply_and_closes() {
    let mut c = Client::with_policy(
        config(),
        Box::new(|q| match q {
            Question::Connect => Decision::Reject(Reply::with(554, 7, 1, "listed")),
            _ => Decision::Accept,
        }),
    );
    c.take().assert_eq("554 5.7.1 listed\r\n");
    assert!(c.closed);
}

#[test]
fn pregreet_is_noticed_and_input_waits_for_the_banner() {
    let now = Instant::now();
    let mut s = Session::new(config(), peer(), now);
    assert_eq!(s.poll_action(), Some(Action::Ask(Question::Connect)));
    assert!(!s.wants_input());
    assert_eq!(s.poll_timeout(), None);
    s.handle_input(b"EHLO early.test\r\n", now);
    assert!(s.pregreeted());
    assert_eq!(s.poll_action(), None);
    s.answer(Decision::Accept, now);
    assert!(matches!(s.poll_action(), Some(Action::Send(b)) if b.starts_with(b"220 ")));
    assert!(matches!(s.poll_action(), Some(Action::Ask(Question::Helo { extended: true, .. }))));
}

#[test]
fn pipelined_commands_are_answered_in_order_in_one_send() {
    let now = Instant::now();
    let mut s = Session::new(config(), peer(), now);
    s.poll_action();
    s.answer(Decision::Accept, now);
    s.poll_action();
    s.handle_input(
        b"EHLO a.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nNOOP\r\n",
        now,
    );
    let mut sends = 0;
    let mut out = Vec::new();
    while let Some(a) = s.poll_action() {
        match a {
            Action::Send(b) => {
                sends += 1;
                out.extend(b)
            }
            Action::Ask(_) => s.answer(Decision::Accept, now),
            other => panic!("{other:?}"),
        }
    }
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n250 2.0.0 ok\r\n"));
    // One Send per reply group between questions: the EHLO reply, then MAIL, then RCPT+NOOP.
    assert_eq!(sends, 3);
}

#[test]
fn limits_on_lines_and_sizes() {
    let mut c = Client::ready(SessionConfig { max_errors: 100, ..config() });
    let long = format!("NOOP {}", "x".repeat(600));
    c.cmd(&long, "500 5.5.2");
    c.cmd("NOOP", "250");
    c.cmd("MAIL FROM:<a@sender.test> SIZE=10001", "552 5.3.4");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    let big = "y".repeat(900) + "\r\n";
    let mut msg = big.repeat(12);
    msg.push_str(".\r\n");
    c.send(msg.as_bytes())
        .assert_eq("552 5.3.4 message size exceeds fixed maximum message size\r\n");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(format!("{}\r\n.\r\n", "z".repeat(1200)).as_bytes()).assert_contains("554 5.6.0");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.send(b"BDAT 6000\r\n").assert_eq("");
    c.send(&vec![b'a'; 6000]).assert_eq("250 2.0.0 6000 octets received\r\n");
    c.send(b"BDAT 6000 LAST\r\n").assert_eq("");
    c.send(&vec![b'a'; 6000]).assert_contains("552 5.3.4");
    c.send(b"BDAT 3 LAST\r\nabc").assert_contains("503 5.5.1");
    assert!(c.stored.is_empty());
}

#[test]
fn the_input_buffer_stays_bounded() {
    let mut c = Client::ready(config());
    for _ in 0..100 {
        c.send(&[b'x'; 100]);
        assert!(c.session.buffered_input() < 512);
    }
    c.send(b"\r\n").assert_eq("500 5.5.2 line longer than 512 octets\r\n");
}

#[test]
fn idle_timeout_and_slow_data() {
    let mut c = Client::ready(config());
    c.advance(299);
    assert!(!c.closed);
    c.cmd("NOOP", "250");
    c.advance(299);
    assert!(!c.closed);
    c.advance(2);
    c.take().assert_eq("421 4.4.2 idle timeout, closing\r\n");
    assert!(c.closed);

    let mut c = Client::ready(config());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    // 60 bytes every 10 s: fine during the grace period, too slow after it.
    for _ in 0..2 {
        c.send(&[b'a'; 60]);
        c.advance(10);
    }
    assert!(!c.closed);
    c.send(&[b'a'; 60]);
    c.advance(10);
    c.take().assert_eq("421 4.4.2 data rate too low, closing\r\n");
    assert!(c.closed);
}

#[test]
fn a_command_line_dripped_slower_than_its_deadline_is_cut() {
    // One octet every 4 s never trips the 5 s idle timer; the 60 s line deadline does.
    let mut c = Client::ready(SessionConfig { idle_timeout: Duration::from_secs(5), ..config() });
    let start = c.now;
    for b in b"NOOP NOOP NOOP NOOP".iter() {
        c.send(&[*b]);
        c.advance(4);
        if c.closed {
            break;
        }
    }
    c.take().assert_eq("421 4.4.2 command timeout, closing\r\n");
    assert_eq!(c.now - start, Duration::from_secs(60));

    // A line that ends in time stops the clock; the next line gets its own 60 s, counted
    // from its first octet, even when it arrives in the same read as the previous end.
    let mut c = Client::ready(config());
    c.send(b"NOO");
    c.advance(50);
    c.send(b"P\r\nNO").assert_eq("250 2.0.0 ok\r\n");
    c.advance(59);
    assert!(!c.closed);
    c.send(b"OP\r\n").assert_eq("250 2.0.0 ok\r\n");
    c.advance(200);
    assert!(!c.closed, "silence between lines is the idle timer's business");
    c.send(b"N");
    c.advance(60);
    c.take().assert_eq("421 4.4.2 command timeout, closing\r\n");

    // An over-long line that is being discarded is still one line under the deadline.
    let mut c = Client::ready(config());
    for _ in 0..15 {
        c.send(&[b'x'; 100]);
        c.advance(4);
    }
    c.take().assert_eq("421 4.4.2 command timeout, closing\r\n");
}

#[test]
fn the_whole_message_must_arrive_within_the_data_deadline() {
    // No minimum rate here: this is about the deadline alone.
    let fast =
        SessionConfig { data_timeout: Duration::from_secs(100), min_data_rate: 0, ..config() };
    let mut c = Client::ready(fast.clone());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    // Often enough for the idle timer, but never finished.
    for _ in 0..9 {
        c.send(b"a line\r\n");
        c.advance(10);
    }
    assert!(!c.closed);
    c.send(b"more\r\n");
    c.advance(10);
    c.take().assert_eq("421 4.4.2 data timeout, closing\r\n");
    assert!(c.closed && c.stored.is_empty());

    // BDAT: the deadline runs from the first chunk to the last, across commands.
    let mut c = Client::ready(fast.clone());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.send(b"BDAT 5\r\nhello").assert_eq("250 2.0.0 5 octets received\r\n");
    c.advance(60);
    c.send(b"BDAT 5\r\nhello").assert_eq("250 2.0.0 5 octets received\r\n");
    c.advance(40);
    c.take().assert_eq("421 4.4.2 data timeout, closing\r\n");

    // RSET ends the transaction and its clock; a message in time is stored.
    let mut c = Client::ready(fast);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.send(b"BDAT 5\r\nhello").assert_eq("250 2.0.0 5 octets received\r\n");
    c.cmd("RSET", "250");
    c.advance(150);
    assert!(!c.closed);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.advance(99);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.stored.len(), 1);
    c.advance(50);
    assert!(!c.closed);
}

#[test]
fn no_timer_while_waiting_for_the_driver() {
    let now = Instant::now();
    let mut s = Session::new(config(), peer(), now);
    assert_eq!(s.poll_timeout(), None);
    s.poll_action();
    s.answer(Decision::Accept, now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(300)));
}

#[test]
fn shutdown_mid_data_abandons_the_message() {
    let mut c = Client::ready(config());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"partial\r\n");
    c.session.shutdown(c.now);
    c.pump();
    c.take().assert_eq("421 4.3.2 mx.levee.test shutting down\r\n");
    assert!(c.closed && c.stored.is_empty());
    c.session.handle_input(b".\r\n", c.now);
    assert_eq!(c.session.poll_action(), None);
}

#[test]
fn shutdown_while_storing_acknowledges_the_message_first() {
    let now = Instant::now();
    let mut s = Session::new(config(), peer(), now);
    s.poll_action();
    s.answer(Decision::Accept, now);
    s.poll_action();
    s.handle_input(b"HELO a.test\r\n", now);
    s.poll_action();
    s.answer(Decision::Accept, now);
    s.handle_input(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n", now);
    while let Some(a) = s.poll_action() {
        if let Action::Ask(_) = a {
            s.answer(Decision::Accept, now);
        }
    }
    s.handle_input(b"BDAT 2 LAST\r\nhi", now);
    assert!(matches!(s.poll_action(), Some(Action::Store(_))));
    s.shutdown(now);
    assert_eq!(s.poll_action(), None);
    s.stored(Reply::with(250, 0, 0, "queued"), now);
    let sent = match s.poll_action() {
        Some(Action::Send(b)) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(sent, "250 2.0.0 queued\r\n421 4.3.2 mx.levee.test shutting down\r\n");
    assert_eq!(s.poll_action(), Some(Action::Close));
}

#[test]
fn eof_closes_without_storing() {
    let mut c = Client::ready(config());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"partial\r\n");
    c.session.handle_eof(c.now);
    c.pump();
    assert!(c.closed && c.stored.is_empty());
    let _ = c.start;
}

#[test]
fn policy_421_closes() {
    let mut c = Client::with_policy(
        config(),
        Box::new(|q| match q {
            Question::MailFrom { .. } => Decision::Reject(Reply::with(421, 3, 0, "try later")),
            _ => Decision::Accept,
        }),
    );
    c.take();
    c.cmd("EHLO a.test", "250");
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n")
        .assert_eq("421 4.3.0 try later\r\n");
    assert!(c.closed);
}

// ----- split invariance -----

/// Runs a whole client input split at the given cut points; returns everything the server
/// wrote and stored.
fn run_split(input: &[u8], cuts: &[usize]) -> (String, Vec<Incoming>, bool) {
    let mut c = Client::new(config());
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        c.send(&input[last..cut]);
        last = cut;
    }
    (String::from_utf8(c.out).unwrap(), c.stored, c.closed)
}

const SCRIPTS: &[&[u8]] = &[
    b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nhi\r\n..x\r\n.\r\nQUIT\r\n",
    b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nx\n.\nQUIT\r\n\r\n.\r\nNOOP\r\n",
    b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nx\r.\r\n\r\n.\r\nRSET\r\n",
    b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n\r\n.\rQ\r\n\x00.\r\n.\r\n",
    b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 4\r\nab\r\nBDAT 3 LAST\r\n.\r\nNOOP\r\n",
    b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 2\r\nab\rBDAT 1 LAST\r\n\nNOOP\r\n",
    b"EHLO c.test\r\nNOOP\nQUIT\r\nNO\rOP\r\nMAIL FROM:<@r.test:a@s.test>\r\nBDAT 0 LAST\r\nQUIT\r\n",
];

#[test]
fn every_split_gives_the_same_result() {
    for script in SCRIPTS {
        let whole = run_split(script, &[]);
        assert!(!whole.0.is_empty());
        for cut in 0..=script.len() {
            assert_eq!(run_split(script, &[cut]), whole, "{script:?} cut at {cut}");
        }
        let bytewise: Vec<usize> = (1..script.len()).collect();
        assert_eq!(run_split(script, &bytewise), whole, "{script:?} byte by byte");
    }
}

#[test]
fn smuggled_commands_inside_data_are_content() {
    let (out, stored, _) = run_split(SCRIPTS[1], &[]);
    assert!(out.contains("550 5.6.11 bare CR or LF in message\r\n"), "{out}");
    assert!(!out.contains("221"), "QUIT inside DATA was executed: {out}");
    assert!(stored.is_empty());
    let (out, stored, _) = run_split(SCRIPTS[4], &[]);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"ab\r\n.\r\n");
    assert!(out.contains("250 2.0.0 4 octets received\r\n"), "{out}");
}

// ----- hostile input: the whole-session deadline, error delays, improper pipelining -----

#[test]
fn the_session_ends_at_its_deadline_whatever_it_is_doing() {
    let short = SessionConfig { session_timeout: Duration::from_secs(100), ..config() };
    // A client that is never idle and never slow is still cut when its time is up.
    let mut c = Client::ready(short.clone());
    let start = c.start;
    for _ in 0..3 {
        c.advance(30);
        c.cmd("NOOP", "250");
    }
    assert_eq!(c.session.poll_timeout(), Some(start + Duration::from_secs(100)));
    c.advance(10);
    c.take().assert_eq("421 4.4.2 session timeout, closing\r\n");
    assert!(c.closed);

    // Mid-message too: the partial message is dropped, not stored.
    let mut c = Client::ready(short.clone());
    c.advance(80);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(b"Subject: late\r\n\r\n");
    c.advance(19);
    assert!(!c.closed);
    c.advance(1);
    c.take().assert_eq("421 4.4.2 session timeout, closing\r\n");
    assert!(c.closed && c.stored.is_empty());
    c.session.handle_input(b".\r\n", c.now);
    assert_eq!(c.session.poll_action(), None);

    // A deadline that passed while the driver held the session fires at the next poll.
    let now = Instant::now();
    let mut s = Session::new(short, peer(), now);
    s.poll_action();
    let late = now + Duration::from_secs(150);
    s.answer(Decision::Accept, late);
    s.poll_action();
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(100)));
    s.handle_timeout(late);
    let sent = match s.poll_action() {
        Some(Action::Send(b)) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(sent, "421 4.4.2 session timeout, closing\r\n");
    assert_eq!(s.poll_action(), Some(Action::Close));
}

#[test]
fn errors_past_the_soft_limit_are_delayed_more_and_more() {
    let mut c = Client::ready(SessionConfig { max_errors: 10, ..config() });
    for _ in 0..3 {
        c.cmd("xyzzy", "500 5.5.1");
    }
    assert!(c.pauses.is_empty(), "the first three errors are free");
    let before = c.now;
    for _ in 0..6 {
        c.cmd("xyzzy", "500 5.5.1");
    }
    let secs: Vec<u64> = c.pauses.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 2, 4, 5, 5, 5], "doubling, capped at error_delay_max");
    assert_eq!(c.now - before, Duration::from_secs(22));
    // The tenth error: its delay, then the reply and the 421 together.
    c.cmd("xyzzy", "500 5.5.1").assert_contains("421 4.7.0 too many errors, closing\r\n");
    assert_eq!(c.pauses.last(), Some(&Duration::from_secs(5)));
    assert!(c.closed);

    // The pause comes before the error reply, after the replies owed before it.
    let now = Instant::now();
    let cfg = SessionConfig { soft_error_limit: 0, ..config() };
    let mut s = Session::new(cfg, peer(), now);
    s.poll_action();
    s.answer(Decision::Accept, now);
    s.poll_action();
    s.handle_input(b"NOOP\r\nxyzzy\r\nNOOP\r\n", now);
    let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
    assert_eq!(
        actions,
        [
            Action::Send(b"250 2.0.0 ok\r\n".to_vec()),
            Action::Pause(Duration::from_secs(1)),
            Action::Send(b"500 5.5.1 command not recognized\r\n250 2.0.0 ok\r\n".to_vec()),
        ]
    );

    // A zero cap turns the delays off; refused recipients count like any error.
    let mut c = Client::ready(SessionConfig {
        max_errors: 10,
        error_delay_max: Duration::ZERO,
        ..config()
    });
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    for i in 0..8 {
        c.cmd(&format!("RCPT TO:<unknown{i}@other.test>"), "550 5.7.1");
    }
    assert!(c.pauses.is_empty());
}

#[test]
fn input_before_a_reply_the_client_must_wait_for_is_improper_pipelining() {
    let improper = |script: &[&[u8]]| {
        let mut c = Client::new(config());
        c.take();
        for part in script {
            c.send(part);
        }
        c.session.improper_pipelining()
    };
    // Proper: EHLO alone, then a group that ends with DATA, then the message after 354;
    // BDAT carries its chunk behind it by design.
    let mail = b"MAIL FROM:<a@s.test>\r\nRCPT TO:<b@example.test>\r\n";
    assert_eq!(improper(&[b"EHLO c.test\r\n", mail, b"DATA\r\n", b"hi\r\n.\r\n"]), None);
    assert_eq!(improper(&[b"EHLO c.test\r\n", mail, b"BDAT 4 LAST\r\nhi\r\nQUIT\r\n"]), None);
    assert_eq!(improper(&[b"HELO c.test\r\n", b"MAIL FROM:<a@s.test>\r\n", b"QUIT\r\n"]), None);
    // Improper: behind EHLO, behind DATA, after HELO (no PIPELINING), behind STARTTLS.
    assert_eq!(
        improper(&[b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\n"]),
        Some("input before the reply to EHLO/HELO")
    );
    assert_eq!(
        improper(&[b"EHLO c.test\r\n", mail, b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"]),
        Some("message content before the 354")
    );
    assert_eq!(
        improper(&[b"HELO c.test\r\n", mail]),
        Some("commands pipelined without PIPELINING")
    );
    assert_eq!(
        improper(&[b"EHLO c.test\r\n", b"STARTTLS\r\nMAIL FROM:<a@s.test>\r\n"]),
        Some("input before the reply to STARTTLS")
    );
    // The verdict is a finding for the driver: the replies are the same either way.
    let (out, stored, _) = run_split(b"EHLO c.test\r\nNOOP\r\n", &[]);
    assert_eq!(run_split(b"EHLO c.test\r\nNOOP\r\n", &[13]), (out, stored, false));
}
