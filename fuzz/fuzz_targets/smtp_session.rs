//! The server `Session` fed a hostile client: pipelined commands, DATA and BDAT, STARTTLS.
//!
//! Input layout: byte 0 sets policy and limits (bits below), byte 1 is a delimiter that splits
//! the rest into the reads the client's bytes arrive in. Every input is run twice, once read
//! by read and once a byte at a time within each read, and the two transcripts (all output
//! bytes plus every non-`Send` action in order) must be equal: the receivers keep state across
//! input boundaries, and a split must never change where a command or a message ends.
//!
//! Invariants checked on every stored message:
//! - no NUL, no bare CR or LF, within the size limit (refused otherwise);
//! - after DATA: ends with CRLF, and (fed byte by byte) is stored right after the client's
//!   `<CRLF>.<CRLF>`: a message ended at `\n.\r\n`, `\r.\r\n` or `\n.\n` (SMTP smuggling)
//!   would be stored after some other five bytes. The split-invariance makes this hold for
//!   the read-by-read run too.
//! - everything the server sends parses as SMTP replies (with the client's own parser).

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use levee_smtp::{Action, Decision, PeerInfo, ReplyParser, Session, SessionConfig};
use levee_types::Reply;
use libfuzzer_sys::fuzz_target;

const REJECT_CONNECT: u8 = 1;
const REJECT_HELO: u8 = 2;
const REJECT_MAIL: u8 = 4;
const REJECT_RCPT: u8 = 8;
const STORE_FAILS: u8 = 16;
const TLS: u8 = 32;
const SMALL_LIMITS: u8 = 64;
const SHUTDOWN: u8 = 128;

/// What one run produced, compared between the two feeding modes.
#[derive(Debug, PartialEq, Eq, Default)]
struct Transcript {
    /// Sent bytes with a marker line for every other action, in order.
    events: Vec<u8>,
    stored: Vec<Vec<u8>>,
}

fn config(ctl: u8) -> SessionConfig {
    let mut c = SessionConfig { tls_available: ctl & TLS != 0, ..SessionConfig::default() };
    if ctl & SMALL_LIMITS != 0 {
        c.max_message_size = 64;
        c.max_recipients = 2;
        c.max_command_line = 32;
        c.max_data_line = 16;
        c.max_errors = 3;
    }
    c
}

struct Driver<'a> {
    ctl: u8,
    session: Session,
    now: Instant,
    out: Transcript,
    /// The client's bytes the session was given, in order.
    fed: Vec<u8>,
    cfg: &'a SessionConfig,
    tls_started: bool,
    bytewise: bool,
}

