//! The outbound SMTP client: one connection to a downstream server, reusable for
//! several transactions.

use levee_config::TlsPolicy;
use levee_smtp::ReplyParser;
use levee_types::Reply;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection could not be used. Everything but `Rejected` with a 5xx is
/// worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("i/o with {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("timeout talking to {0}")]
    Timeout(SocketAddr),
    #[error("{0} answered {1}")]
    Rejected(SocketAddr, Reply),
    #[error("{0} sent a malformed reply")]
    Protocol(SocketAddr),
    #[error("{0} does not offer STARTTLS and TLS is required")]
    TlsRequired(SocketAddr),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
}

impl ClientError {
    /// A reply to report in a DSN or the log.
    pub fn reply(&self) -> Reply {
        match self {
            ClientError::Rejected(_, r) => r.clone(),
            other => Reply::with(451, 4, 0, other.to_string()),
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Rejected(_, r) if r.is_permanent())
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the server offered in its EHLO reply.
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    pipelining: bool,
    starttls: bool,
    eight_bit: bool,
    smtputf8: bool,
    size: Option<u64>,
}

impl Caps {
    fn from_ehlo(reply: &Reply) -> Caps {
        let mut caps = Caps::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            match words.next().map(|w| w.to_ascii_uppercase()).as_deref() {
                Some("PIPELINING") => caps.pipelining = true,
                Some("STARTTLS") => caps.starttls = true,
                Some("8BITMIME") => caps.eight_bit = true,
                Some("SMTPUTF8") => caps.smtputf8 = true,
                Some("SIZE") => caps.size = words.next().and_then(|n| n.parse().ok()),
                _ => {}
            }
        }
        caps
    }
}

/// Per-recipient outcome of one transaction.
#[derive(Debug)]
pub struct TxOutcome {
    /// For each recipient, in order: `Ok(reply)` accepted end to end, `Err(reply)` refused.
    pub rcpts: Vec<Result<Reply, Reply>>,
}

/// How long sending a message body, and then its final reply, may each take unless
/// [`Client::set_data_timeout`] says otherwise: RFC 5321 4.5.3.2.6's 10 minutes.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Client {
    io: Box<dyn Io>,
    peer: SocketAddr,
    parser: ReplyParser,
    caps: Caps,
    pub tls: bool,
    /// Each command's write, and each whole reply.
    timeout: Duration,
    /// The body's transfer, and the reply to its final dot.
    data_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.peer).field("tls", &self.tls).finish()
    }
}

pub struct ConnectOptions<'a> {
    pub source: Option<IpAddr>,
    pub helo: &'a str,
    pub tls: TlsPolicy,
    pub tls_name: &'a str,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub connector: &'a tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ConnectOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions").field("helo", &self.helo).field("tls", &self.tls).finish()
    }
}

