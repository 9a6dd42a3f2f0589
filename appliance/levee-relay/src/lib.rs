//! Levee's tokio drivers: the inbound SMTP listener that runs the sans-IO
//! `Session`, the durable hand-off to the spool, outbound delivery with retries,
//! and delivery status notifications.
//!
//! One [`Engine`] holds the shared state; [`Engine::run`] serves until shutdown.

mod client;
pub mod control;
mod dsn;
mod headers;
pub mod health;
mod inbound;
pub mod learning;
mod manage;
mod qmgr;
mod queue;
mod report;
pub mod rules;
mod selfsigned;
pub mod snapshot;
pub mod stamp;
#[cfg(test)]
mod test_sink;
pub mod tls;
pub mod training;

pub use client::{Client, ClientError, ConnectOptions};
pub use headers::rfc5322_date;
pub use levee_filter::votes::{GlobalOutcome, VoteOutcome};
pub use manage::{BAYES_BLOB, RULE_WEIGHTS_BLOB};
pub use training::TrainProgress;

use levee_config::Config;
use levee_smtp::{Decision, Incoming, Question, SessionConfig};
use levee_spool::{GroupCommit, RetryPolicy, Spool, SpoolMeta};
use levee_store::{LogEntry, Release, Store};
use levee_types::{Action, Address, Envelope, QueueId, Reply};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
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
    #[error("{0}")]
    Vote(#[from] levee_filter::votes::VoteError),
    #[error("rules: {0}")]
    Rules(String),
}

impl RelayError {
    /// The file system under the spool is full or over quota. The spool says so for its own
    /// writes ([`levee_spool::SpoolError::is_full`]); an I/O error says so by its kind.
    pub fn is_full(&self) -> bool {
        match self {
            RelayError::Spool(e) => e.is_full(),
            RelayError::Io(e) => {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }
}

/// The reply to a message that could not be stored: `452 4.3.1` when the disk is full (as
/// at MAIL, so the client holds its mail and retries), `451 4.3.0` for any other failure.
fn not_stored_reply(e: &RelayError) -> Reply {
    if e.is_full() {
        Reply::with(452, 3, 1, "insufficient system storage, try again later")
    } else {
        Reply::with(451, 3, 0, "local error in processing, try again later")
    }
}

/// What became of a message handed over at the end of DATA.
#[derive(Debug)]
pub enum StoreOutcome {
    /// Safe on disk under this id; the reply is the 250.
    Queued(QueueId, Reply),
    /// Not stored; the reply says why (4xx: try again, 5xx: refused).
    Refused(Reply),
}

/// The finding of a message the content filter panicked on (a `TEMPFAIL_`: asked again).
const FILTER_PANICKED: &str = "TEMPFAIL_FILTER_PANIC";

/// The zero-weight finding of a sender allow entry that did not apply because the
/// sender's domain did not authenticate the message.
const ALLOW_UNAUTHENTICATED: &str = "ALLOW_UNAUTHENTICATED";

/// A message containing this panics the content filter in unit tests (`cfg(test)` only).
#[cfg(test)]
const PANIC_PROBE: &[u8] = b"X-Test-Check: panic";

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The shared state of the running relay.
pub struct Engine {
    /// Config, checks, rules, policies, lists and the model: one value, swapped whole.
    runtime: snapshot::Runtime,
    spool: Arc<Spool>,
    store: Store,
    /// The one writer of queue and quarantine records (see qmgr.rs).
    qmgr: qmgr::QueueManager,
    commit: Arc<GroupCommit>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: inbound::Slots,
    /// The `X-Levee-Stamp` value, and the previous one in its grace period (stamp.rs).
    stamp: stamp::Keeper,
    queue_tx: mpsc::UnboundedSender<QueueId>,
    queue_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<QueueId>>>,
    /// Delivery's own: the TLS connector, the resolver and the idle-connection pool.
    outbound: queue::Outbound,
    ban_hook: std::sync::OnceLock<BanHook>,
    /// Held while the rule set changes (reload, local rules upload), so changes do not interleave.
    rules_change: std::sync::Mutex<()>,
    /// Votes, overlays, autolearn and the validated path to `bayes` (one owner: see learning.rs).
    learning: learning::Learning,
    config_path: std::sync::OnceLock<std::path::PathBuf>,
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
    /// The last HELO/EHLO name, for SPF at MAIL.
    pub helo: String,
    /// SPF of the transaction under way, asked at MAIL FROM; reused at the end of DATA.
    pub spf: Option<levee_netcheck::MailSpf>,
    /// The transaction is a report to a report address (`true`: the spam one).
    pub report: Option<bool>,
    /// The transaction has an ordinary recipient (reports travel alone).
    pub ordinary: bool,
}

impl Conn {
    pub fn new(ip: IpAddr) -> Conn {
        let ip = ip.to_canonical();
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
            helo: String::new(),
            spf: None,
            report: None,
            ordinary: false,
        }
    }
}

/// Called with a client address and the reason when a client earns a ban in the
/// kernel gate; the supervisor owns the gate, so the engine only asks.
pub type BanHook = Box<dyn Fn(IpAddr, &'static str) + Send + Sync>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("stamp", &self.stamp.get().current).finish_non_exhaustive()
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
        // derived from (not equal to) the install secret until first rotated.
        let stamp = stamp::Keeper::load(&store)?;
        let qmgr = qmgr::QueueManager::new(store.clone(), spool.clone());
        let (recreated, dropped) = qmgr.reconcile(&recovered.messages)?;
        for id in recreated {
            warn!(%id, "queue record missing for spooled message; recreated");
        }
        for id in dropped {
            warn!(%id, "queue record without spool file dropped");
        }
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
        let learning = learning::Learning::load(&store, &config.learning)?;
        let lists = store.list_entries()?;
        let net = net_checks(&config);
        rules::recover(&config.data_dir);
        let sa_rules = sa_rules(&config.rules, &config.data_dir)?;
        let policies = Policies::build(&config, rule_scores(&store, sa_rules.as_deref()));
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        info!(queued = recovered.messages.len(), "spool recovered");
        Ok(Arc::new(Engine {
            connections: inbound::Slots::new(config.smtp.max_connections),
            runtime: snapshot::Runtime::new(snapshot::Snapshot {
                config: Arc::new(config),
                net: net.map(Arc::new),
                rules: sa_rules,
                policies: Arc::new(policies),
                lists: Arc::new(lists),
                bayes: Arc::new(bayes),
            }),
            spool,
            store,
            qmgr,
            commit,
            tls,
            stamp,
            queue_tx,
            queue_rx: std::sync::Mutex::new(Some(queue_rx)),
            outbound: queue::Outbound {
                connector: tls::connector(),
                resolver,
                pool: Default::default(),
            },
            ban_hook: std::sync::OnceLock::new(),
            rules_change: std::sync::Mutex::new(()),
            learning,
            config_path: std::sync::OnceLock::new(),
            health: health::Health::default(),
            log_ring: std::sync::OnceLock::new(),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.runtime.get().config.clone()
    }

    /// Everything a judgement reads, consistent with itself (see `snapshot`).
    pub fn snapshot(&self) -> Arc<snapshot::Snapshot> {
        self.runtime.get()
    }

    /// Swaps in a new, already validated config; live sessions keep the one they began with.
    pub fn reload(&self, config: Config) {
        let net = net_checks(&config).map(Arc::new);
        self.learning.reconfigure(&config.learning);
        let _g = self.rules_lock();
        // Rules that no longer load keep the running set (the error is logged).
        let rules = match sa_rules(&config.rules, &config.data_dir) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "rules not reloaded; keeping the loaded set");
                self.sa_rules()
            }
        };
        let policies =
            Arc::new(Policies::build(&config, rule_scores(&self.store, rules.as_deref())));
        let config = Arc::new(config);
        self.runtime.update(|s| snapshot::Snapshot { config, net, rules, policies, ..s.clone() });
    }

