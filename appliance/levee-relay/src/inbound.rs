//! The inbound listener: accepts connections within the limits and drives one
//! sans-IO `levee_smtp::Session` per connection.

use crate::{Engine, StoreOutcome};
use levee_config::{Percent, Smtp};
use levee_smtp::{Action, Decision, PeerInfo, Question, Session, SessionConfig};
use levee_types::{Finding, Reply};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Counts live connections per client address.
#[derive(Debug, Default)]
pub struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// Holds one slot of the per-IP count; frees it when dropped.
struct IpSlot {
    map: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { map: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The connection slots all listeners share (`smtp.max_connections`), and whether new
/// sessions are under stress.
#[derive(Debug)]
pub(crate) struct Slots {
    free: Arc<Semaphore>,
    limit: usize,
    stressed: AtomicBool,
}

impl Slots {
    pub(crate) fn new(limit: usize) -> Slots {
        Slots { free: Arc::new(Semaphore::new(limit)), limit, stressed: AtomicBool::new(false) }
    }

    /// A slot, if one is free, and whether its session starts under stress: more than
    /// `stress_at` of the slots in use, this one included. Entering and leaving stress
    /// are logged once, whichever listener notices.
    fn take(&self, stress_at: Percent) -> Option<(OwnedSemaphorePermit, bool)> {
        let permit = self.free.clone().try_acquire_owned().ok()?;
        let in_use = self.limit - self.free.available_permits();
        let stressed = stress_at.exceeded(in_use, self.limit);
        if self.stressed.swap(stressed, Ordering::Relaxed) != stressed {
            if stressed {
                warn!(in_use, limit = self.limit, "stress: new sessions get short timeouts");
            } else {
                info!(in_use, limit = self.limit, "stress over: normal timeouts again");
            }
        }
        Some((permit, stressed))
    }
}

/// A session's limits under stress (Postfix's stress-dependent smtpd_timeout and error
/// limits): short idle, command and session deadlines, and no error delays, which would
/// hold the very slots that are short.
fn under_stress(mut c: SessionConfig, smtp: &Smtp) -> SessionConfig {
    c.idle_timeout = c.idle_timeout.min(smtp.stress_idle_timeout_secs.duration());
    c.command_timeout = c.command_timeout.min(smtp.stress_command_timeout_secs.duration());
    c.session_timeout = c.session_timeout.min(smtp.stress_session_timeout_secs.duration());
    c.error_delay_max = Duration::ZERO;
    c
}

/// The finding for a client that sent before a reply it had to wait for.
const IMPROPER_PIPELINING: &str = "SMTP_IMPROPER_PIPELINING";

/// Accepts connections until `shutdown` turns true; each connection runs in its own task.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let per_ip = Arc::new(PerIp::default());
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // An IPv4 client of a dual-stack ([::]) listener arrives as ::ffff:a.b.c.d; from here on
        // (per-IP limit, lists, checks, trace header, bans) it is the IPv4 address it is.
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let _ = stream.set_nodelay(true);
        let config = engine.config();
        let total = engine.connections.take(config.smtp.stress_at_percent);
        let slot = per_ip.enter(peer.ip(), config.smtp.max_connections_per_ip);
        let (Some((permit, stressed)), Some(slot)) = (total, slot) else {
            info!(client = %peer, "connection refused: too many connections");
            sessions.spawn(refuse(stream, config.smtp.write_timeout_secs.duration()));
            continue;
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            handle(engine, Box::new(stream), peer, stressed, shutdown).await;
            drop((permit, slot));
        });
        // Reap finished tasks so the set does not grow without bound.
        while sessions.try_join_next().is_some() {}
    }
    // Live sessions see the same shutdown signal, answer 421 and end.
    while sessions.join_next().await.is_some() {}
}

async fn refuse(mut stream: TcpStream, limit: Duration) {
    let reply = Reply::with(421, 7, 0, "too many connections, try again later");
    // These tasks hold no slot, but shutdown waits for them.
    let _ = tokio::time::timeout(limit, async {
        stream.write_all(&reply.to_wire()).await?;
        stream.shutdown().await
    })
    .await;
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The network deadlines the driver enforces itself; the command, data and idle
/// deadlines are the session's (`poll_timeout`).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Each flush of replies, and the close.
    write: Duration,
    /// The TLS handshake after STARTTLS.
    tls_handshake: Duration,
}