impl Driver<'_> {
    /// Performs every pending action, answering questions at once.
    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(bytes) => self.out.events.extend_from_slice(&bytes),
                Action::Ask(q) => {
                    self.out.events.extend_from_slice(format!("<ask {q:?}>\n").as_bytes());
                    let reject = match q {
                        levee_smtp::Question::Connect => self.ctl & REJECT_CONNECT != 0,
                        levee_smtp::Question::Helo { .. } => self.ctl & REJECT_HELO != 0,
                        levee_smtp::Question::MailFrom { .. } => self.ctl & REJECT_MAIL != 0,
                        levee_smtp::Question::RcptTo { .. } => self.ctl & REJECT_RCPT != 0,
                    };
                    let d = if reject {
                        Decision::Reject(Reply::with(550, 7, 1, "no"))
                    } else {
                        Decision::Accept
                    };
                    self.session.answer(d, self.now);
                }
                Action::Store(incoming) => {
                    self.check_stored(&incoming.data);
                    self.out.events.extend_from_slice(b"<store>\n");
                    self.out.stored.push(incoming.data);
                    let r = if self.ctl & STORE_FAILS != 0 {
                        Reply::with(451, 3, 0, "try later")
                    } else {
                        Reply::with(250, 0, 0, "queued")
                    };
                    self.session.stored(r, self.now);
                }
                // The error delay is the driver's to sleep; what counts here is that it comes
                // at the same points whatever the split.
                Action::Pause(d) => {
                    self.out.events.extend_from_slice(format!("<pause {d:?}>\n").as_bytes());
                }
                Action::StartTls => {
                    self.out.events.extend_from_slice(b"<starttls>\n");
                    self.tls_started = true;
                    self.session.tls_up(self.now);
                }
                Action::Close => {
                    self.out.events.extend_from_slice(b"<close>\n");
                    assert!(self.session.poll_action().is_none(), "an action after Close");
                    return;
                }
            }
        }
    }

    fn check_stored(&self, data: &[u8]) {
        assert!(!data.contains(&0), "NUL in a stored message");
        assert!(data.len() as u64 <= self.cfg.max_message_size, "oversized message stored");
        for (i, &b) in data.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR stored"),
                b'\n' => assert!(i > 0 && data[i - 1] == b'\r', "bare LF stored"),
                _ => {}
            }
        }
        // Nothing is sent between DATA's 354 and the end of its message; a BDAT message's
        // last reply before it is a 250 (or other) for a chunk or a command.
        let last_reply = self
            .out
            .events
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.starts_with(b"<"))
            .last();
        let via_data = last_reply.is_some_and(|l| l.starts_with(b"354"));
        if via_data {
            assert!(data.ends_with(b"\r\n"), "DATA message without its final CRLF");
            if self.bytewise {
                // Fed a byte at a time, the message is stored right after the byte that
                // ended it: only <CRLF>.<CRLF> may end DATA.
                assert!(
                    self.fed.ends_with(b"\r\n.\r\n"),
                    "DATA ended at {:?}",
                    String::from_utf8_lossy(&self.fed[self.fed.len().saturating_sub(8)..])
                );
            }
        }
    }
}

fn run(ctl: u8, reads: &[&[u8]], bytewise: bool) -> Transcript {
    let cfg = config(ctl);
    let now = Instant::now();
    let peer = PeerInfo { ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port: 40000 };
    let mut d = Driver {
        ctl,
        session: Session::new(cfg.clone(), peer, now),
        now,
        out: Transcript::default(),
        fed: Vec::new(),
        cfg: &cfg,
        tls_started: false,
        bytewise,
    };
    d.drain();
    for read in reads {
        if d.session.is_closed() {
            break;
        }
        d.tls_started = false;
        if bytewise {
            for b in read.iter() {
                // Plaintext that arrived in the same read as STARTTLS is discarded by the
                // session; a byte-wise driver must drop the same bytes to stay comparable.
                if d.tls_started || d.session.is_closed() {
                    break;
                }
                d.fed.push(*b);
                d.session.handle_input(std::slice::from_ref(b), now);
                d.drain();
            }
        } else {
            d.fed.extend_from_slice(read);
            d.session.handle_input(read, now);
            d.drain();
        }
    }
    if ctl & SHUTDOWN != 0 {
        d.session.shutdown(now);
    } else {
        d.session.handle_timeout(now + Duration::from_secs(3600));
    }
    d.drain();
    d.session.handle_eof(now);
    d.drain();

    // Everything the server said is a well-formed reply.
    let sent: Vec<u8> = d
        .out
        .events
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"<"))
        .flatten()
        .copied()
        .collect();
    let mut parser = ReplyParser::new(4096, 1024);
    parser.feed(&sent);
    loop {
        match parser.next_reply() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                panic!("server sent a malformed reply ({e}): {:?}", String::from_utf8_lossy(&sent))
            }
        }
    }
    d.out
}

fuzz_target!(|data: &[u8]| {
    let [ctl, delim, rest @ ..] = data else { return };
    let reads: Vec<&[u8]> = rest.split(|b| b == delim).collect();
    let whole = run(*ctl, &reads, false);
    let bytewise = run(*ctl, &reads, true);
    assert_eq!(whole, bytewise, "the transcript depends on how the input was split");
});