    /// Swaps in a rule set and the policies built from it and `config`.
    fn set_rules(&self, config: &Config, rules: Option<Arc<levee_filter::sa::Loaded>>) {
        let policies =
            Arc::new(Policies::build(config, rule_scores(&self.store, rules.as_deref())));
        self.runtime.update(|s| snapshot::Snapshot { rules, policies, ..s.clone() });
    }

    /// The scorer's global policy (thresholds, weights and the rules' scores) in use.
    pub fn global_policy(&self) -> Arc<levee_filter::score::Policy> {
        self.runtime.get().policies.global.clone()
    }

    /// The SpamAssassin-language rules in use, if any.
    pub fn sa_rules(&self) -> Option<Arc<levee_filter::sa::Loaded>> {
        self.runtime.get().rules.clone()
    }

    fn net(&self) -> Option<Arc<levee_netcheck::NetChecks>> {
        self.runtime.get().net.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The stamp every delivered message carries now.
    pub fn stamp(&self) -> String {
        self.stamp.get().current.clone()
    }

    /// The stamp in use and the previous one while the downstream should still accept it.
    pub fn stamps(&self) -> Arc<stamp::Stamps> {
        self.stamp.get()
    }

    /// Replaces the stamp with a fresh one (the old one stays accepted for a week).
    pub fn rotate_stamp(&self, by: &str) -> Result<Arc<stamp::Stamps>, RelayError> {
        let s = self.stamp.rotate(&self.store, now_unix())?;
        warn!(by, "install stamp rotated; the previous one is accepted for 7 days");
        Ok(s)
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
            idle_timeout: c.smtp.idle_timeout_secs.duration(),
            command_timeout: c.smtp.command_timeout_secs.duration(),
            data_timeout: c.smtp.data_timeout_secs.duration(),
            session_timeout: c.smtp.session_timeout_secs.duration(),
            soft_error_limit: c.smtp.soft_error_limit,
            error_delay_max: c.smtp.error_delay_max_secs.duration(),
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
        match q {
            Question::Connect => self.connect_checks(conn).await,
            Question::Helo { name, .. } => {
                conn.helo = name.clone();
                Decision::Accept
            }
            Question::MailFrom { from, .. } => {
                conn.report = None;
                conn.ordinary = false;
                self.mail_from(from.as_ref(), conn).await
            }
            Question::RcptTo { to } => {
                let report = config.report_kind(&to.to_string());
                let mixed = match report {
                    Some(kind) => conn.ordinary || conn.report.is_some_and(|c| c != kind),
                    None => conn.report.is_some(),
                };
                if mixed {
                    // 452 makes the client send the remaining recipients in a new transaction.
                    return Decision::Reject(Reply::with(
                        452,
                        5,
                        3,
                        "reports go in a transaction of their own, one report address each",
                    ));
                }
                if let Some(kind) = report {
                    conn.report = Some(kind);
                    return Decision::Accept;
                }
                let decision = self.rcpt_to(to, conn, &config);
                if matches!(decision, Decision::Accept) {
                    conn.ordinary = true;
                }
                decision
            }
        }
    }

    async fn mail_from(&self, from: Option<&Address>, conn: &mut Conn) -> Decision {
        let config = self.config();
        let client = conn.ip;
        match self.spool.free_bytes() {
            Ok(free) if free >= config.smtp.min_free_bytes => {
                conn.sender = from.map(|a| a.to_string());
                conn.spf = None;
                if let (Some(net), false) = (self.net(), conn.trusted) {
                    let sender = conn.sender.as_deref().unwrap_or("");
                    conn.spf = net.mail_stage(client, &conn.helo, sender).await;
                }
                Decision::Accept
            }
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
        }
    }

    fn rcpt_to(&self, to: &Address, conn: &mut Conn, config: &Config) -> Decision {
        let client = conn.ip;
        match config.domain(to.domain()) {
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
                    sender: conn.sender.as_deref(),
                    client_ip: client,
                    country: conn.country.as_deref(),
                    recipient: &to.to_string(),
                    // DKIM is known only at the end of DATA, where `judge` holds a sender
                    // allow entry to authentication; here it may only spare the early
                    // verdict, so a signed message whose SPF fails can still arrive.
                    sender_authenticated: true,
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
                    Some(e) if e.kind == levee_types::list::ListKind::Allow => Decision::Accept,
                    _ => self.early_verdict(conn, to),
                }
            }
        }
    }

    /// At RCPT the recipient's domain, hence its policy, is known, and so are the
    /// connection findings and SPF from MAIL. When they already score at or past the
    /// policy's reject_at the recipient is refused now, before the message is taken:
    /// a refusal at the end of DATA would come to the same, later.
    fn early_verdict(&self, conn: &Conn, to: &levee_types::Address) -> Decision {
        let Some(spf) = &conn.spf else { return Decision::Accept };
        let mut findings = conn.findings.clone();
        findings.extend(spf.findings());
        let policy = self.policy_for(to.domain());
        let verdict = levee_filter::score::verdict(&policy, &findings, false);
        if verdict.score < policy.reject_at {
            return Decision::Accept;
        }
        let spf_weight: f64 = verdict
            .findings
            .iter()
            .filter(|(f, _)| f.symbol.starts_with("SPF_"))
            .map(|(_, w)| w)
            .sum();
        info!(client = %conn.ip, rcpt = %to, score = verdict.score, findings = %verdict.findings_summary(), "refused at RCPT");
        if spf_weight > 0.0 {
            // RFC 7372: 5.7.23 is "SPF validation failed".
            let result = spf.findings().first().map(|f| f.symbol.clone()).unwrap_or_default();
            let result = result.strip_prefix("SPF_").unwrap_or(&result).to_ascii_lowercase();
            Decision::Reject(Reply::with(
                550,
                7,
                23,
                format!(
                    "SPF {result} for {}: sender not authorised, message refused (score {:.1})",
                    spf.domain(),
                    verdict.score
                ),
            ))
        } else {
            let why = verdict.spam_symbols();
            Decision::Reject(Reply::with(550, 7, 1, format!("message refused: {why}")))
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
            let why = verdict.spam_symbols();
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
        self.runtime.get().lists.clone()
    }

    fn bayes(&self) -> Arc<levee_filter::bayes::Model> {
        self.runtime.get().bayes.clone()
    }

    /// Swaps in a new model (its writers hold `Learning::model_writer`).
    fn set_bayes(&self, model: levee_filter::bayes::Model) {
        let bayes = Arc::new(model);
        self.runtime.update(|s| snapshot::Snapshot { bayes, ..s.clone() });
    }

    fn policies(&self) -> Arc<Policies> {
        self.runtime.get().policies.clone()
    }

    /// The global policy (for the connection stage, before any recipient is known).
    fn policy(&self) -> Arc<levee_filter::score::Policy> {
        self.policies().global.clone()
    }

    /// The effective policy of a recipient domain.
    fn policy_for(&self, domain: &levee_types::Domain) -> Arc<levee_filter::score::Policy> {
        self.policies().get(domain).clone()
    }

    /// [`Engine::judge_with_uri`] without the URI lists (tests only: the engine asks them).
    #[cfg(test)]
    async fn judge(
        &self,
        envelope: &Envelope,
        data: Arc<Vec<u8>>,
        findings: Vec<levee_types::Finding>,
        country: Option<&str>,
    ) -> Vec<(Vec<Address>, levee_types::Verdict)> {
        self.judge_with_uri(envelope, data, findings, country, None).await
    }

    /// Content filter and lists: the verdict for each recipient of a received message,
    /// recipients with equal verdicts together. Each recipient is scored with its
    /// domain's effective policy and its own allow list, so one domain's lenient policy
    /// or one recipient's allow entry never lets spam through to the others. With `uri`,
    /// the URI lists are asked about the links of the content filter's own parse (the
    /// message is parsed once, so the lists wait for the filter).
    async fn judge_with_uri(
        &self,
        envelope: &Envelope,
        data: Arc<Vec<u8>>,
        mut findings: Vec<levee_types::Finding>,
        country: Option<&str>,
        uri: Option<Arc<levee_netcheck::NetChecks>>,
    ) -> Vec<(Vec<Address>, levee_types::Verdict)> {
        // one snapshot for the whole judgement: a reload meanwhile cannot mix two configs
        let snap = self.snapshot();
        let model = snap.bayes.clone();
        let rules = snap.rules.clone();
        let policies = snap.policies.clone();
        let lists = snap.lists.clone();
        let sender = envelope.mail_from.as_ref().map(|a| a.to_string());
        let text = data.clone();
        let hop = headers::live_hop(envelope, &snap.config.hostname.0);
        let max_links = uri.as_ref().map_or(0, |net| net.uri_hosts_wanted());
        let content = tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            if text.windows(PANIC_PROBE.len()).any(|w| w == PANIC_PROBE) {
                panic!("test-only check: this message panics the content filter");
            }
            let set = rules.as_ref().map(|r| &r.set);
            levee_filter::content_scan(&model, set, &hop, &text, max_links)
        })
        .await
        .unwrap_or_else(|e| {
            // A panic on one hostile message costs that message only: it is asked for again
            // (and the session closed), the engine goes on. See `panic` in Cargo.toml.
            error!(client = %envelope.client_ip, from = %envelope.mail_from_path(), error = %e, "content filter panicked");
            levee_filter::Scanned {
                findings: vec![levee_types::Finding::new(FILTER_PANICKED, "the content filter failed on this message")],
                ..Default::default()
            }
        });
        if let Some(net) = uri {
            let (uri_findings, warnings) = net.uri_stage(&content.links).await;
            self.record_health(&warnings);
            findings.extend(uri_findings);
        }
        findings.extend(content.findings);
        // no tokens when the filter panicked: learning then makes its own
        let tokens = (!content.tokens.is_empty()).then_some(content.tokens);
        let global = levee_filter::score::verdict(&policies.global, &findings, false);
        let key = self
            .learning_at_judge(&envelope.rcpt_to, &data, tokens, &global, &policies.global)
            .await;
        let sender_domain = sender.as_deref().and_then(|a| a.rsplit_once('@')).map(|(_, d)| d);
        let sender_authenticated =
            sender_domain.is_some_and(|d| report::domain_authenticated(d, Some(d), &findings));
        let mut groups: Vec<(Vec<Address>, levee_types::Verdict)> = Vec::new();
        for rcpt in &envelope.rcpt_to {
            let subject = levee_types::list::ListSubject {
                sender: sender.as_deref(),
                client_ip: envelope.client_ip,
                country,
                recipient: &rcpt.to_string(),
                sender_authenticated,
            };
            let allowed = levee_types::list::decide(&lists, &subject)
                .is_some_and(|e| e.kind == levee_types::list::ListKind::Allow);
            let skipped = levee_types::list::skipped_for_authentication(&lists, &subject);
            let policy = policies.get(rcpt.domain());
            // The recipient's own votes count for them alone.
            let own = key.as_ref().and_then(|k| self.overlay(&rcpt.to_string(), k));
            let verdict = if allowed || own.is_some() || skipped.is_some() {
                let mut findings = findings.clone();
                findings.extend(own);
                if let Some(e) = skipped {
                    // zero weight: it only tells the log why the entry did not apply
                    findings.push(levee_types::Finding::new(
                        ALLOW_UNAUTHENTICATED,
                        format!("{e}: the sender's domain did not authenticate the message"),
                    ));
                }
                if allowed {
                    findings.push(levee_types::Finding::new(
                        "ALLOW_LISTED",
                        "sender on the allow list",
                    ));
                }
                levee_filter::score::verdict(policy, &findings, allowed)
            } else {
                levee_filter::score::verdict(policy, &findings, false)
            };
            match groups.iter_mut().find(|(_, v)| *v == verdict) {
                Some((rcpts, _)) => rcpts.push(rcpt.clone()),
                None => groups.push((vec![rcpt.clone()], verdict)),
            }
        }
        if groups.is_empty() {
            // The session never hands over a message without recipients; judge it anyway.
            groups.push((
                Vec::new(),
                levee_filter::score::verdict(&policies.global, &findings, false),
            ));
        }
        groups
    }

    /// Writes a received message durably and queues it for delivery. Returns only
    /// once the message is safe (the 250) or known not to be (4xx).
    async fn accept_message(self: &Arc<Self>, incoming: Incoming, conn: &Conn) -> StoreOutcome {
        let Incoming { mut envelope, mut data } = incoming;
        envelope.client_name = conn.confirmed_name.clone();
        let hops = headers::count_fields(&data, "received");
        let limit = self.config().smtp.max_received_headers.get();
        if hops > limit {
            // A loop between two relays would otherwise go round until a disk fills.
            let verdict = levee_types::Verdict {
                action: Action::Reject,
                score: 0.0,
                findings: vec![(
                    levee_types::Finding::new(
                        "MAIL_LOOP",
                        format!("{hops} Received headers, more than {limit}"),
                    ),
                    0.0,
                )],
            };
            self.log_refused(&envelope, data.len() as u64, &verdict);
            warn!(client = %envelope.client_ip, from = %envelope.mail_from_path(), hops, limit, "refused: too many hops");
            return StoreOutcome::Refused(Reply::with(554, 4, 0, "too many hops (mail loop?)"));
        }
        let mut findings = conn.findings.clone();
        if let Some(clean) = headers::strip_forged_results(&data, &self.config().hostname.0) {
            warn!(client = %envelope.client_ip, "removed Authentication-Results claiming our name");
            data = clean;
        }
        if let (Some(net), false) = (self.net(), conn.trusted) {
            let from = envelope.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default();
            // The URI lists are asked in `judge_with_uri`, about the links of the filter's parse.
            let report = net
                .auth_stage(envelope.client_ip, &envelope.helo, &from, conn.spf.as_ref(), &data)
                .await;
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
        // After the content stage, so DKIM is verified on the bytes the sender signed; before
        // judging and storing, so neither the filter nor the downstream sees a forged stamp.
        if let Some((clean, removed)) = headers::strip_our_headers(&data) {
            warn!(client = %envelope.client_ip, from = %envelope.mail_from_path(), removed, "removed X-Levee-* headers that came from outside");
            data = clean;
        }
        let data = Arc::new(data);
        let uri = self.net().filter(|_| !conn.trusted);
        let groups = self
            .judge_with_uri(&envelope, data.clone(), findings, conn.country.as_deref(), uri)
            .await;
        let data = Arc::try_unwrap(data).unwrap_or_else(|d| (*d).clone());
        let size = data.len() as u64;
        let part = |rcpts: &[Address]| Envelope { rcpt_to: rcpts.to_vec(), ..envelope.clone() };
        // Refused at the end of DATA only when every recipient's policy refuses it.
        if groups.iter().all(|(_, v)| v.action == Action::Reject) {
            for (rcpts, verdict) in &groups {
                self.log_refused(&part(rcpts), size, verdict);
                info!(client = %envelope.client_ip, from = %envelope.mail_from_path(), score = verdict.score, findings = %verdict.findings_summary(), "rejected");
            }
            return StoreOutcome::Refused(Reply::with(550, 7, 1, "message refused as spam"));
        }
        // One reply answers for every recipient: a message that must be checked again
        // later is asked for again as a whole.
        if groups.iter().any(|(_, v)| v.action == Action::Tempfail) {
            for (rcpts, verdict) in &groups {
                self.log_refused(&part(rcpts), size, verdict);
            }
            let panicked = |(_, v): &(Vec<Address>, levee_types::Verdict)| {
                v.findings.iter().any(|(f, _)| f.symbol == FILTER_PANICKED)
            };
            if groups.iter().any(panicked) {
                // 421 closes the session: nothing more from a client whose message broke us
                return StoreOutcome::Refused(Reply::with(
                    421,
                    3,
                    0,
                    "local error in processing, closing",
                ));
            }
            return StoreOutcome::Refused(Reply::with(
                451,
                7,
                1,
                "message could not be checked, try again later",
            ));
        }
        let copies = groups
            .into_iter()
            .map(|(rcpts, mut verdict)| {
                if verdict.action == Action::Reject {
                    // Other recipients take the message, so the 250 covers these too; a
                    // bounce later would be backscatter and dropping it silent loss.
                    verdict.action = Action::Quarantine;
                    verdict.findings.push((
                        levee_types::Finding::new(
                            "REJECT_HELD",
                            format!(
                                "score {:.2} reached this recipient's reject_at; held because other recipients accept the message",
                                verdict.score
                            ),
                        ),
                        0.0,
                    ));
                }
                (part(&rcpts), verdict)
            })
            .collect();
        self.enqueue_copies(copies, data, None).await
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
        let verdict = levee_types::Verdict { action, score, findings };
        self.enqueue_copies(vec![(envelope, verdict)], data, None).await
    }

    /// Stores one queue entry per (recipients, verdict) copy of the same message, all
    /// or none: the one reply covers them all, and after a 4xx the client sends the
    /// whole message again, so a copy already written is taken back. `released` marks
    /// copies let go from quarantine.
    async fn enqueue_copies(
        self: &Arc<Self>,
        copies: Vec<(Envelope, levee_types::Verdict)>,
        data: Vec<u8>,
        released: Option<Release>,
    ) -> StoreOutcome {
        let now = now_unix();
        let metas: Vec<SpoolMeta> = copies
            .into_iter()
            .map(|(envelope, v)| SpoolMeta {
                id: self.spool.new_id(SystemTime::now()),
                envelope,
                received_at: now,
                action: v.action,
                score: v.score,
                findings: v.findings,
            })
            .collect();
        let size = data.len() as u64;
        let engine = self.clone();
        let ids: Vec<QueueId> = metas.iter().map(|m| m.id.clone()).collect();
        let result = tokio::task::spawn_blocking(move || {
            let days = engine.config().policy.quarantine_days;
            let mut written: Vec<&SpoolMeta> = Vec::with_capacity(metas.len());
            let mut outcome = Ok(());
            for meta in &metas {
                let quarantine = (meta.action == Action::Quarantine)
                    .then(|| manage::quarantine_entry(meta, &data, days));
                if let Err(e) = engine.write_copy(meta, &data, quarantine, released.as_ref()) {
                    engine.unwrite(&meta.id);
                    outcome = Err(e);
                    break;
                }
                written.push(meta);
            }
            // One directory fsync + index flush makes every copy durable at once.
            let outcome = outcome.and_then(|()| engine.commit.commit().map_err(RelayError::from));
            if let Err(e) = outcome {
                for done in written {
                    engine.unwrite(&done.id);
                    let undone = SpoolMeta { action: Action::Tempfail, ..done.clone() };
                    let _ = engine.store.log_put(&log_entry(&undone, size));
                }
                return Err(e);
            }
            Ok(metas)
        })
        .await;
        let failed = |e: RelayError| {
            error!(id = %ids.first().map(|i| i.to_string()).unwrap_or_default(), error = %e, "message not stored");
            StoreOutcome::Refused(not_stored_reply(&e))
        };
        let stored = match result {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => return failed(e),
            Err(e) => {
                return failed(RelayError::Io(std::io::Error::other(format!(
                    "store task failed: {e}"
                ))))
            }
        };
        for meta in &stored {
            info!(
                id = %meta.id,
                client = %meta.envelope.client_ip,
                from = %meta.envelope.mail_from_path(),
                to = %meta.envelope.rcpt_to.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
                size,
                verdict = %meta.action,
                score = meta.score,
                "accepted"
            );
            if meta.action != Action::Quarantine {
                let _ = self.queue_tx.send(meta.id.clone());
            }
        }
        let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
        let reply = Reply::with(250, 0, 0, format!("Ok: queued as {list}"));
        StoreOutcome::Queued(ids[0].clone(), reply)
    }

    /// Takes back what [`Engine::write_copy`] wrote of a message that will not get its 250.
    fn unwrite(&self, id: &QueueId) {
        self.qmgr.unadmit(id);
    }

    /// Blocking: spool file (fsynced, renamed), index and log records of one copy. Not
    /// durable until the group commit that follows.
    fn write_copy(
        &self,
        meta: &SpoolMeta,
        data: &[u8],
        quarantine: Option<levee_store::QuarantineEntry>,
        released: Option<&Release>,
    ) -> Result<(), RelayError> {
        self.spool.write(meta, data)?;
        self.qmgr.admit(meta, quarantine.as_ref(), released)?;
        self.store.log_put(&log_entry(meta, data.len() as u64))?;
        Ok(())
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

/// The scorer's policies for a config, built once per config rather than per
/// message: the global one, and the effective one of each domain with overrides.
#[derive(Debug)]
struct Policies {
    global: Arc<levee_filter::score::Policy>,
    by_domain: std::collections::HashMap<levee_types::Domain, Arc<levee_filter::score::Policy>>,
}

impl Policies {
    fn build(config: &Config, scores: Arc<std::collections::HashMap<String, f64>>) -> Policies {
        let build = |p: &levee_config::Policy| {
            Arc::new(levee_filter::score::Policy {
                rule_scores: scores.clone(),
                ..build_policy(config, p)
            })
        };
        let by_domain = config
            .domains
            .iter()
            .filter(|d| d.policy.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|d| (d.domain().clone(), build(&config.policy_for(d.domain()))))
            .collect();
        Policies { global: build(&config.policy), by_domain }
    }

    /// The effective policy of mail for `domain`.
    fn get(&self, domain: &levee_types::Domain) -> &Arc<levee_filter::score::Policy> {
        self.by_domain.get(domain).unwrap_or(&self.global)
    }
}

/// The scorer's policy for `p` (the global `[policy]` or a domain's effective one).
fn build_policy(config: &Config, p: &levee_config::Policy) -> levee_filter::score::Policy {
    let mut policy = levee_filter::score::Policy {
        tag_at: p.tag_at,
        quarantine_at: p.quarantine_at,
        reject_at: p.reject_at,
        ..Default::default()
    };
    // A list's own weight covers its symbol and every return-code variant of it;
    // `[policy.weights]` (and a domain's weights) still have the last word.
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

/// The weights of the loaded rules: their scaled stock scores, with the weights `levee train`
/// fitted on the site's mail over them.
fn rule_scores(
    store: &Store,
    rules: Option<&levee_filter::sa::Loaded>,
) -> Arc<std::collections::HashMap<String, f64>> {
    let Some(rules) = rules else { return Arc::default() };
    let learned = match store.blob_get(RULE_WEIGHTS_BLOB) {
        Ok(Some(b)) => levee_filter::fit::weights_from_bytes(&b),
        Ok(None) => return rules.weights.clone(),
        Err(e) => {
            warn!(error = %e, "fitted rule weights unreadable; the stock scores apply");
            return rules.weights.clone();
        }
    };
    info!(rules = learned.len(), "rule weights fitted by levee train in use");
    Arc::new(levee_filter::fit::with_learned(&rules.weights, &learned))
}

/// Loads `[rules]`. The default folders are optional (no `spamassassin` package: no rules, a
/// warning); folders the config names must load, or the engine refuses to start.
fn sa_rules(
    config: &levee_config::Rules,
    data_dir: &std::path::Path,
) -> Result<Option<Arc<levee_filter::sa::Loaded>>, RelayError> {
    if !config.spamassassin {
        info!("SpamAssassin rules off ([rules] spamassassin = false)");
        return Ok(None);
    }
    let (dirs, named) = match &config.dirs {
        Some(dirs) => (dirs.clone(), true),
        None => (levee_filter::sa::default_dirs(data_dir), false),
    };
    if dirs.is_empty() {
        warn!(
            "no SpamAssassin rules found in {} or {}: content is judged by Levee's own rules \
             and the learned model only (install the spamassassin package)",
            levee_filter::sa::UPDATES_DIR,
            levee_filter::sa::STOCK_DIR
        );
        return Ok(None);
    }
    let shown = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" ");
    match levee_filter::sa::load(&dirs) {
        Ok(loaded) => {
            let r = &loaded.report;
            let skipped: usize = r.skipped.values().map(Vec::len).sum();
            info!(dirs = %shown, files = r.files, loaded = r.loaded, skipped, "SpamAssassin rules loaded");
            if skipped > 0 {
                let reasons = levee_filter::sa::skip_summary(r, 8);
                info!(%reasons, "SpamAssassin rules skipped, by reason");
            }
            Ok(Some(loaded))
        }
        Err(e) if named => Err(RelayError::Rules(e.to_string())),
        Err(e) => {
            error!(dirs = %shown, error = %e, "SpamAssassin rules not loaded; running without them");
            Ok(None)
        }
    }
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
        auth: c.auth,
        ..Default::default()
    };
    Some(levee_netcheck::NetChecks::new(dns, net, geoip))
}

/// Periodic chores: quarantine expiry and log retention hourly, learning every ten
/// minutes, all at start.
async fn housekeeping(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    for round in 0u64.. {
        if round % 6 == 0 {
            engine.expire_quarantine().await;
            prune_log(&engine).await;
        }
        // Pending votes and autolearn reach the model in validated, rate-capped batches.
        if let Err(e) = engine.apply_learning().await {
            warn!(error = %e, "cannot apply learning");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Removes message-log records older than `log.retention_days`. On a blocking thread:
/// the first round after an upgrade (or a shorter retention) may remove many.
async fn prune_log(engine: &Engine) -> usize {
    let cutoff = now_unix().saturating_sub(engine.config().log.retention_days.as_secs());
    let store = engine.store.clone();
    match tokio::task::spawn_blocking(move || store.log_prune(cutoff)).await {
        Ok(Ok(n)) => {
            if n > 0 {
                info!(pruned = n, "message log records past their retention removed");
            }
            n
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot prune the message log");
            0
        }
        Err(e) => {
            warn!(error = %e, "message log pruning failed");
            0
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
        action: meta.action.into(),
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

    pub(crate) fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n{extra}",
            dir.display()
        );
        Config::parse(&text, "test").unwrap()
    }

    #[test]
    fn a_mapped_ipv4_client_is_its_ipv4_address() {
        let c = Conn::new("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!((c.ip, c.trusted), ("192.0.2.7".parse::<IpAddr>().unwrap(), false));
        assert!(Conn::new("::ffff:127.0.0.1".parse().unwrap()).trusted);
        assert!(!Conn::new("2001:db8::7".parse().unwrap()).trusted);
    }

    /// Reload against readers: every snapshot a reader takes is all one config (its
    /// thresholds, its list checks' weights), never half the old and half the new; and a
    /// model swapped in meanwhile survives the reloads.
    #[test]
    fn a_reader_sees_all_old_or_all_new_and_no_writer_loses_another() {
        let dir = scratch("snapshot");
        let a = config(&dir, "[rules]\nspamassassin = false\n");
        let b = config(
            &dir,
            "[policy]\ntag_at = 2.5\n[[checks.dnsbl]]\nzone = \"bl.example.net\"\nsymbol = \"BL\"\n[rules]\nspamassassin = false\n",
        );
        let engine = Engine::open(a.clone()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut model = levee_filter::bayes::Model::new();
        model.train(&["offer".to_string()], true);
        let seen = std::thread::scope(|t| {
            let reader = t.spawn(|| {
                let mut seen = [0usize; 2];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = engine.snapshot();
                    let is_b = s.config.policy.tag_at == 2.5;
                    assert_eq!(s.policies.global.tag_at, s.config.policy.tag_at, "torn policy");
                    let listed = s.policies.global.weight("BL") != 0.0;
                    assert_eq!(listed, !s.config.checks.dnsbl.is_empty(), "torn checks");
                    seen[usize::from(is_b)] += 1;
                }
                seen
            });
            for i in 0..200 {
                engine.reload(if i % 2 == 0 { b.clone() } else { a.clone() });
                if i == 100 {
                    engine.set_bayes(model.clone());
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            reader.join().unwrap()
        });
        assert!(seen[0] + seen[1] > 0, "the reader ran");
        assert_eq!(engine.bayes().counts(), (1, 0), "a reload dropped the swapped-in model");
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn housekeeping_prunes_the_log_to_the_configured_retention() {
        let dir = std::env::temp_dir().join(format!("levee-relay-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let engine = Engine::open(config(&dir, "[log]\nretention_days = 2\n")).unwrap();
        let now = now_unix();
        let ages = [5 * 86_400, 2 * 86_400 + 60, 2 * 86_400 - 60, 0];
        for (n, age) in ages.iter().enumerate() {
            let e = LogEntry {
                id: QueueId::from_u64(n as u64 + 1),
                received_at: now - age,
                client_ip: "192.0.2.1".into(),
                helo: "mx.test".into(),
                mail_from: String::new(),
                rcpt_to: vec![],
                size: 10,
                action: "accept".into(),
                score: 0.0,
                findings: vec![],
                deliveries: vec![],
            };
            engine.store.log_put(&e).unwrap();
        }
        assert_eq!(prune_log(&engine).await, 2);
        let left: Vec<u64> =
            engine.store.log_recent(10).unwrap().iter().map(|e| now - e.received_at).collect();
        assert_eq!(left, [0, 2 * 86_400 - 60]);
        assert_eq!(prune_log(&engine).await, 0);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
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

    /// Two domains with the same global weights but their own thresholds: `strict.test`
    /// quarantines at 3 and rejects at 4.5, `lenient.test` tags only; `plain.test` has
    /// no overrides. `TEST_SIGN` weighs 5 everywhere, 9 in `hard.test`.
    const DOMAINS: &str = "[[domain]]\nname = \"strict.test\"\ndownstream = \"127.0.0.1:9\"\n\
        [domain.policy]\ntag_at = 2.0\nquarantine_at = 3.0\nreject_at = 4.5\n\
        [[domain]]\nname = \"lenient.test\"\ndownstream = \"127.0.0.1:9\"\n\
        [domain.policy]\nquarantine_at = 50.0\nreject_at = 100.0\n\
        [[domain]]\nname = \"plain.test\"\ndownstream = \"127.0.0.1:9\"\n\
        [[domain]]\nname = \"hard.test\"\ndownstream = \"127.0.0.1:9\"\n\
        [domain.policy.weights]\nTEST_SIGN = 9.0\n\
        [policy.weights]\nTEST_SIGN = 5.0\n";

    pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("levee-relay-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    pub(crate) fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    fn incoming(rcpts: &[&str]) -> Incoming {
        let data = b"From: Alice <alice@sender.example>\r\nTo: team@example.test\r\n\
            Subject: minutes\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
            Message-ID: <m1@sender.example>\r\n\r\nThe minutes of the meeting are attached below.\r\n"
            .to_vec();
        incoming_from("alice@sender.example", data, rcpts)
    }

    /// A message from `sender` to `rcpts` by a client at 192.0.2.7.
    pub(crate) fn incoming_from(sender: &str, data: Vec<u8>, rcpts: &[&str]) -> Incoming {
        Incoming {
            envelope: Envelope {
                mail_from: Some(addr(sender)),
                rcpt_to: rcpts.iter().map(|r| addr(r)).collect(),
                helo: "client.example".into(),
                client_ip: "192.0.2.7".parse().unwrap(),
                client_name: None,
                tls: false,
                body: levee_types::Body::SevenBit,
                smtputf8: false,
                declared_size: None,
            },
            data,
        }
    }

    /// A client (not trusted, so the network checks' findings count) whose connection
    /// stage found `TEST_SIGN`.
    pub(crate) fn signed_conn() -> Conn {
        let mut conn = Conn::new("192.0.2.7".parse().unwrap());
        conn.findings.push(levee_types::Finding::new("TEST_SIGN", "test"));
        conn
    }

    #[tokio::test]
    async fn spamassassin_relay_rules_judge_the_live_client_not_the_chain() {
        let dir = scratch("live-hop");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        assert!(engine.sa_rules().is_some(), "the stock rules (spamassassin package) load");
        // The chain below claims a relay on a dynamic address; only the live client counts.
        let data = b"Received: from pc (dsl-198-51-100-4.dyn.example.net [198.51.100.4])\r\n\
            \tby mx.sender.example with ESMTP id X1;\r\n\tMon, 1 Jan 2024 10:00:00 +0000\r\n\
            From: Alice <alice@sender.example>\r\nTo: bob@plain.test\r\nSubject: hello\r\n\
            Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <h1@sender.example>\r\n\r\nhi\r\n"
            .to_vec();
        let msg = incoming_from("alice@sender.example", data.clone(), &["bob@plain.test"]);
        let dynamic = |name: &str, ip: &str| {
            let mut env = msg.envelope.clone();
            env.client_ip = ip.parse().unwrap();
            env.client_name = Some(name.into());
            env.helo = name.into();
            let engine = engine.clone();
            let data = Arc::new(data.clone());
            async move {
                let groups = engine.judge(&env, data, Vec::new(), None).await;
                groups[0].1.findings.iter().any(|(f, _)| f.symbol == "SA_RDNS_DYNAMIC")
            }
        };
        assert!(!dynamic("mail.sender.example", "203.0.113.20").await, "a well-named client");
        assert!(
            dynamic("dsl-203-0-113-9.dyn.example.net", "203.0.113.9").await,
            "a dynamic client"
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_domain_gets_its_effective_policy_and_reloads_rebuild_them() {
        let dir = scratch("domain-policy");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let get = |d: &str| engine.policy_for(&levee_types::Domain::parse(d).unwrap());
        let (strict, lenient, plain, hard) =
            (get("strict.test"), get("lenient.test"), get("plain.test"), get("hard.test"));
        assert_eq!((strict.tag_at, strict.quarantine_at, strict.reject_at), (2.0, 3.0, 4.5));
        assert_eq!((lenient.quarantine_at, lenient.reject_at), (50.0, 100.0));
        assert_eq!((hard.weight("TEST_SIGN"), strict.weight("TEST_SIGN")), (9.0, 5.0));
        // No override: the very same global policy, not a copy.
        assert!(Arc::ptr_eq(&plain, &engine.policy()));
        assert!(Arc::ptr_eq(&get("unknown.test"), &engine.policy()));
        engine.reload(config(&dir, &DOMAINS.replace("reject_at = 4.5", "reject_at = 7.0")));
        assert_eq!(get("strict.test").reject_at, 7.0);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn mixed_domain_message_gets_each_domains_outcome_in_its_own_copy() {
        let dir = scratch("mixed");
        // The scores here are the test's own sign only: SpamAssassin's relay rules would judge
        // the documentation-range client too.
        let engine =
            Engine::open(config(&dir, &format!("{DOMAINS}[rules]\nspamassassin = false\n")))
                .unwrap();
        let conn = signed_conn();
        let msg = incoming(&["a@lenient.test", "b@strict.test", "c@plain.test", "d@lenient.test"]);
        let StoreOutcome::Queued(first, reply) = engine.accept_message(msg, &conn).await else {
            panic!("refused");
        };
        assert!(reply.to_string().contains(&first.to_string()), "{reply}");
        let entries = engine.store().queue_all().unwrap();
        // lenient and plain both tag at 5 (same verdict: one copy); strict's 5 is past
        // its reject_at 4.5 but the others take the message, so that copy is held.
        assert_eq!(entries.len(), 2, "{entries:?}");
        let rcpts = |e: &levee_store::QueueEntry| {
            e.recipients.iter().map(|r| r.rcpt.clone()).collect::<Vec<_>>()
        };
        let held: Vec<_> = entries.iter().filter(|e| e.held).collect();
        let free: Vec<_> = entries.iter().filter(|e| !e.held).collect();
        assert_eq!(rcpts(held[0]), ["b@strict.test"]);
        assert_eq!(rcpts(free[0]), ["a@lenient.test", "c@plain.test", "d@lenient.test"]);
        // Each copy's record (what the headers and the log are made from) is its own verdict.
        let log = |id: &QueueId| engine.store().log_get(id).unwrap().unwrap();
        let held_log = log(&held[0].id);
        assert_eq!((held_log.action.as_str(), held_log.rcpt_to.len()), ("quarantine", 1));
        assert!(held_log.findings.iter().any(|(s, _, w)| s == "REJECT_HELD" && *w == 0.0));
        assert!(engine.store().quarantine_get(&held[0].id).unwrap().is_some());
        let free_log = log(&free[0].id);
        assert_eq!(free_log.action, "tag");
        assert!(!free_log.findings.iter().any(|(s, _, _)| s == "REJECT_HELD"));
        assert_eq!(held_log.score, free_log.score);
        assert!(reply.to_string().contains(&held[0].id.to_string()), "{reply}");
        assert!(reply.to_string().contains(&free[0].id.to_string()), "{reply}");
        let meta = engine.spool.read_meta(&held[0].id).unwrap();
        assert_eq!(meta.action, Action::Quarantine);

        // Different weights, same thresholds: hard.test scores 9 and quarantines.
        let msg = incoming(&["e@plain.test", "f@hard.test"]);
        assert!(matches!(engine.accept_message(msg, &conn).await, StoreOutcome::Queued(..)));
        let entries = engine.store().queue_all().unwrap();
        let hard = entries.iter().find(|e| e.recipients[0].rcpt == "f@hard.test").unwrap();
        let plain = entries.iter().find(|e| e.recipients[0].rcpt == "e@plain.test").unwrap();
        assert!(hard.held && !plain.held);
        assert!((log(&hard.id).score - log(&plain.id).score - 4.0).abs() < 1e-9);
        assert_eq!(log(&hard.id).action, "quarantine");

        // Every recipient's policy rejects: refused at the end of DATA, nothing stored.
        let before = engine.store().queue_all().unwrap().len();
        let msg = incoming(&["g@strict.test"]);
        match engine.accept_message(msg, &conn).await {
            StoreOutcome::Refused(r) => assert_eq!(r.code, 550),
            other => panic!("{other:?}"),
        }
        assert_eq!(engine.store().queue_all().unwrap().len(), before);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A check that panics on one message costs that message a 421 (asked again, session
    /// closed) and nothing else: the next message is judged and queued as usual.
    #[tokio::test]
    async fn a_message_that_panics_a_check_gets_a_421_and_the_engine_lives() {
        let dir = scratch("panic");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let conn = Conn::new("192.0.2.7".parse().unwrap());
        let bad = b"X-Test-Check: panic\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
        match engine
            .accept_message(incoming_from("a@sender.example", bad, &["b@plain.test"]), &conn)
            .await
        {
            StoreOutcome::Refused(r) => assert!(r.to_string().starts_with("421 4.3.0"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(engine.store().queue_all().unwrap().is_empty(), "nothing stored");
        let good = incoming(&["c@plain.test"]);
        assert!(matches!(engine.accept_message(good, &conn).await, StoreOutcome::Queued(..)));
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A message with N `Received:` headers (any case) from 192.0.2.7 to `b@plain.test`.
    fn hops(n: usize) -> Incoming {
        let mut data = Vec::new();
        for i in 0..n {
            let name = if i % 2 == 0 { "Received" } else { "RECEIVED" };
            data.extend_from_slice(
                format!("{name}: from hop{i}.example by hop{}.example;\r\n\tMon, 1 Jan 2024 10:00:00 +0000\r\n", i + 1).as_bytes(),
            );
        }
        data.extend_from_slice(
            b"From: a@sender.example\r\nSubject: loop\r\n\r\nround and round\r\n",
        );
        incoming_from("a@sender.example", data, &["b@plain.test"])
    }

    #[tokio::test]
    async fn more_received_headers_than_the_limit_is_a_554_and_nothing_is_stored() {
        let dir = scratch("hops");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let conn = Conn::new("192.0.2.7".parse().unwrap());
        match engine.accept_message(hops(51), &conn).await {
            StoreOutcome::Refused(r) => assert!(r.to_string().starts_with("554 5.4.0"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(engine.store().queue_all().unwrap().is_empty(), "nothing queued");
        assert!(engine.spool.list().unwrap().is_empty(), "nothing spooled");
        assert!(matches!(engine.accept_message(hops(50), &conn).await, StoreOutcome::Queued(..)));
        // The limit follows the config.
        engine.reload(config(&dir, &format!("max_received_headers = 3\n{DOMAINS}")));
        assert!(matches!(engine.accept_message(hops(4), &conn).await, StoreOutcome::Refused(_)));
        assert!(matches!(engine.accept_message(hops(3), &conn).await, StoreOutcome::Queued(..)));
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 12: a forged `X-Levee-Stamp` arrived next to ours. What is stored has none of
    /// the sender's `X-Levee-*` fields, so delivery adds the only ones.
    #[tokio::test]
    async fn inbound_levee_headers_are_removed_before_the_message_is_stored() {
        let dir = scratch("forged-stamp");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let conn = Conn::new("192.0.2.7".parse().unwrap());
        let data =
            b"X-Levee-Stamp: forged\r\nx-levee-verdict: accept\r\nFrom: a@sender.example\r\n\
            X-LEVEE-SCORE: -20\r\nSubject: hi\r\n\r\nX-Levee-Stamp: quoted in the body\r\n"
                .to_vec();
        let msg = incoming_from("a@sender.example", data, &["b@plain.test"]);
        let StoreOutcome::Queued(id, _) = engine.accept_message(msg, &conn).await else {
            panic!("not queued")
        };
        let (_, stored) = engine.spool.read(&id).unwrap();
        let kept: &[u8] =
            b"From: a@sender.example\r\nSubject: hi\r\n\r\nX-Levee-Stamp: quoted in the body\r\n";
        // Our own Authentication-Results may come first; nothing else may.
        let front = &stored[..stored.len().saturating_sub(kept.len())];
        assert!(stored.ends_with(kept), "{}", String::from_utf8_lossy(&stored));
        assert!(headers::strip_our_headers(&stored).is_none(), "an X-Levee-* field was stored");
        assert!(
            front.is_empty() || front.starts_with(b"Authentication-Results: mx.example.test"),
            "{}",
            String::from_utf8_lossy(&stored)
        );
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_disk_is_a_452_and_any_other_store_failure_a_451() {
        let spool = |kind: std::io::ErrorKind| {
            RelayError::Spool(levee_spool::SpoolError::Io {
                op: "write",
                path: "/spool/tmp/x".into(),
                source: kind.into(),
            })
        };
        let code = |e: RelayError| not_stored_reply(&e).to_string();
        assert!(code(spool(std::io::ErrorKind::StorageFull)).starts_with("452 4.3.1"));
        assert!(
            code(RelayError::Io(std::io::ErrorKind::QuotaExceeded.into())).starts_with("452 4.3.1")
        );
        assert!(code(spool(std::io::ErrorKind::PermissionDenied)).starts_with("451 4.3.0"));
        assert!(code(RelayError::Rules("x".into())).starts_with("451 4.3.0"));
    }

    /// Issue 12: a disk that fills mid-message answered `451 4.3.0`. Needs root to mount a
    /// small tmpfs as the data directory; skipped otherwise.
    #[tokio::test]
    async fn a_message_that_fills_the_disk_gets_a_452_and_leaves_nothing() {
        let dir = scratch("disk-full");
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
            return;
        }
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _guard = Unmount(dir.clone());
        let engine =
            Engine::open(config(&dir, &format!("[rules]\nspamassassin = false\n{DOMAINS}")))
                .unwrap();
        let mut data = b"From: a@sender.example\r\nSubject: big\r\n\r\n".to_vec();
        while data.len() < 8 << 20 {
            data.extend_from_slice(
                b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n",
            );
        }
        let conn = Conn::new("192.0.2.7".parse().unwrap());
        let big = incoming_from("a@sender.example", data, &["b@plain.test"]);
        match engine.accept_message(big, &conn).await {
            StoreOutcome::Refused(r) => assert!(r.to_string().starts_with("452 4.3.1"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(engine.store().queue_all().unwrap().is_empty(), "nothing queued");
        assert!(engine.spool.list().unwrap().is_empty(), "nothing spooled");
        drop(engine);
    }

    #[tokio::test]
    async fn an_allow_entry_covers_only_its_own_recipient() {
        let dir = scratch("allow");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let entry = levee_types::list::ListEntry {
            kind: levee_types::list::ListKind::Allow,
            matcher: levee_types::list::Matcher::Sender("alice@sender.example".into()),
            scope: levee_types::list::ListScope::Recipient("a@strict.test".into()),
            unauthenticated: false,
        };
        engine.add_list_entry(&entry, "test", "test").unwrap();
        let msg = incoming(&["a@strict.test", "b@strict.test"]);
        let mut findings = signed_conn().findings;
        findings.push(levee_types::Finding::new("SPF_PASS", "spf=pass for sender.example"));
        let groups = engine.judge(&msg.envelope, Arc::new(msg.data.clone()), findings, None).await;
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].0, [addr("a@strict.test")]);
        assert_eq!(groups[0].1.action, Action::Accept);
        assert!(groups[0].1.findings.iter().any(|(f, _)| f.symbol == "ALLOW_LISTED"));
        assert_eq!(groups[1].0, [addr("b@strict.test")]);
        assert_eq!(groups[1].1.action, Action::Reject);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 12, finding 9 (build item 7): an allow entry for alice@auth.test let a forged
    /// message from that address through (DMARC reject, score 9.5). It now applies only
    /// when auth.test authenticated the message, unless the entry is marked
    /// `unauthenticated`.
    #[tokio::test]
    async fn a_sender_allow_entry_follows_authentication() {
        let dir = scratch("allow-auth");
        let engine = Engine::open(config(&dir, DOMAINS)).unwrap();
        let data = b"From: Alice <alice@auth.test>\r\nTo: bob@plain.test\r\nSubject: lunch\r\n\
            Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@auth.test>\r\n\r\n\
            See you at noon.\r\n"
            .to_vec();
        let msg = incoming_from("alice@auth.test", data, &["bob@plain.test"]);
        let f = |symbol: &str, detail: &str| levee_types::Finding::new(symbol, detail);
        let forged = vec![
            f("SPF_FAIL", "spf=fail for auth.test"),
            f("DKIM_NONE", "no DKIM-Signature"),
            f("DMARC_POLICY_REJECT", "auth.test: fail"),
            f("RDNS_NOT_CONFIRMED", "no forward match"),
        ];
        // Authenticated, yet scored high enough by content to be held without the entry.
        let with = |auth: levee_types::Finding| vec![auth, f("TEST_SIGN", "test")];
        let judge = |findings: Vec<levee_types::Finding>| {
            let engine = engine.clone();
            let msg = &msg;
            async move {
                let groups =
                    engine.judge(&msg.envelope, Arc::new(msg.data.clone()), findings, None).await;
                assert_eq!(groups.len(), 1, "{groups:?}");
                groups.into_iter().next().unwrap().1
            }
        };
        let has = |v: &levee_types::Verdict, symbol: &str| {
            v.findings.iter().any(|(x, w)| x.symbol == symbol && *w == 0.0)
        };
        let v = judge(forged.clone()).await;
        assert_ne!(v.action, Action::Accept, "judged normally before any entry: {v:?}");
        assert!(v.score >= 9.5, "{v:?}");

        let entry: levee_types::list::ListEntry = "allow sender alice@auth.test".parse().unwrap();
        let id = engine.add_list_entry(&entry, "test", "test").unwrap();
        let v = judge(forged.clone()).await;
        assert_ne!(v.action, Action::Accept, "a forged sender is not allowed: {v:?}");
        assert!(!has(&v, "ALLOW_LISTED") && has(&v, "ALLOW_UNAUTHENTICATED"), "{v:?}");
        for auth in [
            f("SPF_PASS", "spf=pass for auth.test"),
            f("DKIM_PASS", "d=auth.test s=sel"),
            f("DKIM_PASS", "d=other.test s=a; d=auth.test s=sel"),
        ] {
            let v = judge(with(auth.clone())).await;
            assert_eq!(v.action, Action::Accept, "{auth:?}: {v:?}");
            assert!(has(&v, "ALLOW_LISTED") && !has(&v, "ALLOW_UNAUTHENTICATED"), "{v:?}");
        }
        // A signature by some other domain does not vouch for auth.test.
        let v = judge(with(f("DKIM_PASS", "d=evil.test s=sel"))).await;
        assert_ne!(v.action, Action::Accept, "{v:?}");
        assert!(has(&v, "ALLOW_UNAUTHENTICATED"), "{v:?}");

        // Marked "also unauthenticated": applies as before, forged or not.
        assert!(engine.remove_list_entry(id).unwrap());
        let loose: levee_types::list::ListEntry =
            "allow sender alice@auth.test unauthenticated".parse().unwrap();
        engine.add_list_entry(&loose, "test", "test").unwrap();
        for findings in [forged, with(f("SPF_PASS", "spf=pass for auth.test"))] {
            let v = judge(findings).await;
            assert_eq!(v.action, Action::Accept, "{v:?}");
            assert!(has(&v, "ALLOW_LISTED") && !has(&v, "ALLOW_UNAUTHENTICATED"), "{v:?}");
        }
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 12, finding 11 (build item 9): `checks.auth = false` reaches the network
    /// checks, and MAIL FROM asks no SPF (the content stage then asks nothing either:
    /// levee-netcheck's `auth_off_asks_and_reports_nothing`).
    #[tokio::test]
    async fn checks_auth_off_asks_no_spf_at_mail() {
        let dir = scratch("auth-off");
        // A closed port: nothing here depends on an answer.
        let checks = |auth: bool| {
            format!("[checks]\nauth = {auth}\ndns_server = \"127.0.0.1:9\"\n{DOMAINS}")
        };
        let engine = Engine::open(config(&dir, &checks(true))).unwrap();
        assert!(engine.net().unwrap().config().auth);
        engine.reload(config(&dir, &checks(false)));
        assert!(!engine.net().unwrap().config().auth);
        let mut conn = Conn::new("198.51.100.7".parse().unwrap());
        conn.helo = "evil.example".into();
        let mail = Question::MailFrom { from: Some(addr("alice@auth.test")), size: None };
        assert_eq!(engine.decide(&mail, &mut conn).await, Decision::Accept);
        assert_eq!(conn.spf, None);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn spf_from_mail_refuses_at_rcpt_by_the_recipient_domains_policy() {
        use mail_auth::{SpfOutput, SpfResult};
        let dir = scratch("spf-rcpt");
        let text = DOMAINS.replace("TEST_SIGN = 5.0\n", "TEST_SIGN = 5.0\nSPF_FAIL = 2.0\n");
        let engine = Engine::open(config(&dir, &text)).unwrap();
        let mut conn = Conn::new("192.0.2.7".parse().unwrap());
        conn.findings.push(levee_types::Finding::new("RDNS_NONE", "no PTR"));
        let ip = conn.ip;
        let spf = |result| levee_netcheck::MailSpf {
            ip,
            helo: "client.example".into(),
            mail_from: "alice@sender.example".into(),
            output: Some(SpfOutput::new("sender.example".into()).with_result(result)),
        };
        conn.spf = Some(spf(SpfResult::Fail));
        // RDNS_NONE 1.5 + SPF_FAIL 2.0 = 3.5: under every reject_at here (15, and
        // strict.test's 4.5), so the message may come and be judged whole.
        let rcpt = |to: &str| Question::RcptTo { to: addr(to) };
        assert_eq!(engine.decide(&rcpt("a@plain.test"), &mut conn).await, Decision::Accept);
        assert_eq!(engine.decide(&rcpt("a@strict.test"), &mut conn).await, Decision::Accept);
        // A domain whose policy weighs SPF_FAIL high enough refuses at RCPT, naming SPF.
        let text = format!("{DOMAINS}[[domain]]\nname = \"spf.test\"\ndownstream = \"127.0.0.1:9\"\n[domain.policy.weights]\nSPF_FAIL = 20.0\n")
            .replace("[policy.weights]\nTEST_SIGN = 5.0\n", "")
            + "[policy.weights]\nTEST_SIGN = 5.0\n";
        engine.reload(config(&dir, &text));
        match engine.decide(&rcpt("a@spf.test"), &mut conn).await {
            Decision::Reject(r) => {
                assert_eq!((r.code, r.enhanced.map(|e| (e.1, e.2))), (550, Some((7, 23))), "{r}");
                let text = r.to_string();
                assert!(text.contains("SPF fail") && text.contains("sender.example"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(engine.decide(&rcpt("a@plain.test"), &mut conn).await, Decision::Accept);
        // A pass from the same client is not refused; nor is a timeout (zero weight).
        conn.spf = Some(spf(SpfResult::Pass));
        assert_eq!(engine.decide(&rcpt("a@spf.test"), &mut conn).await, Decision::Accept);
        conn.spf = Some(levee_netcheck::MailSpf { output: None, ..spf(SpfResult::Pass) });
        assert_eq!(engine.decide(&rcpt("a@spf.test"), &mut conn).await, Decision::Accept);
        // The recipient's allow list wins over the early verdict.
        conn.spf = Some(spf(SpfResult::Fail));
        let entry = levee_types::list::ListEntry {
            kind: levee_types::list::ListKind::Allow,
            matcher: levee_types::list::Matcher::Sender("alice@sender.example".into()),
            scope: levee_types::list::ListScope::Recipient("b@spf.test".into()),
            unauthenticated: false,
        };
        conn.sender = Some("alice@sender.example".into());
        engine.add_list_entry(&entry, "test", "test").unwrap();
        assert_eq!(engine.decide(&rcpt("b@spf.test"), &mut conn).await, Decision::Accept);
        assert!(matches!(engine.decide(&rcpt("c@spf.test"), &mut conn).await, Decision::Reject(_)));
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