/// Runs one connection to its end. Every wait in here has a deadline, so a silent or
/// stalling client cannot hold its connection slot for longer than those allow.
/// `stressed`: the session gets the short limits of [`under_stress`].
pub(crate) async fn handle(
    engine: Arc<Engine>,
    mut io: Box<dyn Io>,
    peer: SocketAddr,
    stressed: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = engine.config();
    let mut session_config = engine.session_config(&config);
    if stressed {
        session_config = under_stress(session_config, &config.smtp);
    }
    let mut session = Session::new(
        session_config,
        PeerInfo { ip: peer.ip(), port: peer.port() },
        Instant::now().into_std(),
    );
    let limits = Limits {
        write: config.smtp.write_timeout_secs.duration(),
        tls_handshake: config.smtp.tls_handshake_timeout_secs.duration(),
    };
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut shutting_down = false;
    let mut relay_denied = 0u32;
    debug!(client = %peer, "connected");
    drive(
        &engine,
        &mut session,
        &mut io,
        &mut out,
        &mut buf,
        peer,
        limits,
        &mut shutdown,
        &mut shutting_down,
        &mut relay_denied,
    )
    .await;
    // Abusers are dropped in the kernel next time, before they cost a session.
    if session.pregreeted() {
        engine.ban(peer.ip(), "pregreet");
    } else if session.error_count() >= config.smtp.max_errors {
        engine.ban(peer.ip(), "too many errors");
    } else if relay_denied >= RELAY_PROBE_LIMIT {
        engine.ban(peer.ip(), "relay probing");
    }
}

/// Refused relay attempts in one connection that mark it as an open-relay probe.
const RELAY_PROBE_LIMIT: u32 = 3;