impl Client {
    /// Connects, reads the banner, says EHLO and, as the policy asks, upgrades to TLS.
    pub async fn connect(
        addr: SocketAddr,
        opts: &ConnectOptions<'_>,
    ) -> Result<Client, ClientError> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| ClientError::Connect(addr, e))?;
        if let Some(src) = opts.source {
            socket.bind(SocketAddr::new(src, 0)).map_err(|e| ClientError::Connect(addr, e))?;
        }
        let stream: TcpStream = tokio::time::timeout(opts.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(addr))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        Client::start(Box::new(stream), addr, opts).await
    }

    /// The SMTP part of [`Client::connect`] over a connected stream: the banner, EHLO
    /// and, as the policy asks, STARTTLS.
    async fn start(
        io: Box<dyn Io>,
        addr: SocketAddr,
        opts: &ConnectOptions<'_>,
    ) -> Result<Client, ClientError> {
        let mut client = Client {
            io,
            peer: addr,
            parser: ReplyParser::default(),
            caps: Caps::default(),
            tls: false,
            timeout: opts.command_timeout,
            data_timeout: DEFAULT_DATA_TIMEOUT,
        };
        client.expect(220).await?;
        client.ehlo(opts.helo).await?;
        if opts.tls != TlsPolicy::None && client.caps.starttls {
            client.command(b"STARTTLS\r\n").await?;
            client.expect(220).await?;
            let name = ServerNameOwned::from(opts.tls_name);
            // Any bytes the server sent after its 220 would be plaintext injection: drop them.
            client.parser = ReplyParser::default();
            let plain = std::mem::replace(&mut client.io, Box::new(tokio::io::duplex(1).0));
            let tls =
                tokio::time::timeout(opts.command_timeout, opts.connector.connect(name.0, plain))
                    .await
                    .map_err(|_| ClientError::Timeout(addr))?
                    .map_err(|e| ClientError::Tls(addr, e))?;
            client.io = Box::new(tls);
            client.tls = true;
            client.ehlo(opts.helo).await?;
        } else if matches!(opts.tls, TlsPolicy::Required | TlsPolicy::Verify) {
            let _ = client.command(b"QUIT\r\n").await;
            return Err(ClientError::TlsRequired(addr));
        }
        Ok(client)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), ClientError> {
        self.command(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let reply = self.read_reply().await?;
        if reply.code == 250 {
            self.caps = Caps::from_ehlo(&reply);
            return Ok(());
        }
        // Ancient servers: fall back to HELO, with no extensions.
        self.command(format!("HELO {helo}\r\n").as_bytes()).await?;
        self.expect(250).await?;
        self.caps = Caps::default();
        Ok(())
    }

    /// How long the message body's transfer, and then the reply to its final dot, may
    /// each take.
    pub fn set_data_timeout(&mut self, limit: Duration) {
        self.data_timeout = limit;
    }

    async fn command(&mut self, line: &[u8]) -> Result<(), ClientError> {
        self.write_within(line, self.timeout).await
    }

    /// Writes and flushes `bytes`, all within `limit`: a server that stops reading
    /// cannot hold the delivery slot.
    async fn write_within(&mut self, bytes: &[u8], limit: Duration) -> Result<(), ClientError> {
        let peer = self.peer;
        let io = &mut self.io;
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| ClientError::Timeout(peer))?
            .map_err(|e| ClientError::Io(peer, e))
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        self.read_reply_within(self.timeout).await
    }

    /// Reads one whole reply within `limit`. The deadline covers the reply, not each
    /// read: a server that drips a byte at a time must not keep the slot for ever.
    async fn read_reply_within(&mut self, limit: Duration) -> Result<Reply, ClientError> {
        let peer = self.peer;
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(_) => return Err(ClientError::Protocol(peer)),
            }
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout(peer))?
                .map_err(|e| ClientError::Io(peer, e))?;
            if n == 0 {
                return Err(ClientError::Io(peer, std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.parser.feed(&buf[..n]);
        }
    }

    async fn expect(&mut self, code: u16) -> Result<Reply, ClientError> {
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(ClientError::Rejected(self.peer, reply))
        }
    }

    /// Sends one message to `rcpts`. `headers` is prepended to `body`; `body` is the
    /// stored message (canonical CRLF), dot-stuffed here.
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[String],
        eight_bit: bool,
        smtputf8: bool,
        headers: &[u8],
        body: &[u8],
    ) -> Result<TxOutcome, ClientError> {
        let size = (headers.len() + body.len()) as u64;
        if let Some(max) = self.caps.size.filter(|m| *m > 0 && size > *m) {
            let r =
                Reply::with(552, 3, 4, format!("message size {size} exceeds the server's {max}"));
            return Ok(TxOutcome { rcpts: rcpts.iter().map(|_| Err(r.clone())).collect() });
        }
        if smtputf8 && !self.caps.smtputf8 {
            // RFC 6531 3.2: never downgrade a UTF-8 envelope; bounce it instead.
            let r = Reply::with(
                553,
                6,
                7,
                "the next hop does not offer SMTPUTF8, which this message's addresses need",
            );
            return Ok(TxOutcome { rcpts: rcpts.iter().map(|_| Err(r.clone())).collect() });
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();

        // With PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920).
        let mut results = Vec::with_capacity(rcpts.len());
        let mail_reply;
        let data_reply;
        if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            for l in &rcpt_lines {
                batch.extend_from_slice(l.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.command(&batch).await?;
            mail_reply = self.read_reply().await?;
            for _ in rcpts {
                results.push(self.read_reply().await?);
            }
            data_reply = self.read_reply().await?;
        } else {
            self.command(mail.as_bytes()).await?;
            mail_reply = self.read_reply().await?;
            if mail_reply.code != 250 {
                return self.abort_all(rcpts, mail_reply).await;
            }
            for l in &rcpt_lines {
                self.command(l.as_bytes()).await?;
                results.push(self.read_reply().await?);
            }
            if results.iter().all(|r| r.code != 250 && r.code != 251) {
                let _ = self.reset().await;
                return Ok(TxOutcome { rcpts: results.into_iter().map(Err).collect() });
            }
            self.command(b"DATA\r\n").await?;
            data_reply = self.read_reply().await?;
        }
        if mail_reply.code != 250 {
            if data_reply.code == 354 {
                // The server accepted DATA after refusing MAIL: end the empty message.
                self.command(b".\r\n").await?;
                let _ = self.read_reply().await?;
            }
            return self.abort_all(rcpts, mail_reply).await;
        }
        let accepted = results.iter().any(|r| r.code == 250 || r.code == 251);
        if data_reply.code != 354 {
            let _ = self.reset().await;
            let out =
                results
                    .into_iter()
                    .map(|r| {
                        if r.code == 250 || r.code == 251 {
                            Err(data_reply.clone())
                        } else {
                            Err(r)
                        }
                    })
                    .collect();
            return Ok(TxOutcome { rcpts: out });
        }
        if !accepted {
            // Pipelined DATA was accepted though no recipient was: send nothing.
            self.command(b".\r\n").await?;
            let _ = self.read_reply().await?;
            return Ok(TxOutcome { rcpts: results.into_iter().map(Err).collect() });
        }
        let mut payload = Vec::with_capacity(headers.len() + body.len() + 64);
        payload.extend_from_slice(headers);
        payload.extend_from_slice(body);
        let wire = levee_smtp::dot_stuff(&payload);
        self.write_within(&wire, self.data_timeout).await?;
        let final_reply = self.read_reply_within(self.data_timeout).await?;
        let out = results
            .into_iter()
            .map(|r| {
                if r.code != 250 && r.code != 251 {
                    Err(r)
                } else if final_reply.code == 250 {
                    Ok(final_reply.clone())
                } else {
                    Err(final_reply.clone())
                }
            })
            .collect();
        Ok(TxOutcome { rcpts: out })
    }

    async fn abort_all(
        &mut self,
        rcpts: &[String],
        reply: Reply,
    ) -> Result<TxOutcome, ClientError> {
        let _ = self.reset().await;
        Ok(TxOutcome { rcpts: rcpts.iter().map(|_| Err(reply.clone())).collect() })
    }

    /// RSET, so the connection can carry another transaction.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.command(b"RSET\r\n").await?;
        self.expect(250).await.map(|_| ())
    }

    pub async fn quit(mut self) {
        if self.command(b"QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.read_reply()).await;
        }
    }
}

