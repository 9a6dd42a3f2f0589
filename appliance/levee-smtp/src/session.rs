//! The server side of one SMTP connection (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING and STARTTLS), without I/O.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use levee_types::{Address, Envelope, Reply};
use memchr::{memchr, memchr2};

use crate::command::{parse_bdat, parse_mail, parse_rcpt, Command, MailRequest};
use crate::data::{ChunkChecker, ContentFault, ContentLimits, DotReader};

/// How long a DATA/BDAT phase may run before the minimum data rate is enforced.
pub const DATA_RATE_GRACE: Duration = Duration::from_secs(30);

/// Input a client may pipeline while the session waits for the driver (a policy answer
/// or a store result). A driver that honours [`Session::wants_input`] never gets near it.
const MAX_BLOCKED_INPUT: usize = 256 * 1024;

/// Limits and identity of the server side of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our name, in the banner and the EHLO reply.
    pub hostname: String,
    /// Advertised as SIZE; larger messages get 552 5.3.4.
    pub max_message_size: u64,
    /// Recipients per transaction; beyond it 452 4.5.3.
    pub max_recipients: usize,
    /// Longest command line in octets, CRLF included; longer gets 500 5.5.2.
    pub max_command_line: usize,
    /// Longest message line in octets, CRLF included; longer refuses the message.
    pub max_data_line: usize,
    /// Error replies after which the session says 421 4.7.0 and closes. Protocol errors
    /// and policy refusals count; 452 for too many recipients and store results do not.
    pub max_errors: u32,
    /// Silence from the peer after which the session says 421 4.4.2 and closes.
    pub idle_timeout: Duration,
    /// A command line must be complete this long after its first octet, or 421 4.4.2:
    /// the idle timer restarts on every octet, so alone it never ends a slow drip.
    pub command_timeout: Duration,
    /// The whole message (354 or the first BDAT to the end of the content), or 421 4.4.2.
    pub data_timeout: Duration,
    /// The whole connection, from `new` on, or 421 4.4.2 — whatever is under way, a
    /// message included: it bounds how long one client can hold a connection slot.
    pub session_timeout: Duration,
    /// Error replies after which each further one is delayed (Postfix's
    /// `smtpd_soft_error_limit`), so a client guessing addresses slows down.
    pub soft_error_limit: u32,
    /// The longest of those delays: 1 s past the soft limit, doubling per error up to
    /// this. Zero turns the delays off.
    pub error_delay_max: Duration,
    /// Octets per second during DATA/BDAT, averaged after [`DATA_RATE_GRACE`]; 0 disables.
    pub min_data_rate: u64,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".to_string(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_command_line: 2048,
            max_data_line: 8192,
            max_errors: 10,
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(900),
            session_timeout: Duration::from_secs(1800),
            soft_error_limit: 3,
            error_delay_max: Duration::from_secs(5),
            min_data_rate: 512,
            tls_available: false,
        }
    }
}

/// The remote end of the connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PeerInfo {
    pub ip: IpAddr,
    pub port: u16,
}

/// Something the driver must do, in the order the session yields them.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes to write. Flush when `poll_action` has nothing more, so pipelined replies
    /// leave in one write.
    Send(Vec<u8>),
    /// A policy question; no further input is processed until [`Session::answer`].
    Ask(Question),
    /// A complete message; no further input is processed until [`Session::stored`].
    Store(Incoming),
    /// The 220 is already queued: flush, run the TLS handshake, then [`Session::tls_up`].
    StartTls,
    /// Flush what was sent, then wait this long before performing the next action: the
    /// delay before an error reply once the client has made too many (see
    /// [`SessionConfig::soft_error_limit`]). The session's own clock moves on meanwhile.
    Pause(Duration),
    /// Flush what was sent and close the connection. Nothing follows.
    Close,
}

/// What the session needs policy to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    /// Asked once, before the banner.
    Connect,
    Helo {
        name: String,
        extended: bool,
    },
    /// `from: None` is the null sender `<>`.
    MailFrom {
        from: Option<Address>,
        size: Option<u64>,
    },
    RcptTo {
        to: Address,
    },
}

/// Policy's answer. `Accept` gets the session's normal positive reply; a `Reject` reply
/// is sent as given (421 also closes the connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject(Reply),
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub envelope: Envelope,
    /// As received: CRLF lines, dot-unstuffed, without the final `.` CRLF.
    pub data: Vec<u8>,
}

/// A MAIL/HELO/RCPT waiting for policy, kept until the answer says what to do with it.
#[derive(Debug)]
enum Pending {
    Helo { name: String, extended: bool },
    Mail(MailRequest),
    Rcpt(Address),
}

