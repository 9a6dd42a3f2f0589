//! Levee's tokio drivers: the inbound SMTP listener that runs the sans-IO
//! `Session`, the durable hand-off to the spool, outbound delivery with retries,
//! and delivery status notifications.
//!
//! One [`Engine`] holds the shared state; [`Engine::run`] serves until shutdown.

mod client;
mod dsn;
mod headers;
pub mod health;
mod inbound;
mod manage;
mod queue;
pub mod tls;

pub use client::{Client, ClientError, ConnectOptions};
pub use headers::rfc5322_date;
pub use manage::BAYES_BLOB;

use levee_config::Config;
use levee_smtp::{Decision, Incoming, Question, SessionConfig};
use levee_spool::{GroupCommit, RetryPolicy, Spool, SpoolMeta};
use levee_store::{LogEntry, QueueEntry, RcptState, RcptStatus, Store};
use levee_types::{Action, Envelope, QueueId, Reply};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("spool: {0}")]
    Spool(#[from] levee_spool::SpoolError),
    #[error("store: {0}")]
    Store(#[from] levee_store::StoreError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("no message {0}")]
    NotFound(QueueId),
    #[error("{0}")]
    Config(#[from] levee_config::ConfigError),
    #[error("the engine was started without a config file")]
    NoConfigFile,
}

/// What became of a message handed over at the end of DATA.
#[derive(Debug)]
pub enum StoreOutcome {
    /// Safe on disk under this id; the reply is the 250.
    Queued(QueueId, Reply),
    /// Not stored; the reply says why (4xx: try again, 5xx: refused).
    Refused(Reply),
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The shared state of the running relay.
pub struct Engine {
    config: RwLock<Arc<Config>>,
    spool: Arc<Spool>,
    store: Store,
    commit: Arc<GroupCommit>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connector: tokio_rustls::TlsConnector,
    connections: Arc<Semaphore>,
    stamp: String,
    queue_tx: mpsc::UnboundedSender<QueueId>,
    queue_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<QueueId>>>,
    resolver: Option<hickory_resolver::TokioResolver>,
    pool: queue::Pool,
    ban_hook: std::sync::OnceLock<BanHook>,
    bayes: RwLock<Arc<levee_filter::bayes::Model>>,
    lists: RwLock<Arc<Vec<levee_types::list::ListEntry>>>,
    config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// Rebuilt when the config changes, so console edits of `[checks]` apply at once.
    net: RwLock<Option<Arc<levee_netcheck::NetChecks>>>,
    /// Derived from the config; swapped with it.
    policy: RwLock<Arc<levee_filter::score::Policy>>,
    health: health::Health,
    log_ring: std::sync::OnceLock<Arc<health::LogRing>>,
}

/// What the driver knows about one connection beyond the SMTP session.
#[derive(Debug)]
pub struct Conn {
    pub ip: IpAddr,
    /// Loopback clients skip the network checks (they are this host).
    pub trusted: bool,
    pub findings: Vec<levee_types::Finding>,
    pub country: Option<String>,
    pub confirmed_name: Option<String>,
    pub sender: Option<String>,
}

impl Conn {
    pub fn new(ip: IpAddr) -> Conn {
        let trusted = match ip {
            IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
            }
        };
        Conn {
            ip,
            trusted,
            findings: Vec::new(),
            country: None,
            confirmed_name: None,
            sender: None,
        }
    }
}

/// Called with a client address and the reason when a client earns a ban in the
/// kernel gate; the supervisor owns the gate, so the engine only asks.
pub type BanHook = Box<dyn Fn(IpAddr, &'static str) + Send + Sync>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("stamp", &self.stamp).finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the spool and the store, recovers queued mail and prepares TLS.
    pub fn open(config: Config) -> Result<Arc<Engine>, RelayError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (spool, recovered) = Spool::open(&config.spool_dir())?;
        for c in &recovered.corrupt {
            error!(file = %c.name, moved_to = %c.moved_to.display(), reason = %c.reason, "corrupt spool file moved aside");
        }
        let spool = Arc::new(spool);
        let store = Store::open(&config.db_dir())?;
        let flush_store = store.clone();
        let commit = Arc::new(GroupCommit::new(
            spool.clone(),
            Box::new(move || flush_store.flush().map_err(|e| e.to_string())),
        ));
        let tls = if config.smtp.tls {
            Some(tls::acceptor(
                &config.hostname.0,
                config.smtp.tls_cert.as_deref(),
                config.smtp.tls_key.as_deref(),
                &config.data_dir.join("tls"),
            )?)
        } else {
            None
        };
        // The stamp proves to the downstream that a message came through this gateway;
        // derived from (not equal to) the install secret.
        let secret = store.install_secret()?;
        let stamp = hex::encode(&secret[..16]);
        // Spool files are the truth: a file whose index record was lost gets a fresh one;
        // an index record whose file is gone is dropped.
        let mut known: std::collections::HashSet<QueueId> = Default::default();
        for meta in &recovered.messages {
            known.insert(meta.id.clone());
            if store.queue_get(&meta.id)?.is_none() {
                warn!(id = %meta.id, "queue record missing for spooled message; recreated");
                let held = meta.action == Action::Quarantine;
                store.queue_put(&queue_entry(meta, held))?;
            }
        }
        for entry in store.queue_all()? {
            if !known.contains(&entry.id) {
                warn!(id = %entry.id, "queue record without spool file dropped");
                store.queue_remove(&entry.id)?;
            }
        }
        store.flush()?;
        let resolver = hickory_resolver::TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| warn!(error = %e, "no DNS resolver; MX lookups will fail"))
            .ok();
        let bayes = match store.blob_get(manage::BAYES_BLOB)? {
            Some(bytes) => levee_filter::bayes::Model::from_bytes(&bytes).unwrap_or_else(|e| {
                error!(error = %e, "stored Bayes model unreadable; starting untrained");
                levee_filter::bayes::Model::new()
            }),
            None => levee_filter::bayes::Model::new(),
        };
        let (nspam, nham) = bayes.counts();
        info!(nspam, nham, "Bayes model loaded");
        let lists = store.list_entries()?;
        let net = net_checks(&config);
        let policy = build_policy(&config);
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        info!(queued = recovered.messages.len(), "spool recovered");
        Ok(Arc::new(Engine {
            connections: Arc::new(Semaphore::new(config.smtp.max_connections)),
            config: RwLock::new(Arc::new(config)),
            spool,
            store,
            commit,
            tls,
            connector: tls::connector(),
            stamp,
            queue_tx,
            queue_rx: std::sync::Mutex::new(Some(queue_rx)),
            resolver,
            pool: queue::Pool::default(),
            ban_hook: std::sync::OnceLock::new(),
            bayes: RwLock::new(Arc::new(bayes)),
            lists: RwLock::new(Arc::new(lists)),
            config_path: std::sync::OnceLock::new(),
            net: RwLock::new(net.map(Arc::new)),
            policy: RwLock::new(Arc::new(policy)),
            health: health::Health::default(),
            log_ring: std::sync::OnceLock::new(),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new, already validated config; live sessions keep the one they began with.
    pub fn reload(&self, config: Config) {
        let net = net_checks(&config).map(Arc::new);
        *self.net.write().unwrap_or_else(|p| p.into_inner()) = net;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(build_policy(&config));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    fn net(&self) -> Option<Arc<levee_netcheck::NetChecks>> {
        self.net.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    fn tls_acceptor(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    fn session_config(&self, c: &Config) -> SessionConfig {
        SessionConfig {
            hostname: c.hostname.0.clone(),
            max_message_size: c.smtp.max_message_size,
            max_recipients: c.smtp.max_recipients,
            max_command_line: c.smtp.max_command_line,
            max_data_line: c.smtp.max_data_line,
            max_errors: c.smtp.max_errors,
            idle_timeout: Duration::from_secs(c.smtp.idle_timeout_secs),
            min_data_rate: c.smtp.min_data_rate,
            tls_available: self.tls.is_some(),
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        let d = &self.config().delivery;
        RetryPolicy {
            first: Duration::from_secs(d.retry_first_secs),
            max_interval: Duration::from_secs(d.retry_max_interval_secs),
            max_lifetime: Duration::from_secs(d.max_lifetime_secs),
        }
    }

    /// Answers the session's policy questions.
    async fn decide(&self, q: &Question, conn: &mut Conn) -> Decision {
        let config = self.config();
        let client = conn.ip;
        let sender = conn.sender.as_deref();
        match q {
            Question::Connect => self.connect_checks(conn).await,
            Question::Helo { .. } => Decision::Accept,
            Question::MailFrom { .. } => match self.spool.free_bytes() {
                Ok(free) if free >= config.smtp.min_free_bytes => Decision::Accept,
                Ok(free) => {
                    warn!(free, "spool nearly full: refusing new mail for now");
                    Decision::Reject(Reply::with(
                        452,
                        3,
                        1,
                        "insufficient system storage, try again later",
                    ))
                }
                Err(e) => {
                    error!(error = %e, "cannot check free space");
                    Decision::Reject(Reply::with(451, 3, 0, "local error, try again later"))
                }
            },
            Question::RcptTo { to } => match config.domain(to.domain()) {
                None => Decision::Reject(Reply::with(550, 7, 1, "relay access denied")),
                Some(d) if !d.ready() => Decision::Reject(Reply::with(
                    451,
                    3,
                    0,
                    "this domain is not set up yet, try again later",
                )),
                Some(_) => {
                    let lists = self.lists();
                    let subject = levee_types::list::ListSubject {
                        sender,
                        client_ip: client,
                        country: conn.country.as_deref(),
                        recipient: &to.to_string(),
                    };
                    match levee_types::list::decide(&lists, &subject) {
                        Some(e) if e.kind == levee_types::list::ListKind::Block => {
                            info!(rcpt = %to, entry = %e, "blocked by list");
                            Decision::Reject(Reply::with(
                                550,
                                7,
                                1,
                                "message refused by the recipient's block list",
                            ))
                        }
                        _ => Decision::Accept,
                    }
                }
            },
        }
    }

    /// The connection stage: DNS lists, reverse DNS, country. A client whose
    /// findings already score past `checks.connect_reject_at` is refused before the
    /// banner and banned.
    async fn connect_checks(&self, conn: &mut Conn) -> Decision {
        let Some(net) = self.net() else { return Decision::Accept };
        if conn.trusted {
            return Decision::Accept;
        }
        let report = net.connect_stage(conn.ip).await;
        self.record_health(&report.warnings);
        conn.confirmed_name = report.confirmed_name;
        conn.country = report
            .findings
            .iter()
            .find_map(|f| f.symbol.strip_prefix("COUNTRY_").map(str::to_string));
        conn.findings = report.findings;
        let verdict = levee_filter::score::verdict(&self.policy(), &conn.findings, false);
        if verdict.score >= self.config().checks.connect_reject_at {
            info!(client = %conn.ip, score = verdict.score, findings = %verdict.findings_summary(), "refused at connect");
            self.ban(conn.ip, "connection checks");
            let why = verdict
                .findings
                .iter()
                .filter(|(_, w)| *w > 0.0)
                .map(|(f, _)| f.symbol.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            return Decision::Reject(Reply::with(554, 7, 1, format!("client refused: {why}")));
        }
        Decision::Accept
    }

    fn record_health(&self, warnings: &[levee_netcheck::HealthWarning]) {
        for w in warnings {
            warn!(source = %w.source, message = %w.message, "check health");
            self.health.record(&w.source, &w.message, now_unix());
        }
    }

    /// The last warning of every check source that has had one (a DNS list refusing
    /// our queries, say), for the console.
    pub fn check_health(&self) -> Vec<health::HealthEntry> {
        self.health.entries()
    }

    /// Where the process keeps its recent log lines, if it does.
    pub fn set_log_ring(&self, ring: Arc<health::LogRing>) {
        let _ = self.log_ring.set(ring);
    }

    pub fn recent_log(&self) -> Vec<String> {
        self.log_ring.get().map(|r| r.recent()).unwrap_or_default()
    }

    pub fn lists(&self) -> Arc<Vec<levee_types::list::ListEntry>> {
        self.lists.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn bayes(&self) -> Arc<levee_filter::bayes::Model> {
        self.bayes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn policy(&self) -> Arc<levee_filter::score::Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Content filter and lists: the verdict for a received message.
    async fn judge(
        &self,
        envelope: &Envelope,
        data: Arc<Vec<u8>>,
        mut findings: Vec<levee_types::Finding>,
        country: Option<&str>,
    ) -> levee_types::Verdict {
        let model = self.bayes();
        let policy = self.policy();
        let lists = self.lists();
        let sender = envelope.mail_from.as_ref().map(|a| a.to_string());
        // Allow-listed only when every recipient's lists allow the sender: one
        // recipient's allow entry must not let spam through to the others.
        let allowed = !envelope.rcpt_to.is_empty()
            && envelope.rcpt_to.iter().all(|r| {
                let subject = levee_types::list::ListSubject {
                    sender: sender.as_deref(),
                    client_ip: envelope.client_ip,
                    country,
                    recipient: &r.to_string(),
                };
                levee_types::list::decide(&lists, &subject)
                    .is_some_and(|e| e.kind == levee_types::list::ListKind::Allow)
            });
        let content =
            tokio::task::spawn_blocking(move || levee_filter::content_findings(&model, &data))
                .await
                .unwrap_or_else(|_| {
                    vec![levee_types::Finding::new("CONTENT_FILTER_FAILED", "filter task failed")]
                });
        findings.extend(content);
        if allowed {
            findings.push(levee_types::Finding::new("ALLOW_LISTED", "sender on the allow list"));
        }
        levee_filter::score::verdict(&policy, &findings, allowed)
    }

    /// Writes a received message durably and queues it for delivery. Returns only
    /// once the message is safe (the 250) or known not to be (4xx).
    async fn accept_message(self: &Arc<Self>, incoming: Incoming, conn: &Conn) -> StoreOutcome {
        let Incoming { mut envelope, mut data } = incoming;
        envelope.client_name = conn.confirmed_name.clone();
        let mut findings = conn.findings.clone();
        if let Some(clean) = headers::strip_forged_results(&data, &self.config().hostname.0) {
            warn!(client = %envelope.client_ip, "removed Authentication-Results claiming our name");
            data = clean;
        }
        if let (Some(net), false) = (self.net(), conn.trusted) {
            let from = envelope.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default();
            let report = net.content_stage(envelope.client_ip, &envelope.helo, &from, &data).await;
            self.record_health(&report.warnings);
            findings.extend(report.findings);
            if self.config().checks.auth {
                // Recorded with the message so it is delivered exactly as judged.
                let mut with_ar =
                    format!("Authentication-Results: {}\r\n", report.authentication_results)
                        .into_bytes();
                with_ar.extend_from_slice(&data);
                data = with_ar;
            }
        }
        let data = Arc::new(data);
        let verdict = self.judge(&envelope, data.clone(), findings, conn.country.as_deref()).await;
        let data = Arc::try_unwrap(data).unwrap_or_else(|d| (*d).clone());
        let summary = verdict.findings_summary();
        match verdict.action {
            Action::Reject => {
                self.log_refused(&envelope, data.len() as u64, &verdict);
                info!(client = %envelope.client_ip, from = %envelope.mail_from_path(), score = verdict.score, findings = %summary, "rejected");
                StoreOutcome::Refused(Reply::with(550, 7, 1, "message refused as spam"))
            }
            Action::Tempfail => {
                self.log_refused(&envelope, data.len() as u64, &verdict);
                StoreOutcome::Refused(Reply::with(
                    451,
                    7,
                    1,
                    "message could not be checked, try again later",
                ))
            }
            action => self.enqueue(envelope, data, action, verdict.score, verdict.findings).await,
        }
    }

    /// The message log keeps refused messages too, so the console can explain them.
    fn log_refused(&self, envelope: &Envelope, size: u64, verdict: &levee_types::Verdict) {
        let meta = SpoolMeta {
            id: self.spool.new_id(SystemTime::now()),
            envelope: envelope.clone(),
            received_at: now_unix(),
            action: verdict.action,
            score: verdict.score,
            findings: verdict.findings.clone(),
        };
        if let Err(e) = self.store.log_put(&log_entry(&meta, size)) {
            warn!(error = %e, "cannot log a refused message");
        }
    }

    /// The one path into the queue, for received mail and for mail Levee writes itself.
    async fn enqueue(
        self: &Arc<Self>,
        envelope: Envelope,
        data: Vec<u8>,
        action: Action,
        score: f64,
        findings: Vec<(levee_types::Finding, f64)>,
    ) -> StoreOutcome {
        let now = now_unix();
        let meta = SpoolMeta {
            id: self.spool.new_id(SystemTime::now()),
            envelope,
            received_at: now,
            action,
            score,
            findings,
        };
        let size = data.len() as u64;
        let engine = self.clone();
        let id = meta.id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let quarantine = (meta.action == Action::Quarantine).then(|| {
                manage::quarantine_entry(&meta, &data, engine.config().policy.quarantine_days)
            });
            engine.write_durably(&meta, &data, quarantine)
        })
        .await;
        match result {
            Ok(Ok(meta)) => {
                info!(
                    id = %id,
                    client = %meta.envelope.client_ip,
                    from = %meta.envelope.mail_from_path(),
                    to = %meta.envelope.rcpt_to.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
                    size,
                    verdict = %meta.action,
                    "accepted"
                );
                if meta.action != Action::Quarantine {
                    let _ = self.queue_tx.send(id.clone());
                }
                let reply = Reply::with(250, 0, 0, format!("Ok: queued as {id}"));
                StoreOutcome::Queued(id, reply)
            }
            Ok(Err(e)) => {
                error!(id = %id, error = %e, "message not stored");
                StoreOutcome::Refused(Reply::with(
                    451,
                    3,
                    0,
                    "local error in processing, try again later",
                ))
            }
            Err(e) => {
                error!(id = %id, error = %e, "store task failed");
                StoreOutcome::Refused(Reply::with(
                    451,
                    3,
                    0,
                    "local error in processing, try again later",
                ))
            }
        }
    }

    /// Blocking: spool file (fsynced, renamed), index and log records, then one shared
    /// directory fsync + index flush. Undoes what it can on failure.
    fn write_durably(
        &self,
        meta: &SpoolMeta,
        data: &[u8],
        quarantine: Option<levee_store::QuarantineEntry>,
    ) -> Result<SpoolMeta, RelayError> {
        let result = (|| {
            self.spool.write(meta, data)?;
            self.store.queue_put(&queue_entry(meta, quarantine.is_some()))?;
            if let Some(q) = &quarantine {
                self.store.quarantine_put(q)?;
            }
            self.store.log_put(&log_entry(meta, data.len() as u64))?;
            self.commit.commit()?;
            Ok::<_, RelayError>(())
        })();
        if let Err(e) = result {
            let _ = self.spool.remove(&meta.id);
            let _ = self.store.queue_remove(&meta.id);
            let _ = self.store.quarantine_remove(&meta.id);
            return Err(e);
        }
        Ok(meta.clone())
    }

    /// Serves SMTP on every listener and runs delivery until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let rx = self.queue_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let delivery = rx.map(|rx| tokio::spawn(queue::run(self.clone(), rx, shutdown.clone())));
        let housekeeping = tokio::spawn(housekeeping(self.clone(), shutdown.clone()));
        let mut servers = Vec::new();
        for l in listeners {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "SMTP listening");
            }
            servers.push(tokio::spawn(inbound::serve(self.clone(), l, shutdown.clone())));
        }
        for s in servers {
            let _ = s.await;
        }
        if let Some(d) = delivery {
            let _ = d.await;
        }
        let _ = housekeeping.await;
        info!("relay stopped");
        Ok(())
    }

    /// Installs the function that asks for a ban (once; later calls are ignored).
    pub fn set_ban_hook(&self, hook: BanHook) {
        let _ = self.ban_hook.set(hook);
    }

    fn ban(&self, ip: IpAddr, reason: &'static str) {
        warn!(client = %ip, reason, "ban requested");
        if let Some(hook) = self.ban_hook.get() {
            hook(ip, reason);
        }
    }

    /// Asks the delivery scheduler to try a queued message now.
    pub fn retry_now(&self, id: QueueId) {
        let _ = self.queue_tx.send(id);
    }
}

/// The scorer's policy for a config, built once per config rather than per message.
fn build_policy(config: &Config) -> levee_filter::score::Policy {
    let p = &config.policy;
    let mut policy = levee_filter::score::Policy {
        tag_at: p.tag_at,
        quarantine_at: p.quarantine_at,
        reject_at: p.reject_at,
        ..Default::default()
    };
    // A list's own weight covers its symbol and every return-code variant of it;
    // `[policy.weights]` still has the last word.
    let checks = &config.checks;
    for list in checks.dnsbl.iter().chain(&checks.uribl) {
        policy.weights.insert(list.symbol.0.clone(), list.weight);
        for code in list.codes.values() {
            policy.weights.insert(format!("{}_{}", list.symbol.0, code.0), list.weight);
        }
    }
    for (symbol, weight) in &p.weights {
        policy.weights.insert(symbol.clone(), *weight);
    }
    policy
}

/// Builds the network checks from `[checks]`; `None` when the resolver cannot be
/// set up (logged), in which case only local checks run.
fn net_checks(config: &Config) -> Option<levee_netcheck::NetChecks> {
    let c = &config.checks;
    let upstream = match c.dns_server {
        Some(addr) => levee_netcheck::Upstream::Server(addr),
        None => levee_netcheck::Upstream::System,
    };
    let dns = match levee_netcheck::Dns::new(upstream, Duration::from_millis(c.dns_timeout_ms)) {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "no DNS resolver: network checks are off");
            return None;
        }
    };
    let lists = |v: &[levee_config::DnsListConfig]| {
        v.iter()
            .map(|l| levee_netcheck::DnsList {
                zone: l.zone.0.clone(),
                symbol: l.symbol.0.clone(),
                codes: l.codes.iter().map(|(ip, s)| (*ip, s.0.clone())).collect(),
            })
            .collect()
    };
    let geoip = c.geoip_db.as_ref().and_then(|p| match levee_netcheck::GeoIp::open(p) {
        Ok(g) => Some(g),
        Err(e) => {
            error!(path = %p.display(), error = %e, "GeoIP database unreadable: no country checks");
            None
        }
    });
    let net = levee_netcheck::NetConfig {
        hostname: config.hostname.0.clone(),
        dnsbl: lists(&c.dnsbl),
        uribl: lists(&c.uribl),
        rdns: c.rdns,
        ..Default::default()
    };
    Some(levee_netcheck::NetChecks::new(dns, net, geoip))
}

/// Periodic chores: quarantine expiry, hourly and once at start.
async fn housekeeping(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    loop {
        engine.expire_quarantine().await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Binds every configured SMTP address.
pub async fn bind(config: &Config) -> Result<Vec<TcpListener>, RelayError> {
    let mut out = Vec::new();
    for addr in config.smtp_listen() {
        out.push(TcpListener::bind(addr).await.map_err(|e| RelayError::Listen(addr, e))?);
    }
    Ok(out)
}

fn queue_entry(meta: &SpoolMeta, held: bool) -> QueueEntry {
    QueueEntry {
        id: meta.id.clone(),
        received_at: meta.received_at,
        attempts: 0,
        next_attempt: meta.received_at,
        recipients: meta
            .envelope
            .rcpt_to
            .iter()
            .map(|r| RcptState {
                rcpt: r.to_string(),
                status: RcptStatus::Pending,
                last_reply: None,
            })
            .collect(),
        held,
    }
}

fn log_entry(meta: &SpoolMeta, size: u64) -> LogEntry {
    let env = &meta.envelope;
    LogEntry {
        id: meta.id.clone(),
        received_at: meta.received_at,
        client_ip: env.client_ip.to_string(),
        helo: env.helo.clone(),
        mail_from: env.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        rcpt_to: env.rcpt_to.iter().map(|a| a.to_string()).collect(),
        size,
        action: meta.action.to_string(),
        score: meta.score,
        findings: meta
            .findings
            .iter()
            .map(|(f, w)| (f.symbol.clone(), f.detail.clone(), *w))
            .collect(),
        deliveries: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n{extra}",
            dir.display()
        );
        Config::parse(&text, "test").unwrap()
    }

    #[test]
    fn the_policy_is_derived_from_the_config_and_follows_reloads() {
        let dir = std::env::temp_dir().join(format!("levee-relay-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let extra = "[[checks.dnsbl]]\nzone = \"bl.example.net\"\nsymbol = \"BL\"\nweight = 3.0\ncodes = { \"127.0.0.2\" = \"SBL\" }\n";
        let engine = Engine::open(config(&dir, extra)).unwrap();
        let p = engine.policy();
        assert_eq!((p.weight("BL"), p.weight("BL_SBL"), p.tag_at), (3.0, 3.0, 4.0));
        engine.reload(config(
            &dir,
            &format!("{extra}[policy]\ntag_at = 2.0\n[policy.weights]\nBL_SBL = 9.0\n"),
        ));
        let p = engine.policy();
        assert_eq!((p.weight("BL"), p.weight("BL_SBL"), p.tag_at), (3.0, 9.0, 2.0));
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
