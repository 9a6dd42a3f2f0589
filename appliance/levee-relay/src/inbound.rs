//! The inbound listener: accepts connections within the limits and drives one
//! sans-IO `levee_smtp::Session` per connection.

use crate::{Engine, StoreOutcome};
use levee_smtp::{Action, Decision, PeerInfo, Question, Session};
use levee_types::Reply;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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
        let total = engine.connections.clone().try_acquire_owned();
        let slot = per_ip.enter(peer.ip(), config.smtp.max_connections_per_ip);
        let (Ok(permit), Some(slot)) = (total, slot) else {
            info!(client = %peer, "connection refused: too many connections");
            sessions.spawn(refuse(stream));
            continue;
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            handle(engine, stream, peer, shutdown).await;
            drop((permit, slot));
        });
        // Reap finished tasks so the set does not grow without bound.
        while sessions.try_join_next().is_some() {}
    }
    // Live sessions see the same shutdown signal, answer 421 and end.
    while sessions.join_next().await.is_some() {}
}

async fn refuse(mut stream: TcpStream) {
    let reply = Reply::with(421, 7, 0, "too many connections, try again later");
    let _ = stream.write_all(&reply.to_wire()).await;
    let _ = stream.shutdown().await;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn handle(
    engine: Arc<Engine>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = engine.config();
    let mut session = Session::new(
        engine.session_config(&config),
        PeerInfo { ip: peer.ip(), port: peer.port() },
        Instant::now().into_std(),
    );
    let mut io: Box<dyn Io> = Box::new(stream);
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
    shutdown: &mut watch::Receiver<bool>,
    shutting_down: &mut bool,
    relay_denied: &mut u32,
) {
    // What the connection checks found, the HELO name, and the sender and SPF of
    // the transaction under way, for the checks at RCPT and for the verdict.
    let conn = &mut crate::Conn::new(peer.ip());
    loop {
        while let Some(action) = session.poll_action() {
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
                    if flush(io, out).await.is_err() {
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
                    if flush(io, out).await.is_err() {
                        return;
                    }
                    let Some(acceptor) = engine.tls_acceptor() else { return };
                    let plain = std::mem::replace(io, Box::new(tokio::io::duplex(1).0));
                    match acceptor.accept(plain).await {
                        Ok(tls) => *io = Box::new(tls),
                        Err(e) => {
                            debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                    session.tls_up(Instant::now().into_std());
                }
                Action::Close => {
                    let _ = flush(io, out).await;
                    let _ = io.shutdown().await;
                    debug!(client = %peer, "closed");
                    return;
                }
            }
        }
        if flush(io, out).await.is_err() {
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

async fn flush(io: &mut Box<dyn Io>, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    Ok(())
}