/// What happens to a BDAT chunk's octets once they are read.
#[derive(Debug)]
enum ChunkFate {
    /// Part of the message.
    Keep,
    /// Read and dropped (RFC 3030 requires consuming a refused chunk), then this reply.
    Refuse(Reply),
}

#[derive(Debug)]
struct ChunkIntake {
    size: u64,
    remaining: u64,
    last: bool,
    fate: ChunkFate,
}

/// What the session waits for; each state names the input that moves it on.
#[derive(Debug)]
enum Expect {
    /// `Ask(Connect)` is out; `answer` sends the banner or the refusal.
    ConnectVerdict,
    /// A command line from the peer.
    Command,
    /// An `Ask` is out for this command.
    PolicyVerdict(Pending),
    /// Message lines after 354, up to `<CRLF>.<CRLF>`.
    DataLines(DotReader),
    /// The octets of a BDAT chunk.
    BdatChunk(ChunkIntake),
    /// A `Store` is out; `stored` gives the reply.
    StoreResult,
    /// `StartTls` is out; `tls_up` resumes with a fresh session state.
    TlsHandshake,
    /// `Close` is out; all input is ignored.
    Closed,
}

/// The mail transaction between an accepted MAIL and the end of its message.
#[derive(Debug)]
struct Transaction {
    mail: MailRequest,
    rcpt_to: Vec<Address>,
    data: Vec<u8>,
    /// Present once a BDAT chunk started the content (DATA is then refused).
    bdat: Option<ChunkChecker>,
    /// Octets announced by BDAT so far.
    bdat_total: u64,
}

/// Outcome of one scanning step over buffered input.
enum Step {
    /// Consumed this many bytes and may go on.
    Consumed(usize),
    /// Consumed this many bytes and needs more input before anything else can happen.
    NeedMore(usize),
}

/// The server side of one SMTP connection, as a state machine without I/O: no sockets,
/// no clock (time is an argument), no async.
///
/// Inputs are the `handle_*` methods plus [`answer`](Self::answer),
/// [`stored`](Self::stored) and [`tls_up`](Self::tls_up); outputs are
/// [`poll_action`](Self::poll_action) and [`poll_timeout`](Self::poll_timeout).
///
/// # Driver call order
///
/// 1. [`Session::new`]. The first action is always `Ask(Question::Connect)`.
/// 2. Drain [`poll_action`](Self::poll_action) until it returns `None`, performing each
///    action in order:
///    - `Send(bytes)`: append to the write buffer.
///    - `Ask(question)`: decide (it may take time; nothing else happens meanwhile), then
///      call [`answer`](Self::answer) and keep draining.
///    - `Store(incoming)`: persist the message, then call [`stored`](Self::stored) with
///      the reply to send (250 with the queue id, or 451/452/550...).
///    - `StartTls`: flush the write buffer, run the TLS handshake, call
///      [`tls_up`](Self::tls_up); further bytes are read through TLS.
///    - `Pause(d)`: flush the write buffer and sleep `d` (end it early on shutdown).
///    - `Close`: flush the write buffer, close the connection, drop the session.
/// 3. When `poll_action` returns `None`, flush the write buffer.
/// 4. Wait for the first of: input (read only while [`wants_input`](Self::wants_input)),
///    the instant from [`poll_timeout`](Self::poll_timeout) (re-read it after every
///    call, it moves), or engine shutdown. Report it with
///    [`handle_input`](Self::handle_input) / [`handle_eof`](Self::handle_eof),
///    [`handle_timeout`](Self::handle_timeout) or [`shutdown`](Self::shutdown), then go
///    to 2.
///
/// A call the current state does not expect (an `answer` with no question out, input
/// after `Close`) is ignored. Input bytes given while no input is wanted are kept and
/// processed in order once the session can go on — except plaintext that arrives after
/// a STARTTLS command, which is discarded (command injection defence).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    peer: PeerInfo,
    expect: Expect,
    actions: VecDeque<Action>,
    /// Unprocessed input: an incomplete command line, or what arrived while blocked.
    inbuf: Vec<u8>,
    /// Leading bytes of `inbuf` already known to hold no line end.
    scanned: usize,
    /// Discarding an over-long command line up to its CRLF; `true` if the last
    /// discarded byte was CR.
    overlong: Option<bool>,
    helo: Option<String>,
    /// The accepted greeting was EHLO, so PIPELINING was offered (RFC 2920).
    esmtp: bool,
    tls: bool,
    txn: Option<Transaction>,
    errors: u32,
    last_input: Instant,
    bytes_in: u64,
    /// Start of the current DATA/BDAT phase and `bytes_in` at that moment.
    data_phase: Option<(Instant, u64)>,
    /// When the first octet of the incomplete command line in `inbuf` arrived.
    line_started: Option<Instant>,
    pregreet: bool,
    /// The first input sent before a reply the client had to wait for (RFC 2920).
    improper_pipelining: Option<&'static str>,
    /// When the session began; `session_timeout` counts from here.
    started: Instant,
    /// `shutdown` came while a `Store` was out: say 421 right after its reply.
    shutdown_after_store: bool,
}