#[allow(clippy::too_many_arguments)]
async fn drive(
    engine: &Arc<Engine>,
    session: &mut Session,
    io: &mut Box<dyn Io>,
    out: &mut Vec<u8>,
    buf: &mut [u8],
    peer: SocketAddr,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
    shutting_down: &mut bool,
    relay_denied: &mut u32,
) {
    // What the connection checks found, the HELO name, and the sender and SPF of
    // the transaction under way, for the checks at RCPT and for the verdict.
    let conn = &mut crate::Conn::new(peer.ip());
    let mut pipelining_noted = false;
    loop {
        while let Some(action) = session.poll_action() {
            // Before the action: a Store made in the same input must be judged with it.
            if let (false, Some(what)) = (pipelining_noted, session.improper_pipelining()) {
                pipelining_noted = true;
                info!(client = %peer, what, "improper pipelining");
                conn.findings.push(Finding::new(IMPROPER_PIPELINING, what));
            }
            match action {
                Action::Send(bytes) => out.extend_from_slice(&bytes),
                Action::Ask(question) => {
                    let decision = if matches!(question, Question::Connect) {
                        greet(engine, session, io, buf, conn).await
                    } else {
                        engine.decide(&question, conn).await
                    };
                    if let (Question::RcptTo { to }, Decision::Reject(r)) = (&question, &decision) {
                        info!(client = %peer, rcpt = %to, reply = %r, "recipient refused");
                        // Relay probing is 550 5.7.1; an SPF refusal (5.7.23) is about the
                        // sender, not a probe, and earns no ban of its own.
                        if r.code == 550 && r.enhanced.is_none_or(|e| e.2 != 23) {
                            *relay_denied += 1;
                        }
                    }
                    session.answer(decision, Instant::now().into_std());
                }
                Action::Store(incoming) => {
                    // Replies queued before the message (pipelined) go out first.
                    if flush(io, out, limits.write, peer).await.is_err() {
                        return;
                    }
                    let reply = match conn.report {
                        Some(spam) => engine.take_report(incoming, conn, spam).await,
                        None => match engine.accept_message(incoming, conn).await {
                            StoreOutcome::Queued(_, reply) | StoreOutcome::Refused(reply) => reply,
                        },
                    };
                    session.stored(reply, Instant::now().into_std());
                }
                Action::StartTls => {
                    if flush(io, out, limits.write, peer).await.is_err() {
                        return;
                    }
                    let Some(acceptor) = engine.tls_acceptor() else { return };
                    let plain = std::mem::replace(io, Box::new(tokio::io::duplex(1).0));
                    // Mid-handshake a plaintext 421 would only corrupt the stream: just close.
                    match tokio::time::timeout(limits.tls_handshake, acceptor.accept(plain)).await {
                        Ok(Ok(tls)) => *io = Box::new(tls),
                        Ok(Err(e)) => {
                            debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            info!(client = %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                    session.tls_up(Instant::now().into_std());
                }
                Action::Pause(delay) => {
                    // The replies owed so far go out now; only the error reply waits.
                    if flush(io, out, limits.write, peer).await.is_err() {
                        return;
                    }
                    if !*shutting_down {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.changed() => {
                                *shutting_down = true;
                                session.shutdown(Instant::now().into_std());
                            }
                        }
                    }
                }
                Action::Close => {
                    if flush(io, out, limits.write, peer).await.is_ok() {
                        // A TLS close_notify is a write too.
                        let _ = tokio::time::timeout(limits.write, io.shutdown()).await;
                    }
                    debug!(client = %peer, "closed");
                    return;
                }
            }
        }
        if flush(io, out, limits.write, peer).await.is_err() {
            return;
        }
        if !session.wants_input() {
            // Nothing to read and nothing to do: the session has ended.
            return;
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = io.read(buf) => match r {
                Ok(0) | Err(_) => session.handle_eof(Instant::now().into_std()),
                Ok(n) => session.handle_input(&buf[..n], Instant::now().into_std()),
            },
            _ = sleep => session.handle_timeout(Instant::now().into_std()),
            _ = shutdown.changed(), if !*shutting_down => {
                *shutting_down = true;
                session.shutdown(Instant::now().into_std());
            }
        }
    }
}

/// The connection stage before the banner. Clients other than this host are held
/// for `smtp.greet_pause_ms` while the connection checks run; one that talks in that
/// time is a pregreeting bot (real clients wait for the banner) and is refused.
async fn greet(
    engine: &Arc<Engine>,
    session: &mut Session,
    io: &mut Box<dyn Io>,
    buf: &mut [u8],
    conn: &mut crate::Conn,
) -> Decision {
    let pause = std::time::Duration::from_millis(engine.config().smtp.greet_pause_ms);
    if conn.trusted || pause.is_zero() {
        return engine.decide(&Question::Connect, conn).await;
    }
    let listen = async {
        match tokio::time::timeout(pause, io.read(buf)).await {
            Ok(Ok(n)) => Some(n),
            _ => None,
        }
    };
    let (decision, early) = tokio::join!(engine.decide(&Question::Connect, conn), listen);
    match early {
        Some(0) => {
            session.handle_eof(Instant::now().into_std());
            decision
        }
        Some(n) => {
            session.handle_input(&buf[..n], Instant::now().into_std());
            info!(client = %conn.ip, "pregreet: talked before the banner");
            Decision::Reject(Reply::with(554, 5, 1, "protocol error: talking before the greeting"))
        }
        None => decision,
    }
}

/// Writes the queued replies within `limit`: a client that does not read them would
/// otherwise hold the connection forever. On error or expiry the connection is dropped,
/// as no reply can reach that client any more.
async fn flush(
    io: &mut Box<dyn Io>,
    out: &mut Vec<u8>,
    limit: Duration,
    peer: SocketAddr,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r?,
        Err(_) => {
            info!(client = %peer, "write timed out: the client is not reading");
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    }
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::{engine, Scratch};
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    /// A safety net for the tests' own waits (virtual seconds under paused time), longer
    /// than any deadline configured here.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Reads one whole reply (every line of it); what came before the end of the stream.
    async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let read = async {
            let mut text = Vec::new();
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b).await {
                text.push(b[0]);
                if text.ends_with(b"\r\n") {
                    let line = text[..text.len() - 2].iter().rposition(|c| *c == b'\n');
                    let start = line.map_or(0, |i| i + 1);
                    if text.get(start + 3) == Some(&b' ') {
                        break;
                    }
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        };
        tokio::time::timeout(PATIENCE, read).await.expect("a reply in time")
    }

    #[track_caller]
    fn starts(reply: &str, code: &str) {
        assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
    }

    async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str, code: &str) {
        s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        starts(&reply(s).await, code);
    }

    /// The real driver on one end of an in-memory pipe of `capacity` octets each way,
    /// for a client on this host (no connection checks, no greet pause).
    struct Piped {
        client: DuplexStream,
        driver: JoinHandle<()>,
        /// Kept so the driver does not see a shutdown.
        _shutdown: watch::Sender<bool>,
    }

    fn piped(engine: &Arc<Engine>, capacity: usize) -> Piped {
        let (client, server) = tokio::io::duplex(capacity);
        let (tx, rx) = watch::channel(false);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let driver = tokio::spawn(handle(engine.clone(), Box::new(server), peer, false, rx));
        Piped { client, driver, _shutdown: tx }
    }

    /// Waits for the driver to end (the connection closed, its slot freed) and says when.
    async fn ended(driver: JoinHandle<()>) -> Instant {
        tokio::time::timeout(PATIENCE, driver).await.expect("driver ended").unwrap();
        Instant::now()
    }

    #[track_caller]
    fn after(took: Duration, secs: u64) {
        let limit = Duration::from_secs(secs);
        assert!(took >= limit && took < limit + Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_line_dripped_a_byte_at_a_time_gets_421_at_its_deadline() {
        let dir = Scratch::new("drip");
        let smtp = "tls = false\nidle_timeout_secs = 5\ncommand_timeout_secs = 20";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let Piped { client, driver, _shutdown } = piped(&engine, 4096);
        let (mut rd, mut wr) = tokio::io::split(client);
        starts(&reply(&mut rd).await, "220 ");
        let start = Instant::now();
        // One octet every 4 s: the 5 s idle timer never fires, the line's deadline does.
        tokio::spawn(async move {
            for b in b"EHLO client.example.test\r\n" {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        });
        assert_eq!(reply(&mut rd).await, "421 4.4.2 command timeout, closing\r\n");
        after(ended(driver).await - start, 20);
        assert_eq!(reply(&mut rd).await, "", "closed after the 421");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_half_sent_tls_handshake_is_cut_at_its_deadline() {
        let dir = Scratch::new("tls-stall");
        let engine =
            engine(&dir.0, "127.0.0.1:9".parse().unwrap(), "tls_handshake_timeout_secs = 3", "");
        // Nothing after the 220, then the first six octets of a ClientHello record.
        for hello in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
            let Piped { mut client, driver, _shutdown } = piped(&engine, 4096);
            starts(&reply(&mut client).await, "220 ");
            cmd(&mut client, "EHLO client.example.test", "250").await;
            cmd(&mut client, "STARTTLS", "220 ").await;
            client.write_all(hello).await.unwrap();
            let start = Instant::now();
            after(ended(driver).await - start, 3);
            assert_eq!(reply(&mut client).await, "", "no plaintext reply inside TLS");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_does_not_end_in_time_gets_421() {
        let dir = Scratch::new("data-deadline");
        let smtp = "tls = false\ndata_timeout_secs = 50\nmin_data_rate = 0\nmin_free_bytes = 1";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let Piped { mut client, driver, _shutdown } = piped(&engine, 4096);
        starts(&reply(&mut client).await, "220 ");
        cmd(&mut client, "EHLO client.example.test", "250").await;
        cmd(&mut client, "MAIL FROM:<alice@sender.example.test>", "250").await;
        cmd(&mut client, "RCPT TO:<bob@example.test>", "250").await;
        cmd(&mut client, "DATA", "354").await;
        let start = Instant::now();
        // A line every 10 s keeps the idle timer quiet; the message never ends.
        let more = async {
            loop {
                client.write_all(b"a line of the body\r\n").await?;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        };
        let r: std::io::Result<()> = tokio::select! {
            r = more => r,
            _ = tokio::time::sleep(Duration::from_secs(49)) => Ok(()),
        };
        r.unwrap();
        assert!(!driver.is_finished(), "not before the deadline");
        assert_eq!(reply(&mut client).await, "421 4.4.2 data timeout, closing\r\n");
        after(ended(driver).await - start, 50);
        assert!(engine.store().queue_all().unwrap().is_empty(), "nothing stored");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped_at_the_write_deadline() {
        let dir = Scratch::new("deaf");
        let engine = engine(
            &dir.0,
            "127.0.0.1:9".parse().unwrap(),
            "tls = false\nwrite_timeout_secs = 7",
            "",
        );
        // 64 octets each way: the banner fits, a few replies more do not.
        let Piped { client, driver, _shutdown } = piped(&engine, 64);
        // The read half is kept open and never read.
        let (_unread, mut wr) = tokio::io::split(client);
        let start = Instant::now();
        tokio::spawn(async move { while wr.write_all(b"NOOP\r\n").await.is_ok() {} });
        after(ended(driver).await - start, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_client_is_cut_at_the_session_deadline() {
        let dir = Scratch::new("session-deadline");
        let smtp = "tls = false\nsession_timeout_secs = 30\ndata_timeout_secs = 25";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let Piped { mut client, driver, _shutdown } = piped(&engine, 4096);
        let start = Instant::now();
        starts(&reply(&mut client).await, "220 ");
        // Never idle, never slow, and a message under way when the time is up.
        cmd(&mut client, "EHLO client.example.test", "250").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        cmd(&mut client, "NOOP", "250").await;
        cmd(&mut client, "MAIL FROM:<alice@sender.example.test>", "250").await;
        cmd(&mut client, "RCPT TO:<bob@example.test>", "250").await;
        cmd(&mut client, "DATA", "354").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        client.write_all(b"Subject: late\r\n\r\n").await.unwrap();
        assert_eq!(reply(&mut client).await, "421 4.4.2 session timeout, closing\r\n");
        after(ended(driver).await - start, 30);
        assert!(engine.store().queue_all().unwrap().is_empty(), "nothing stored");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_past_the_soft_limit_wait_longer_and_longer() {
        let dir = Scratch::new("error-delay");
        let smtp = "tls = false\nmax_errors = 8\nsoft_error_limit = 2\nerror_delay_max_secs = 3";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let Piped { mut client, driver, _shutdown } = piped(&engine, 4096);
        starts(&reply(&mut client).await, "220 ");
        cmd(&mut client, "EHLO client.example.test", "250").await;
        cmd(&mut client, "MAIL FROM:<alice@sender.example.test>", "250").await;
        let mut waits = Vec::new();
        for i in 0..7 {
            let t = Instant::now();
            cmd(&mut client, &format!("RCPT TO:<guess{i}@elsewhere.test>"), "550").await;
            waits.push((Instant::now() - t).as_secs());
        }
        assert_eq!(waits, [0, 0, 1, 2, 3, 3, 3]);
        // The eighth: the same wait, then its reply and the 421 together.
        let t = Instant::now();
        client.write_all(b"RCPT TO:<guess7@elsewhere.test>\r\n").await.unwrap();
        starts(&reply(&mut client).await, "550");
        assert_eq!(reply(&mut client).await, "421 4.7.0 too many errors, closing\r\n");
        after(ended(driver).await - t, 3);
    }

    #[tokio::test]
    async fn improper_pipelining_is_a_finding_on_the_message() {
        let dir = Scratch::new("improper-pipelining");
        let smtp = "tls = false\nmin_free_bytes = 1";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let message = "From: alice@sender.example.test\r\nDate: Thu, 3 Dec 2026 12:00:00 +0000\r\n\
            Subject: x\r\nMessage-ID: <p@sender.example.test>\r\n\r\nhello\r\n.\r\n";
        let mut symbols = Vec::new();
        // Proper: waits for the 354. Improper: sends the message behind DATA.
        for wait_for_354 in [true, false] {
            let Piped { mut client, driver, _shutdown } = piped(&engine, 64 * 1024);
            starts(&reply(&mut client).await, "220 ");
            cmd(&mut client, "EHLO client.example.test", "250").await;
            cmd(&mut client, "MAIL FROM:<alice@sender.example.test>", "250").await;
            cmd(&mut client, "RCPT TO:<bob@example.test>", "250").await;
            if wait_for_354 {
                cmd(&mut client, "DATA", "354").await;
                client.write_all(message.as_bytes()).await.unwrap();
            } else {
                client.write_all(format!("DATA\r\n{message}").as_bytes()).await.unwrap();
                starts(&reply(&mut client).await, "354");
            }
            let done = reply(&mut client).await;
            starts(&done, "250 2.0.0 Ok: queued as ");
            cmd(&mut client, "QUIT", "221").await;
            ended(driver).await;
            let id = levee_types::QueueId::parse(done.trim_end().rsplit(' ').next().unwrap())
                .expect("a queue id");
            let log = engine.store().log_get(&id).unwrap().expect("logged");
            let found: Vec<_> = log
                .findings
                .into_iter()
                .filter(|(s, _, _)| s == IMPROPER_PIPELINING)
                .map(|(_, detail, weight)| (detail, weight))
                .collect();
            symbols.push(found);
        }
        assert_eq!(symbols[0], []);
        assert_eq!(symbols[1], [("message content before the 354".to_string(), 2.0)]);
    }

    #[tokio::test]
    async fn past_the_stress_share_new_sessions_get_the_short_timeouts() {
        let dir = Scratch::new("stress");
        let smtp = "tls = false\nmax_connections = 4\nstress_at_percent = 50\n\
            stress_idle_timeout_secs = 1";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let (addr, tx, server) = listen(&engine).await;
        // Two of four in use is not past 50%; the third is.
        let mut calm = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            starts(&reply(&mut s).await, "220 ");
            calm.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        starts(&reply(&mut third).await, "220 ");
        let start = std::time::Instant::now();
        assert_eq!(reply(&mut third).await, "421 4.4.2 idle timeout, closing\r\n");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The first two kept the normal 300 s idle timer.
        for s in &mut calm {
            cmd(s, "NOOP", "250").await;
        }
        drop(calm);
        // Once the load is gone, a new session is not under stress.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut later = TcpStream::connect(addr).await.unwrap();
        starts(&reply(&mut later).await, "220 ");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cmd(&mut later, "NOOP", "250").await;
        cmd(&mut later, "QUIT", "221").await;
        stop(tx, server).await;
    }

    /// Serves on 127.0.0.1:0 through the real listener; returns its address.
    async fn listen(engine: &Arc<Engine>) -> (SocketAddr, watch::Sender<bool>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(engine.clone(), listener, rx));
        (addr, tx, server)
    }

    async fn stop(tx: watch::Sender<bool>, server: JoinHandle<()>) {
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), server).await.expect("server stops").unwrap();
    }

    #[tokio::test]
    async fn a_full_session_through_the_listener_gets_250_and_the_message_is_spooled() {
        let dir = Scratch::new("inbound-full");
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), "tls = false", "");
        let (addr, tx, server) = listen(&engine).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        starts(&reply(&mut s).await, "220 mx.levee.test");
        cmd(&mut s, "EHLO client.example.test", "250").await;
        cmd(&mut s, "MAIL FROM:<alice@sender.example.test>", "250").await;
        cmd(&mut s, "RCPT TO:<bob@example.test>", "250").await;
        cmd(&mut s, "DATA", "354").await;
        let message = "From: alice@sender.example.test\r\nTo: bob@example.test\r\n\
            Subject: minutes\r\nMessage-ID: <m1@sender.example.test>\r\n\r\n\
            The minutes of the meeting.\r\n..a line with a leading dot\r\n";
        s.write_all(message.as_bytes()).await.unwrap();
        s.write_all(b".\r\n").await.unwrap();
        let done = reply(&mut s).await;
        starts(&done, "250 2.0.0 Ok: queued as ");
        cmd(&mut s, "QUIT", "221").await;
        let id = levee_types::QueueId::parse(done.trim_end().rsplit(' ').next().unwrap())
            .expect("a queue id in the 250");
        let entry = engine.store().queue_get(&id).unwrap().expect("queued");
        assert_eq!(entry.recipients.len(), 1);
        assert_eq!(entry.recipients[0].rcpt, "bob@example.test");
        let (meta, body) = engine.spool.read(&id).unwrap();
        assert_eq!(meta.envelope.mail_from.unwrap().to_string(), "alice@sender.example.test");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("Subject: minutes\r\n"), "{body}");
        assert!(body.contains("\r\n.a line with a leading dot\r\n"), "unstuffed: {body}");
        stop(tx, server).await;
    }

    #[tokio::test]
    async fn silent_starttls_clients_lose_their_slots_at_the_handshake_deadline() {
        let dir = Scratch::new("inbound-slots");
        let smtp = "max_connections = 2\ntls_handshake_timeout_secs = 1";
        let engine = engine(&dir.0, "127.0.0.1:9".parse().unwrap(), smtp, "");
        let (addr, tx, server) = listen(&engine).await;
        // Before either handshake starts, so both deadlines end after start + 1 s.
        let start = std::time::Instant::now();
        let mut silent = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            starts(&reply(&mut s).await, "220 ");
            cmd(&mut s, "EHLO client.example.test", "250").await;
            cmd(&mut s, "STARTTLS", "220 ").await;
            silent.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        starts(&reply(&mut third).await, "421 4.7.0 too many connections");
        for s in &mut silent {
            assert_eq!(reply(s).await, "", "closed by the server");
        }
        assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
        // The slots are free again: a fresh client is served.
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        starts(&reply(&mut fresh).await, "220 mx.levee.test");
        cmd(&mut fresh, "QUIT", "221").await;
        stop(tx, server).await;
    }
}
