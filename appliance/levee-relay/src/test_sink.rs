//! Test helpers: a tiny downstream SMTP server that accepts, refuses (4xx/5xx) or
//! stalls at a chosen step, over a real socket or any stream; and a scratch engine.

use crate::Engine;
use levee_config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Where in a transaction the sink departs from a plain "250".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Banner,
    /// The TLS handshake: STARTTLS is offered and answered 220, then nothing.
    Tls,
    Mail,
    Rcpt,
    /// The message body after 354: the sink stops reading it.
    Body,
    /// The reply to the final dot.
    EndOfData,
}

#[derive(Clone, Debug)]
pub(crate) enum Behaviour {
    /// 250 to everything.
    Accept,
    /// This code (4xx or 5xx) at the step instead of the usual reply.
    Refuse(Step, u16),
    /// Neither reads nor answers from the step on, until the client gives up.
    Stall(Step),
    /// At the end of DATA: tell `arrived`, wait for `release`, then answer `code`.
    Hold { arrived: Arc<Notify>, release: Arc<Notify>, code: u16 },
}

/// How long a stalled or held sink keeps the connection before dropping it, so a test
/// whose client has no deadline fails instead of hanging.
const SINK_PATIENCE: Duration = Duration::from_secs(3600);

/// A sink listening on 127.0.0.1, serving every connection with one behaviour.
pub(crate) struct Sink {
    pub addr: SocketAddr,
    /// Every message received in full, as sent (dot-stuffed, up to the final dot).
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let got = messages.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(stream, behaviour.clone(), got.clone()));
            }
        });
        Sink { addr, messages, connections, task }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection as `behaviour` says.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    behaviour: Behaviour,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut s = BufReader::new(stream);
    let _ = session(&mut s, &behaviour, &messages).await;
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    behaviour: &Behaviour,
    messages: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    let at = |step: Step| match behaviour {
        Behaviour::Refuse(s, code) if *s == step => Some(*code),
        _ => None,
    };
    let stalls = |step: Step| matches!(behaviour, Behaviour::Stall(s) if *s == step);
    if stalls(Step::Banner) {
        return stall().await;
    }
    say(s, "220 sink.test ESMTP").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(s, &mut line).await? == 0 {
            return Ok(());
        }
        let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" if stalls(Step::Tls) => say(s, "250-sink.test\r\n250 STARTTLS").await?,
            "EHLO" => say(s, "250-sink.test\r\n250 8BITMIME").await?,
            "STAR" => {
                say(s, "220 2.0.0 go ahead").await?;
                return stall().await;
            }
            "MAIL" if stalls(Step::Mail) => return stall().await,
            "MAIL" => answer(s, at(Step::Mail)).await?,
            "RCPT" => answer(s, at(Step::Rcpt)).await?,
            "DATA" => {
                say(s, "354 go on").await?;
                if stalls(Step::Body) {
                    return stall().await;
                }
                let message = read_body(s).await?;
                messages.lock().unwrap().push(message);
                match behaviour {
                    Behaviour::Stall(Step::EndOfData) => return stall().await,
                    Behaviour::Hold { arrived, release, code } => {
                        arrived.notify_one();
                        let _ = tokio::time::timeout(SINK_PATIENCE, release.notified()).await;
                        answer(s, Some(*code)).await?;
                    }
                    _ => answer(s, at(Step::EndOfData)).await?,
                }
            }
            "RSET" | "NOOP" => say(s, "250 2.0.0 ok").await?,
            "QUIT" => {
                say(s, "221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => say(s, "502 5.5.1 unknown command").await?,
        }
    }
}

/// Holds the connection without reading or writing.
async fn stall() -> std::io::Result<()> {
    tokio::time::sleep(SINK_PATIENCE).await;
    Ok(())
}

async fn answer<S: AsyncWrite + Unpin>(s: &mut S, code: Option<u16>) -> std::io::Result<()> {
    match code {
        None | Some(250) => say(s, "250 2.0.0 ok").await,
        Some(c) if c >= 500 => say(s, &format!("{c} 5.7.1 the sink refuses")).await,
        Some(c) => say(s, &format!("{c} 4.3.0 the sink says later")).await,
    }
}

async fn say<S: AsyncWrite + Unpin>(s: &mut S, text: &str) -> std::io::Result<()> {
    s.write_all(format!("{text}\r\n").as_bytes()).await?;
    s.flush().await
}

/// One line with its CRLF, at most 64 KiB; 0 at the end of the stream.
async fn read_line<S: AsyncRead + Unpin>(
    s: &mut BufReader<S>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    (&mut *s).take(64 * 1024).read_until(b'\n', line).await
}

async fn read_body<S: AsyncRead + Unpin>(s: &mut BufReader<S>) -> std::io::Result<Vec<u8>> {
    let mut message = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(s, &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(message);
        }
        message.extend_from_slice(&line);
    }
}

/// A fresh data directory under the system's temporary one, removed when dropped.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("levee-relay-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An engine on `dir` for `example.test`, delivering to `downstream`; SpamAssassin's
/// rules are off (they take a second and much memory to load, and judge nothing here).
/// `extra` is appended to the `[smtp]` section; `tail` after the whole file.
pub(crate) fn engine(dir: &Path, downstream: SocketAddr, smtp: &str, tail: &str) -> Arc<Engine> {
    let text = format!(
        "hostname = \"mx.levee.test\"\ndata_dir = \"{}\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\n{smtp}\n\
         [rules]\nspamassassin = false\n\
         [[domain]]\nname = \"example.test\"\ndownstream = \"{downstream}\"\ntls = \"none\"\n{tail}",
        dir.display()
    );
    Engine::open(Config::parse(&text, "test").expect("test config")).expect("engine")
}