impl Session {
    /// A new session; immediately queues `Ask(Question::Connect)`.
    pub fn new(config: SessionConfig, peer: PeerInfo, now: Instant) -> Session {
        let mut s = Session {
            config,
            peer,
            expect: Expect::ConnectVerdict,
            actions: VecDeque::new(),
            inbuf: Vec::new(),
            scanned: 0,
            overlong: None,
            helo: None,
            esmtp: false,
            tls: false,
            txn: None,
            errors: 0,
            last_input: now,
            bytes_in: 0,
            data_phase: None,
            line_started: None,
            pregreet: false,
            improper_pipelining: None,
            started: now,
            shutdown_after_store: false,
        };
        s.actions.push_back(Action::Ask(Question::Connect));
        s
    }

    /// Bytes read from the peer: buffered and processed as far as possible.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        match self.expect {
            Expect::Closed | Expect::TlsHandshake => return,
            Expect::ConnectVerdict => self.pregreet = true,
            _ => {}
        }
        self.last_input = now;
        self.bytes_in += bytes.len() as u64;
        if self.inbuf.is_empty() {
            // Common case: scan the caller's slice directly, keep only the unused tail.
            let used = self.process(bytes, now);
            if self.wants_more_buffering() {
                self.inbuf.extend_from_slice(&bytes[used..]);
            }
        } else {
            self.inbuf.extend_from_slice(bytes);
            self.resume(now);
        }
        if !self.wants_input()
            && !matches!(self.expect, Expect::Closed | Expect::TlsHandshake)
            && self.inbuf.len() > MAX_BLOCKED_INPUT
        {
            self.send(Reply::with(421, 7, 0, "too much pipelined input, closing"));
            self.close();
        }
        self.track_line(now);
    }

    /// Policy's answer to the outstanding `Ask`.
    pub fn answer(&mut self, decision: Decision, now: Instant) {
        let pending = match std::mem::replace(&mut self.expect, Expect::Command) {
            Expect::ConnectVerdict => {
                match decision {
                    Decision::Accept => self.send(Reply::new(
                        220,
                        None,
                        format!("{} ESMTP Levee", self.config.hostname),
                    )),
                    Decision::Reject(r) => {
                        self.send(r);
                        self.close();
                    }
                }
                self.last_input = now;
                self.resume(now);
                self.track_line(now);
                return;
            }
            Expect::PolicyVerdict(p) => p,
            other => {
                self.expect = other;
                return;
            }
        };
        self.last_input = now;
        match (pending, decision) {
            (Pending::Helo { name, extended }, Decision::Accept) => {
                // RFC 5321 4.1.4: EHLO/HELO resets any transaction.
                self.txn = None;
                self.data_phase = None;
                self.helo = Some(name);
                self.esmtp = extended;
                let reply = if extended { self.ehlo_reply() } else { self.helo_reply() };
                self.send(reply);
            }
            (Pending::Mail(req), Decision::Accept) => {
                self.txn = Some(Transaction {
                    mail: req,
                    rcpt_to: Vec::new(),
                    data: Vec::new(),
                    bdat: None,
                    bdat_total: 0,
                });
                self.send(Reply::with(250, 1, 0, "sender ok"));
            }
            (Pending::Rcpt(to), Decision::Accept) => {
                if let Some(txn) = &mut self.txn {
                    txn.rcpt_to.push(to);
                }
                self.send(Reply::with(250, 1, 5, "recipient ok"));
            }
            (_, Decision::Reject(r)) => self.refuse(r),
        }
        self.resume(now);
        self.track_line(now);
    }

    /// The result of the outstanding `Store`, sent verbatim; the transaction is over.
    pub fn stored(&mut self, reply: Reply, now: Instant) {
        if !matches!(self.expect, Expect::StoreResult) {
            return;
        }
        self.expect = Expect::Command;
        self.last_input = now;
        let closing = reply.code == 421;
        self.send(reply);
        if closing {
            self.close();
        } else if self.shutdown_after_store {
            self.send(self.shutdown_reply());
            self.close();
        }
        self.resume(now);
        self.track_line(now);
    }

    /// The TLS handshake after `StartTls` succeeded. The client starts over with EHLO.
    pub fn tls_up(&mut self, now: Instant) {
        if !matches!(self.expect, Expect::TlsHandshake) {
            return;
        }
        self.tls = true;
        self.helo = None;
        self.txn = None;
        self.inbuf.clear();
        self.scanned = 0;
        self.overlong = None;
        self.line_started = None;
        self.last_input = now;
        self.expect = Expect::Command;
    }

    /// The instant from `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.wants_input() {
            return;
        }
        if now >= self.session_deadline() {
            // Mid-message too: waiting for the end of DATA would stretch the bound by up
            // to the data timeout, and 421 tells a real client to send it again later.
            self.send(Reply::with(421, 4, 2, "session timeout, closing"));
            self.close();
            return;
        }
        if let Some((start, at)) = self.data_phase {
            if now >= start + self.config.data_timeout {
                self.send(Reply::with(421, 4, 2, "data timeout, closing"));
                self.close();
                return;
            }
            if self.too_slow(start, at, now) {
                self.send(Reply::with(421, 4, 2, "data rate too low, closing"));
                self.close();
                return;
            }
        }
        if self.line_deadline().is_some_and(|d| now >= d) {
            self.send(Reply::with(421, 4, 2, "command timeout, closing"));
            self.close();
            return;
        }
        if now >= self.last_input + self.config.idle_timeout {
            self.send(Reply::with(421, 4, 2, "idle timeout, closing"));
            self.close();
        }
    }

    /// The peer closed its side: any partial message is abandoned.
    pub fn handle_eof(&mut self, _now: Instant) {
        if !matches!(self.expect, Expect::Closed) {
            self.close();
        }
    }

    /// The engine is stopping: say 421 and close, abandoning any partial message. If a
    /// `Store` is out, its reply is sent first (once `stored` is called), so a message
    /// the driver made durable is never left unacknowledged.
    pub fn shutdown(&mut self, _now: Instant) {
        match self.expect {
            Expect::Closed => {}
            // Mid-handshake a plaintext reply would only corrupt the TLS stream.
            Expect::TlsHandshake => self.close(),
            Expect::StoreResult => self.shutdown_after_store = true,
            _ => {
                self.send(self.shutdown_reply());
                self.close();
            }
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call `handle_timeout`; `None` while the session waits for the driver.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.wants_input() {
            return None;
        }
        let idle = self.last_input + self.config.idle_timeout;
        let rate = self.data_phase.filter(|_| self.config.min_data_rate > 0).map(|(start, at)| {
            let bytes = (self.bytes_in - at) as u128;
            // One millisecond past the instant where the average falls below the minimum,
            // so the check at that instant fails rather than firing again and again.
            let ms = bytes * 1000 / self.config.min_data_rate as u128 + 1;
            let due = Duration::from_millis(ms.min(u64::MAX as u128) as u64);
            start + due.max(DATA_RATE_GRACE)
        });
        let data = self.data_phase.map(|(start, _)| start + self.config.data_timeout);
        [rate, data, self.line_deadline()]
            .into_iter()
            .flatten()
            .chain([idle, self.session_deadline()])
            .min()
    }

    fn session_deadline(&self) -> Instant {
        self.started + self.config.session_timeout
    }

    /// When the incomplete command line must be complete, if one is under way.
    fn line_deadline(&self) -> Option<Instant> {
        self.line_started.map(|t| t + self.config.command_timeout)
    }

    /// Starts the command-line clock at the first octet of a line and stops it when no
    /// line is under way (a line ends in `take_command`, which clears it).
    fn track_line(&mut self, now: Instant) {
        let partial = matches!(self.expect, Expect::Command)
            && (!self.inbuf.is_empty() || self.overlong.is_some());
        if !partial {
            self.line_started = None;
        } else if self.line_started.is_none() {
            self.line_started = Some(now);
        }
    }

    /// Whether the session processes input now (false while an `Ask`/`Store`/`StartTls`
    /// is out, and after `Close`).
    pub fn wants_input(&self) -> bool {
        matches!(self.expect, Expect::Command | Expect::DataLines(_) | Expect::BdatChunk(_))
    }

    /// Whether the peer sent anything before the banner (a postscreen-style spam sign).
    pub fn pregreeted(&self) -> bool {
        self.pregreet
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether `Close` has been queued.
    pub fn is_closed(&self) -> bool {
        matches!(self.expect, Expect::Closed)
    }

    /// Input bytes held for later processing (an incomplete line, or input that came
    /// while blocked).
    pub fn buffered_input(&self) -> usize {
        self.inbuf.len()
    }

    /// Error replies sent so far.
    pub fn error_count(&self) -> u32 {
        self.errors
    }

    /// What the client first sent before a reply it had to wait for, if it did: before
    /// the reply to EHLO/HELO, DATA (the 354), STARTTLS, NOOP, VRFY or EXPN, which RFC
    /// 2920 and RFC 3207 put last in a group, or after any command when PIPELINING was
    /// not offered (no EHLO yet, or HELO). Such a client ignores the protocol, as
    /// spamware does (postscreen's pipelining test). Judged by what is already buffered
    /// when a command is taken, so a driver that reads only while
    /// [`wants_input`](Self::wants_input) sees what a client sent before the reply.
    pub fn improper_pipelining(&self) -> Option<&'static str> {
        self.improper_pipelining
    }

    // ----- input processing -----

    /// Whether unconsumed input must be kept (not after Close or STARTTLS).
    fn wants_more_buffering(&self) -> bool {
        !matches!(self.expect, Expect::Closed | Expect::TlsHandshake)
    }

    /// Processes `inbuf` after the session was unblocked.
    fn resume(&mut self, now: Instant) {
        if self.inbuf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.inbuf);
        let used = self.process(&buf, now);
        if self.wants_more_buffering() {
            buf.drain(..used);
            self.inbuf = buf;
        }
    }

    /// Runs the state machine over `input`; returns how many bytes it consumed. The rest
    /// is an incomplete command line or input that arrived while blocked.
    fn process(&mut self, input: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let step = match self.expect {
                Expect::Command => {
                    let hint = if pos == 0 { self.scanned } else { 0 };
                    self.take_command(rest, hint, now)
                }
                Expect::DataLines(_) => self.take_data(rest, now),
                Expect::BdatChunk(_) => self.take_chunk(rest, now),
                // After Close or STARTTLS, whatever is left is thrown away.
                Expect::Closed | Expect::TlsHandshake => return input.len(),
                Expect::ConnectVerdict | Expect::PolicyVerdict(_) | Expect::StoreResult => {
                    return pos
                }
            };
            match step {
                Step::Consumed(n) => pos += n,
                Step::NeedMore(n) => return pos + n,
            }
        }
    }

    fn take_command(&mut self, rest: &[u8], hint: usize, now: Instant) -> Step {
        let max = self.config.max_command_line;
        if let Some(prev_cr) = self.overlong {
            let end =
                if prev_cr && rest.first() == Some(&b'\n') { Some(1) } else { find_crlf(rest, 0) };
            return match end {
                None => {
                    self.overlong = Some(rest.last().map_or(prev_cr, |b| *b == b'\r'));
                    Step::NeedMore(rest.len())
                }
                Some(end) => {
                    self.overlong = None;
                    self.line_started = None;
                    self.error(line_too_long(max));
                    Step::Consumed(end)
                }
            };
        }
        match find_crlf(rest, hint.min(rest.len())) {
            None if rest.len() >= max => {
                // Cannot be a valid line any more: drop it now to keep the buffer bounded.
                self.scanned = 0;
                self.overlong = Some(rest.last() == Some(&b'\r'));
                Step::NeedMore(rest.len())
            }
            None => {
                self.scanned = rest.len();
                Step::NeedMore(0)
            }
            Some(end) => {
                self.scanned = 0;
                self.line_started = None;
                if end > max {
                    self.error(line_too_long(max));
                } else {
                    self.command_line(&rest[..end - 2], rest.len() > end, now);
                }
                Step::Consumed(end)
            }
        }
    }

    fn take_data(&mut self, rest: &[u8], now: Instant) -> Step {
        let (Expect::DataLines(reader), Some(txn)) = (&mut self.expect, &mut self.txn) else {
            unreachable!("DATA without a transaction");
        };
        let (used, done) = reader.feed(rest, &mut txn.data);
        if !done {
            return Step::NeedMore(used);
        }
        let fault = reader.limits.end_fault();
        self.expect = Expect::Command;
        self.data_phase = None;
        match fault {
            Some(f) => {
                self.txn = None;
                let reply = self.fault_reply(f);
                self.error(reply);
            }
            None => self.store(now),
        }
        Step::Consumed(used)
    }

    fn take_chunk(&mut self, rest: &[u8], now: Instant) -> Step {
        let Expect::BdatChunk(chunk) = &mut self.expect else {
            unreachable!("not in a chunk");
        };
        let take = chunk.remaining.min(rest.len() as u64) as usize;
        chunk.remaining -= take as u64;
        if let ChunkFate::Keep = chunk.fate {
            if let Some(Transaction { bdat: Some(checker), data, .. }) = &mut self.txn {
                checker.feed(&rest[..take], data);
            }
        }
        if chunk.remaining > 0 {
            return Step::NeedMore(take);
        }
        let Expect::BdatChunk(chunk) = std::mem::replace(&mut self.expect, Expect::Command) else {
            unreachable!("not in a chunk");
        };
        match chunk.fate {
            ChunkFate::Refuse(reply) => self.error(reply),
            ChunkFate::Keep if !chunk.last => {
                self.send(Reply::with(250, 0, 0, format!("{} octets received", chunk.size)))
            }
            ChunkFate::Keep => {
                self.data_phase = None;
                let fault =
                    self.txn.as_mut().and_then(|t| t.bdat.as_mut()).and_then(|c| c.finish());
                match fault {
                    Some(f) => {
                        self.txn = None;
                        let reply = self.fault_reply(f);
                        self.error(reply);
                    }
                    None => self.store(now),
                }
            }
        }
        Step::Consumed(take)
    }

    // ----- commands -----

    /// One command line; `followed`: more input was already there behind it.
    fn command_line(&mut self, line: &[u8], followed: bool, now: Instant) {
        if memchr2(b'\r', b'\n', line).is_some() {
            self.error(Reply::with(500, 5, 2, "bare CR or LF in command line"));
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            self.error(Reply::with(500, 5, 2, "command line is not valid UTF-8"));
            return;
        };
        let text = text.trim_end_matches([' ', '\t']);
        let command = Command::parse(text);
        if followed && self.improper_pipelining.is_none() {
            self.improper_pipelining = match ends_group(&command) {
                Some(what) => Some(what),
                None if !(self.helo.is_some() && self.esmtp) => {
                    Some("commands pipelined without PIPELINING")
                }
                None => None,
            };
        }
        match command {
            Command::Helo { name, extended } => {
                if name.is_empty() {
                    let verb = if extended { "EHLO" } else { "HELO" };
                    self.error(Reply::with(501, 5, 4, format!("syntax: {verb} hostname")));
                } else {
                    let name = name.to_string();
                    self.ask(
                        Pending::Helo { name: name.clone(), extended },
                        Question::Helo { name, extended },
                    );
                }
            }
            Command::Mail(args) => self.mail(args),
            Command::Rcpt(args) => self.rcpt(args),
            Command::Data(args) => self.data(args, now),
            Command::Bdat(args) => self.bdat(args, now),
            Command::Rset(args) => {
                if args.is_empty() {
                    self.txn = None;
                    self.data_phase = None;
                    self.send(Reply::with(250, 0, 0, "ok"));
                } else {
                    self.error(Reply::with(501, 5, 4, "syntax: RSET"));
                }
            }
            Command::Noop => self.send(Reply::with(250, 0, 0, "ok")),
            Command::Quit => {
                self.send(Reply::with(221, 0, 0, format!("{} closing", self.config.hostname)));
                self.close();
            }
            Command::Vrfy => {
                self.send(Reply::with(252, 5, 0, "cannot VRFY; send mail to find out"))
            }
            Command::Expn => self.error(Reply::with(502, 5, 1, "EXPN not available")),
            Command::Help => self.send(Reply::with(214, 0, 0, "Levee: see RFC 5321")),
            Command::StartTls(args) => self.starttls(args),
            Command::Junk => {
                self.send(Reply::with(500, 5, 1, "this is an SMTP server"));
                self.close();
            }
            Command::Unknown => self.error(Reply::with(500, 5, 1, "command not recognized")),
        }
    }

    fn mail(&mut self, args: &str) {
        if self.helo.is_none() {
            return self.error(Reply::with(503, 5, 1, "send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.error(Reply::with(503, 5, 1, "nested MAIL command"));
        }
        match parse_mail(args, self.config.max_message_size) {
            Ok(req) => {
                let q = Question::MailFrom { from: req.from.clone(), size: req.size };
                self.ask(Pending::Mail(req), q);
            }
            Err(reply) => self.error(reply),
        }
    }

    fn rcpt(&mut self, args: &str) {
        let Some(txn) = &self.txn else {
            return self.error(Reply::with(503, 5, 1, "need MAIL before RCPT"));
        };
        if txn.bdat.is_some() {
            return self.error(Reply::with(503, 5, 1, "RCPT after BDAT"));
        }
        let count = txn.rcpt_to.len();
        match parse_rcpt(args, txn.mail.smtputf8) {
            Err(reply) => self.error(reply),
            // RFC 5321 4.5.3.1.8: a temporary refusal the client is expected to retry; not
            // counted as a client error.
            Ok(_) if count >= self.config.max_recipients => {
                self.send(Reply::with(452, 5, 3, "too many recipients"))
            }
            Ok(to) => self.ask(Pending::Rcpt(to.clone()), Question::RcptTo { to }),
        }
    }

    fn data(&mut self, args: &str, now: Instant) {
        if !args.is_empty() {
            return self.error(Reply::with(501, 5, 4, "syntax: DATA"));
        }
        let Some(txn) = &self.txn else {
            return self.error(Reply::with(503, 5, 1, "need MAIL and RCPT before DATA"));
        };
        if txn.bdat.is_some() {
            return self.error(Reply::with(503, 5, 1, "DATA after BDAT"));
        }
        if txn.rcpt_to.is_empty() {
            return self.error(Reply::with(554, 5, 1, "no valid recipients"));
        }
        // 3xx has no enhanced status code class (RFC 3463).
        self.send(Reply::new(354, None, "end data with <CR><LF>.<CR><LF>"));
        self.expect = Expect::DataLines(DotReader::new(self.limits()));
        self.data_phase = Some((now, self.bytes_in));
    }

    fn bdat(&mut self, args: &str, now: Instant) {
        let Some((size, last)) = parse_bdat(args) else {
            // Without a chunk size the content would be read as commands: hang up.
            self.send(Reply::with(421, 5, 4, "BDAT syntax error, closing"));
            return self.close();
        };
        let limits = self.limits();
        let fate = match &mut self.txn {
            None => ChunkFate::Refuse(Reply::with(503, 5, 1, "need MAIL and RCPT before BDAT")),
            Some(txn) if txn.rcpt_to.is_empty() => {
                ChunkFate::Refuse(Reply::with(554, 5, 1, "no valid recipients"))
            }
            Some(txn) => {
                let total = txn.bdat_total.saturating_add(size);
                if total > self.config.max_message_size {
                    // RFC 3030: a failed chunk fails the transaction.
                    self.txn = None;
                    self.data_phase = None;
                    ChunkFate::Refuse(Reply::with(
                        552,
                        3,
                        4,
                        "message size exceeds fixed maximum message size",
                    ))
                } else {
                    txn.bdat_total = total;
                    txn.bdat.get_or_insert_with(|| ChunkChecker::new(limits));
                    if self.data_phase.is_none() {
                        self.data_phase = Some((now, self.bytes_in));
                    }
                    ChunkFate::Keep
                }
            }
        };
        self.expect = Expect::BdatChunk(ChunkIntake { size, remaining: size, last, fate });
    }

    fn starttls(&mut self, args: &str) {
        if !args.is_empty() {
            return self.error(Reply::with(501, 5, 4, "syntax: STARTTLS"));
        }
        if self.tls {
            return self.error(Reply::with(503, 5, 1, "TLS already active"));
        }
        if !self.config.tls_available {
            return self.error(Reply::with(502, 5, 1, "STARTTLS not available"));
        }
        self.send(Reply::with(220, 0, 0, "ready to start TLS"));
        self.actions.push_back(Action::StartTls);
        // `process` discards the rest of the input from here on.
        self.expect = Expect::TlsHandshake;
        self.txn = None;
        self.helo = None;
    }

    // ----- replies -----

    fn ehlo_reply(&self) -> Reply {
        // RFC 2034 section 3: enhanced codes go on all replies except the greeting and
        // the replies to HELO/EHLO; a prefix here would hide the EHLO keywords.
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.config.tls_available && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        Reply { code: 250, enhanced: None, lines }
    }

    fn shutdown_reply(&self) -> Reply {
        Reply::with(421, 3, 2, format!("{} shutting down", self.config.hostname))
    }

    fn helo_reply(&self) -> Reply {
        Reply::new(250, None, self.config.hostname.clone())
    }

    fn fault_reply(&self, fault: ContentFault) -> Reply {
        match fault {
            ContentFault::BareLineEnding => Reply::with(550, 6, 11, "bare CR or LF in message"),
            ContentFault::TooBig => {
                Reply::with(552, 3, 4, "message size exceeds fixed maximum message size")
            }
            ContentFault::LineTooLong => Reply::with(
                554,
                6,
                0,
                format!("message has lines longer than {} octets", self.config.max_data_line),
            ),
            ContentFault::Nul => Reply::with(550, 6, 0, "NUL octet in message"),
            ContentFault::Empty => Reply::with(554, 6, 0, "empty message"),
        }
    }

    fn limits(&self) -> ContentLimits {
        ContentLimits::new(self.config.max_data_line, self.config.max_message_size)
    }

    fn ask(&mut self, pending: Pending, question: Question) {
        self.actions.push_back(Action::Ask(question));
        self.expect = Expect::PolicyVerdict(pending);
    }

    fn store(&mut self, _now: Instant) {
        let Some(txn) = self.txn.take() else { return };
        let envelope = Envelope {
            mail_from: txn.mail.from,
            rcpt_to: txn.rcpt_to,
            helo: self.helo.clone().unwrap_or_default(),
            client_ip: self.peer.ip,
            client_name: None,
            tls: self.tls,
            body: txn.mail.body,
            smtputf8: txn.mail.smtputf8,
            declared_size: txn.mail.size,
        };
        self.actions.push_back(Action::Store(Incoming { envelope, data: txn.data }));
        self.expect = Expect::StoreResult;
    }

    /// A policy refusal: 421 ends the session, other errors count towards `max_errors`.
    fn refuse(&mut self, reply: Reply) {
        if reply.code == 421 {
            self.send(reply);
            self.close();
        } else if reply.code >= 400 {
            self.error(reply);
        } else {
            self.send(reply);
        }
    }

    /// Sends an error reply and hangs up once the client has made too many; past the
    /// soft limit the reply is delayed first.
    fn error(&mut self, reply: Reply) {
        self.errors += 1;
        if let Some(delay) = self.error_delay() {
            self.actions.push_back(Action::Pause(delay));
        }
        self.send(reply);
        if self.errors >= self.config.max_errors && !self.is_closed() {
            self.send(Reply::with(421, 7, 0, "too many errors, closing"));
            self.close();
        }
    }

    /// 1 s for the first error past the soft limit, doubling with each one after it, up
    /// to `error_delay_max`: a typo costs nothing, a dictionary attack a growing wait.
    fn error_delay(&self) -> Option<Duration> {
        let past = self.errors.checked_sub(self.config.soft_error_limit).filter(|n| *n > 0)?;
        let secs = 1u64.checked_shl(past - 1).unwrap_or(u64::MAX);
        let delay = Duration::from_secs(secs).min(self.config.error_delay_max);
        (!delay.is_zero()).then_some(delay)
    }

    fn send(&mut self, reply: Reply) {
        let wire = reply.to_wire();
        // Consecutive replies share one Send so a pipelined group leaves in one write.
        if let Some(Action::Send(buf)) = self.actions.back_mut() {
            buf.extend_from_slice(&wire);
        } else {
            self.actions.push_back(Action::Send(wire));
        }
    }

    fn close(&mut self) {
        self.actions.push_back(Action::Close);
        self.expect = Expect::Closed;
        self.txn = None;
        self.data_phase = None;
        self.line_started = None;
        self.inbuf = Vec::new();
    }

    fn too_slow(&self, start: Instant, at: u64, now: Instant) -> bool {
        let rate = self.config.min_data_rate as u128;
        let elapsed = now.saturating_duration_since(start);
        rate > 0
            && elapsed >= DATA_RATE_GRACE
            && ((self.bytes_in - at) as u128) * 1000 < rate * elapsed.as_millis()
    }
}

/// Index just past the first CRLF in `buf` at or after `from` (a bare LF is skipped: it
/// never ends a line).
fn find_crlf(buf: &[u8], mut from: usize) -> Option<usize> {
    while let Some(off) = memchr(b'\n', &buf[from..]) {
        let lf = from + off;
        if lf > 0 && buf[lf - 1] == b'\r' {
            return Some(lf + 1);
        }
        from = lf + 1;
    }
    None
}

/// Why input behind `command` is improper whatever was offered: RFC 2920 section 3.1
/// puts EHLO, DATA, VRFY, EXPN and NOOP last in a group, RFC 3207 STARTTLS. (QUIT too,
/// but what follows it is never read.)
fn ends_group(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Helo { .. } => "input before the reply to EHLO/HELO",
        Command::Data(_) => "message content before the 354",
        Command::StartTls(_) => "input before the reply to STARTTLS",
        Command::Noop | Command::Vrfy | Command::Expn => "input before the reply to NOOP/VRFY/EXPN",
        _ => return None,
    })
}

fn line_too_long(max: usize) -> Reply {
    Reply::with(500, 5, 2, format!("line longer than {max} octets"))
}