/// A rustls server name that owns its text.
struct ServerNameOwned(rustls::pki_types::ServerName<'static>);

impl From<&str> for ServerNameOwned {
    fn from(s: &str) -> Self {
        let name = rustls::pki_types::ServerName::try_from(s.to_string()).unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
        });
        ServerNameOwned(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::{self, Behaviour, Step};
    use tokio::time::Instant;

    const COMMAND: Duration = Duration::from_secs(30);
    const DATA: Duration = Duration::from_secs(100);

    fn peer() -> SocketAddr {
        "127.0.0.1:25".parse().unwrap()
    }

    /// A client over an in-memory pipe (`capacity` octets each way) to a test sink.
    async fn over_pipe(
        behaviour: Behaviour,
        capacity: usize,
        tls: TlsPolicy,
    ) -> Result<Client, ClientError> {
        let (ours, theirs) = tokio::io::duplex(capacity);
        tokio::spawn(test_sink::serve(theirs, behaviour, Default::default()));
        let connector = crate::tls::connector();
        let opts = ConnectOptions {
            source: None,
            helo: "mx.levee.test",
            tls,
            tls_name: "sink.test",
            connect_timeout: COMMAND,
            command_timeout: COMMAND,
            connector: &connector,
        };
        let mut client = Client::start(Box::new(ours), peer(), &opts).await?;
        client.set_data_timeout(DATA);
        Ok(client)
    }

    async fn send(client: &mut Client, body: &[u8]) -> Result<TxOutcome, ClientError> {
        let rcpts = ["bob@example.test".to_string()];
        client.send("alice@sender.test", &rcpts, false, false, b"", body).await
    }

    #[track_caller]
    fn timed_out_after<T: std::fmt::Debug>(
        r: Result<T, ClientError>,
        start: Instant,
        limit: Duration,
    ) {
        assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
        let took = start.elapsed();
        assert!(took >= limit && took < limit + Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out_at_the_banner_and_in_the_tls_handshake() {
        let start = Instant::now();
        let r = over_pipe(Behaviour::Stall(Step::Banner), 4096, TlsPolicy::None).await;
        timed_out_after(r, start, COMMAND);

        let start = Instant::now();
        let r = over_pipe(Behaviour::Stall(Step::Tls), 4096, TlsPolicy::Opportunistic).await;
        timed_out_after(r, start, COMMAND);
    }

    #[tokio::test(start_paused = true)]
    async fn each_command_and_the_data_transfer_have_their_own_deadline() {
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        let mut c = over_pipe(Behaviour::Accept, 4096, TlsPolicy::None).await.unwrap();
        let start = Instant::now();
        let out = send(&mut c, body).await.unwrap();
        assert!(out.rcpts[0].is_ok(), "{out:?}");
        assert_eq!(start.elapsed(), Duration::ZERO, "no deadline fires on a healthy server");

        let mut c = over_pipe(Behaviour::Stall(Step::Mail), 4096, TlsPolicy::None).await.unwrap();
        let start = Instant::now();
        timed_out_after(send(&mut c, body).await, start, COMMAND);

        // A server that stops reading the body: the write blocks, the data deadline ends it.
        let big = b"0123456789abcdef\r\n".repeat(64 * 1024);
        let mut c = over_pipe(Behaviour::Stall(Step::Body), 4096, TlsPolicy::None).await.unwrap();
        let start = Instant::now();
        timed_out_after(send(&mut c, &big).await, start, DATA);

        let mut c =
            over_pipe(Behaviour::Stall(Step::EndOfData), 4096, TlsPolicy::None).await.unwrap();
        let start = Instant::now();
        timed_out_after(send(&mut c, body).await, start, DATA);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_dripped_a_byte_at_a_time_is_cut_at_the_command_deadline() {
        // Each byte comes well within the deadline; the whole reply does not.
        let (ours, mut theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            for b in b"220 sink.test ESMTP\r\n" {
                if theirs.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let connector = crate::tls::connector();
        let opts = ConnectOptions {
            source: None,
            helo: "mx.levee.test",
            tls: TlsPolicy::None,
            tls_name: "sink.test",
            connect_timeout: COMMAND,
            command_timeout: COMMAND,
            connector: &connector,
        };
        let start = Instant::now();
        timed_out_after(Client::start(Box::new(ours), peer(), &opts).await, start, COMMAND);
    }

    /// A downstream that offers STARTTLS and completes the handshake with `acceptor`.
    async fn tls_server(io: tokio::io::DuplexStream, acceptor: tokio_rustls::TlsAcceptor) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut s = BufReader::new(io);
        let mut line = String::new();
        let _ = s.write_all(b"220 sink.test ESMTP\r\n").await;
        let _ = s.read_line(&mut line).await;
        let _ = s.write_all(b"250-sink.test\r\n250 STARTTLS\r\n").await;
        let _ = s.read_line(&mut line).await;
        let _ = s.write_all(b"220 2.0.0 go ahead\r\n").await;
        let Ok(tls) = acceptor.accept(s.into_inner()).await else { return };
        let mut t = BufReader::new(tls);
        let _ = t.read_line(&mut line).await;
        let _ = t.write_all(b"250 sink.test\r\n").await;
        let _ = t.flush().await;
        let _ = t.read_line(&mut line).await;
    }

    /// A CA, and a server certificate for sink.test that it signed: (CA PEM, server
    /// acceptor, SHA-256 of the server certificate).
    fn pki() -> (String, tokio_rustls::TlsAcceptor, [u8; 32]) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec!["Levee test CA".to_string()]).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["sink.test".to_string()]).unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let chain = format!("{}{}", leaf.pem(), ca.pem());
        let acceptor =
            crate::tls::acceptor_from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())
                .unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.der());
        (ca.pem(), acceptor, digest.as_ref().try_into().unwrap())
    }

    async fn verified(
        acceptor: &tokio_rustls::TlsAcceptor,
        name: &str,
        connector: &tokio_rustls::TlsConnector,
    ) -> Result<Client, ClientError> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(tls_server(theirs, acceptor.clone()));
        let opts = ConnectOptions {
            source: None,
            helo: "mx.levee.test",
            tls: TlsPolicy::Verify,
            tls_name: name,
            connect_timeout: COMMAND,
            command_timeout: COMMAND,
            connector,
        };
        Client::start(Box::new(ours), peer(), &opts).await
    }

    /// Issue 12: outbound certificates were never verified. `tls = "verify"` checks the
    /// pin, or the chain to the configured CA for the host's name, and never falls back.
    #[tokio::test]
    async fn verify_accepts_only_the_pinned_or_ca_signed_certificate_for_the_name() {
        let (ca_pem, acceptor, digest) = pki();
        let pinned = crate::tls::verifying_connector(None, Some(levee_config::CertPin(digest)));
        let c = verified(&acceptor, "sink.test", &pinned.unwrap()).await.unwrap();
        assert!(c.tls);
        let wrong = crate::tls::verifying_connector(None, Some(levee_config::CertPin([7; 32])));
        let r = verified(&acceptor, "sink.test", &wrong.unwrap()).await;
        assert!(matches!(r, Err(ClientError::Tls(..))), "{r:?}");

        let dir = crate::test_sink::Scratch::new("tls-verify");
        std::fs::create_dir_all(&dir.0).unwrap();
        let ca = dir.0.join("ca.pem");
        std::fs::write(&ca, &ca_pem).unwrap();
        let by_ca = crate::tls::verifying_connector(Some(&ca), None).unwrap();
        assert!(verified(&acceptor, "sink.test", &by_ca).await.unwrap().tls);
        let r = verified(&acceptor, "other.test", &by_ca).await;
        assert!(matches!(r, Err(ClientError::Tls(..))), "another name: {r:?}");
        let missing = std::path::Path::new("/nonexistent.pem");
        match crate::tls::verifying_connector(Some(missing), None) {
            Err(e) => assert!(e.contains("/nonexistent.pem"), "{e}"),
            Ok(_) => panic!("a missing CA file is an error"),
        }

        // A server that offers no STARTTLS gets nothing in plaintext.
        let r = over_pipe(Behaviour::Accept, 4096, TlsPolicy::Verify).await;
        assert!(matches!(r, Err(ClientError::TlsRequired(_))), "{r:?}");
    }
}
