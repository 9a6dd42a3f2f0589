//! Levee's configuration: one TOML file parsed into validated, typed settings.
//!
//! Every value is checked while it is deserialised (custom `Deserialize` impls return
//! errors through serde), so the TOML parser attaches the span of the offending value
//! and [`ConfigError`] can name the line. Unknown keys are refused the same way.

mod types;

pub use types::{
    CertPin, Downstream, DownstreamHost, HopLimit, HostName, Listen, Percent, Prefix,
    RetentionDays, Seconds, TlsPolicy,
};

use levee_types::Domain;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: String, line: usize, column: usize, message: String },
}

/// The whole validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hostname: HostName,
    pub data_dir: PathBuf,
    pub smtp: Smtp,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default, rename = "domain")]
    pub domains: Vec<DomainConfig>,
    #[serde(default)]
    pub console: Option<Console>,
    #[serde(default)]
    pub gate: Gate,
    #[serde(default)]
    pub supervisor: Supervisor,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub checks: Checks,
    #[serde(default)]
    pub learning: Learning,
    #[serde(default)]
    pub rules: Rules,
    #[serde(default)]
    pub log: Log,
}

/// `[log]`: the message log the console shows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Days a message-log record is kept; housekeeping removes older ones hourly.
    /// 1 to 3650, default 30.
    #[serde(default)]
    pub retention_days: RetentionDays,
}

/// `[rules]`: rule files in SpamAssassin's language (`levee_sarules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Load SpamAssassin-language rules (default true).
    #[serde(default = "defaults::yes")]
    pub spamassassin: bool,
    /// Directories read in order, later ones overriding earlier ones' scores. Default: the
    /// newest set `sa-update` wrote under `/var/lib/spamassassin`, else the `spamassassin`
    /// package's stock set in `/usr/share/spamassassin`; then local rules in
    /// `<data_dir>/rules` when it holds `.cf` files (the console's rules upload writes it).
    /// Named here, every directory must exist.
    #[serde(default)]
    pub dirs: Option<Vec<PathBuf>>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { spamassassin: true, dirs: None }
    }
}

/// `[learning]`: how fast votes and autolearn may move the global model (safe learning,
/// `levee_filter::votes`; a key left out keeps the built-in default, which lives beside the
/// logic), and the report addresses users forward missed spam (or wrongly held ham) to, as an
/// attachment. Only those two exact addresses are accepted for the host name itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learning {
    /// Learn strong-evidence mail automatically (default true).
    pub autolearn: Option<bool>,
    /// Messages one user's / one admin's votes may queue for the global model per day.
    pub user_global_per_day: Option<u32>,
    pub admin_global_per_day: Option<u32>,
    /// Messages applied to the global model per hour and per day.
    pub apply_per_hour: Option<u32>,
    pub apply_per_day: Option<u32>,
    /// How far one class may run ahead of the other in what is applied / autolearned.
    pub max_lead: Option<u32>,
    pub auto_max_lead: Option<u32>,
    /// Autolearned messages per class per hour and per day.
    pub auto_per_hour: Option<u32>,
    pub auto_per_day: Option<u32>,
    /// Validation margins on the held-back sample, in percentage points.
    pub max_fp_rise: Option<f64>,
    pub max_catch_drop: Option<f64>,
    /// The most one user's / admin's vote may move its message's log-odds.
    pub user_step: Option<f64>,
    pub admin_step: Option<f64>,
    /// `false`: no report addresses (they are refused like any other foreign recipient).
    #[serde(default = "defaults::yes")]
    pub reports: bool,
    /// Default `spam@<hostname>`.
    #[serde(default)]
    pub report_spam: Option<Spanned<String>>,
    /// Default `ham@<hostname>`.
    #[serde(default)]
    pub report_ham: Option<Spanned<String>>,
}

impl Default for Learning {
    fn default() -> Self {
        Learning {
            autolearn: None,
            user_global_per_day: None,
            admin_global_per_day: None,
            apply_per_hour: None,
            apply_per_day: None,
            max_lead: None,
            auto_max_lead: None,
            auto_per_hour: None,
            auto_per_day: None,
            max_fp_rise: None,
            max_catch_drop: None,
            user_step: None,
            admin_step: None,
            reports: true,
            report_spam: None,
            report_ham: None,
        }
    }
}

impl Learning {
    fn check(&self) -> Result<(), String> {
        let margins = [("max_fp_rise", self.max_fp_rise), ("max_catch_drop", self.max_catch_drop)];
        for (name, v) in margins {
            if v.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                return Err(format!("learning.{name} must be between 0 and 100 points"));
            }
        }
        for (name, v) in [("user_step", self.user_step), ("admin_step", self.admin_step)] {
            if v.is_some_and(|v| !(0.0..=2.0).contains(&v)) {
                return Err(format!("learning.{name} must be between 0 and 2 (log-odds)"));
            }
        }
        if let (Some(h), Some(d)) = (self.apply_per_hour, self.apply_per_day) {
            if h > d {
                return Err("learning.apply_per_hour must not exceed apply_per_day".into());
            }
        }
        Ok(())
    }
}

/// The network checks: DNS lists, reverse DNS, SPF/DKIM/DMARC/ARC, country.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// The recursive resolver to ask; empty = the system's (/etc/resolv.conf).
    /// Public DNS lists refuse queries from big public resolvers: use your own.
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
    #[serde(default = "defaults::dns_timeout_ms")]
    pub dns_timeout_ms: u64,
    #[serde(default = "defaults::yes")]
    pub rdns: bool,
    /// SPF, DKIM, DMARC and ARC on every message, and an Authentication-Results header.
    /// Off, none of them asks DNS or adds a finding; sender allow entries then apply only
    /// when marked `unauthenticated`, and reports are taken only from a domain's downstream.
    #[serde(default = "defaults::yes")]
    pub auth: bool,
    /// A MaxMind-format country database; findings `COUNTRY_XX` (weight them in
    /// `[policy.weights]`, or block countries with list entries).
    #[serde(default)]
    pub geoip_db: Option<PathBuf>,
    /// IP block and allow lists asked at connect.
    #[serde(default)]
    pub dnsbl: Vec<DnsListConfig>,
    /// Domain lists asked for the links in a message.
    #[serde(default)]
    pub uribl: Vec<DnsListConfig>,
    /// Connection-stage score at or above which a client is refused before the
    /// banner (and banned in the gate).
    #[serde(default = "defaults::connect_reject_at")]
    pub connect_reject_at: f64,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            dns_server: None,
            dns_timeout_ms: defaults::dns_timeout_ms(),
            rdns: true,
            auth: true,
            geoip_db: None,
            dnsbl: Vec::new(),
            uribl: Vec::new(),
            connect_reject_at: defaults::connect_reject_at(),
        }
    }
}

/// One DNS list: `zone`, the `symbol` its findings carry, and optionally a symbol
/// suffix per return code (`codes = { "127.0.0.2" = "SBL" }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsListConfig {
    pub zone: HostName,
    pub symbol: Symbol,
    /// The weight of a listing (every return code), unless `[policy.weights]` names
    /// the symbol. Negative for allow lists.
    #[serde(default = "defaults::list_weight")]
    pub weight: f64,
    #[serde(default)]
    pub codes: std::collections::BTreeMap<std::net::Ipv4Addr, Symbol>,
}

/// A finding symbol: upper-case letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Symbol(pub String);

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(serde::de::Error::custom(format!(
                "bad symbol {s:?}: use upper-case letters, digits and '_'"
            )));
        }
        Ok(Symbol(s))
    }
}

/// How findings become verdicts. Weights override the built-in table symbol by
/// symbol; thresholds are scores at or above which the action applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "defaults::tag_at")]
    pub tag_at: f64,
    #[serde(default = "defaults::quarantine_at")]
    pub quarantine_at: f64,
    #[serde(default = "defaults::reject_at")]
    pub reject_at: f64,
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, f64>,
    /// Days a quarantined message is kept before it expires.
    #[serde(default = "defaults::quarantine_days")]
    pub quarantine_days: u64,
}

impl Policy {
    /// This policy with a domain's overrides applied: thresholds replaced where
    /// given, weights merged over ours (the domain's win).
    pub fn merged(&self, over: &DomainPolicy) -> Policy {
        let mut weights = self.weights.clone();
        weights.extend(over.weights.iter().map(|(k, v)| (k.clone(), *v)));
        Policy {
            tag_at: over.tag_at.unwrap_or(self.tag_at),
            quarantine_at: over.quarantine_at.unwrap_or(self.quarantine_at),
            reject_at: over.reject_at.unwrap_or(self.reject_at),
            weights,
            quarantine_days: self.quarantine_days,
        }
    }

    /// The ordering and finiteness rules every effective policy must meet.
    fn check(&self) -> Result<(), String> {
        if !(self.tag_at <= self.quarantine_at && self.quarantine_at <= self.reject_at) {
            return Err(format!(
                "policy thresholds must satisfy tag_at <= quarantine_at <= reject_at \
                 (here {} <= {} <= {})",
                self.tag_at, self.quarantine_at, self.reject_at
            ));
        }
        if let Some((symbol, _)) = self.weights.iter().find(|(_, w)| !w.is_finite()) {
            return Err(format!("policy weight {symbol} must be a finite number"));
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tag_at: defaults::tag_at(),
            quarantine_at: defaults::quarantine_at(),
            reject_at: defaults::reject_at(),
            weights: Default::default(),
            quarantine_days: defaults::quarantine_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub listen: Vec<Listen>,
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: u64,
    #[serde(default = "defaults::max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    #[serde(default = "defaults::max_errors")]
    pub max_errors: u32,
    /// Silence from the client after which it gets `421 4.4.2` and is closed.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: Seconds,
    /// A command line, once its first byte has arrived, must be complete within this;
    /// the idle timer alone would let a client drip one byte at a time forever.
    #[serde(default = "defaults::smtp_command_timeout_secs")]
    pub command_timeout_secs: Seconds,
    /// The whole message, from the 354 after DATA (or the first BDAT) to its end.
    #[serde(default = "defaults::smtp_data_timeout_secs")]
    pub data_timeout_secs: Seconds,
    /// The whole connection, whatever it is doing (a message under way is dropped):
    /// the most one client can hold a slot. At least `data_timeout_secs`.
    #[serde(default = "defaults::session_timeout_secs")]
    pub session_timeout_secs: Seconds,
    /// Once more than this share of `max_connections` is in use, new sessions get the
    /// `stress_*` timeouts (or the normal ones, if shorter) and no error delays
    /// (Postfix's stress mode): slots go to clients that talk, not to ones that idle.
    #[serde(default = "defaults::stress_at_percent")]
    pub stress_at_percent: Percent,
    #[serde(default = "defaults::stress_idle_timeout_secs")]
    pub stress_idle_timeout_secs: Seconds,
    #[serde(default = "defaults::stress_command_timeout_secs")]
    pub stress_command_timeout_secs: Seconds,
    #[serde(default = "defaults::stress_session_timeout_secs")]
    pub stress_session_timeout_secs: Seconds,
    /// Error replies after which each further one is delayed, by 1 s doubling up to
    /// `error_delay_max_secs` (Postfix's `smtpd_soft_error_limit`). At `max_errors` or
    /// more there are no delays.
    #[serde(default = "defaults::soft_error_limit")]
    pub soft_error_limit: u32,
    #[serde(default = "defaults::error_delay_max_secs")]
    pub error_delay_max_secs: Seconds,
    /// The TLS handshake after STARTTLS; a client that stalls in it cannot be sent a
    /// reply, so it is closed.
    #[serde(default = "defaults::tls_handshake_timeout_secs")]
    pub tls_handshake_timeout_secs: Seconds,
    /// Each write to the client (a client that never reads holds its replies back).
    #[serde(default = "defaults::write_timeout_secs")]
    pub write_timeout_secs: Seconds,
    #[serde(default = "defaults::min_data_rate")]
    pub min_data_rate: u64,
    #[serde(default = "defaults::max_command_line")]
    pub max_command_line: usize,
    #[serde(default = "defaults::max_data_line")]
    pub max_data_line: usize,
    #[serde(default = "defaults::min_free_bytes")]
    pub min_free_bytes: u64,
    /// A message with more `Received:` headers than this is a mail loop: `554 5.4.0` at
    /// the end of DATA, and nothing is stored (Postfix's `hopcount_limit`).
    #[serde(default = "defaults::max_received_headers")]
    pub max_received_headers: HopLimit,
    /// How long clients other than this host wait for the banner; one that talks
    /// first is a bot and is refused (postscreen's pregreet test). 0 turns it off.
    #[serde(default = "defaults::greet_pause_ms")]
    pub greet_pause_ms: u64,
    #[serde(default = "defaults::yes")]
    pub tls: bool,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    #[serde(default = "defaults::retry_first_secs")]
    pub retry_first_secs: u64,
    #[serde(default = "defaults::retry_max_interval_secs")]
    pub retry_max_interval_secs: u64,
    #[serde(default = "defaults::max_lifetime_secs")]
    pub max_lifetime_secs: u64,
    /// The TCP connect to the next hop.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: Seconds,
    /// Each command and its whole reply (banner, EHLO, STARTTLS and the TLS handshake,
    /// MAIL, RCPT, DATA, RSET).
    #[serde(default = "defaults::command_timeout_secs")]
    pub command_timeout_secs: Seconds,
    /// Sending the message body, and then waiting for the reply to its final dot, each
    /// (RFC 5321 4.5.3.2.6 asks a client to wait 10 minutes for that reply).
    #[serde(default = "defaults::delivery_data_timeout_secs")]
    pub data_timeout_secs: Seconds,
    #[serde(default = "defaults::delivery_concurrency")]
    pub concurrency: usize,
    /// After a next hop could not be reached at all, how long other messages for it are
    /// deferred at once instead of each waiting out its own connect timeout.
    #[serde(default = "defaults::dead_destination_secs")]
    pub dead_destination_secs: Seconds,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            retry_first_secs: defaults::retry_first_secs(),
            retry_max_interval_secs: defaults::retry_max_interval_secs(),
            max_lifetime_secs: defaults::max_lifetime_secs(),
            connect_timeout_secs: defaults::connect_timeout_secs(),
            command_timeout_secs: defaults::command_timeout_secs(),
            data_timeout_secs: defaults::delivery_data_timeout_secs(),
            concurrency: defaults::delivery_concurrency(),
            dead_destination_secs: defaults::dead_destination_secs(),
        }
    }
}

impl Delivery {
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout_secs.duration()
    }
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout_secs.duration()
    }
    pub fn data_timeout(&self) -> Duration {
        self.data_timeout_secs.duration()
    }
}

/// One domain Levee accepts mail for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: Spanned<DomainName>,
    /// `None`: set-up is not complete, recipients get 451 until a downstream is set.
    #[serde(default)]
    pub downstream: Option<Downstream>,
    #[serde(default)]
    pub tls: TlsPolicy,
    /// With `tls = "verify"`: a PEM file of the CAs the downstream's certificate must chain
    /// to (default: the system's bundle).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// With `tls = "verify"`: the downstream's own certificate, pinned by its hash.
    #[serde(default)]
    pub tls_pin: Option<CertPin>,
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// `false`: filtering switched off pending set-up; recipients get 451.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// `[domain.policy]`: this domain's thresholds and weights where they differ
    /// from `[policy]`. (Not `Spanned`: toml cannot span a table that is only
    /// implied by `[domain.policy.weights]`; errors name the domain's `name` line.)
    #[serde(default)]
    pub policy: Option<DomainPolicy>,
}

/// A domain's policy overrides: any threshold, and weights merged over
/// `[policy.weights]` symbol by symbol. Absent values follow the global `[policy]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicy {
    #[serde(default)]
    pub tag_at: Option<f64>,
    #[serde(default)]
    pub quarantine_at: Option<f64>,
    #[serde(default)]
    pub reject_at: Option<f64>,
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, f64>,
}

impl DomainPolicy {
    /// Whether it changes nothing (an empty `[domain.policy]`).
    pub fn is_empty(&self) -> bool {
        self.tag_at.is_none()
            && self.quarantine_at.is_none()
            && self.reject_at.is_none()
            && self.weights.is_empty()
    }
}

impl DomainConfig {
    pub fn domain(&self) -> &Domain {
        &self.name.get_ref().0
    }

    /// Whether mail for this domain can be accepted now.
    pub fn ready(&self) -> bool {
        self.enabled && self.downstream.is_some()
    }
}

/// A domain name as written in `[[domain]] name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName(pub Domain);

impl<'de> Deserialize<'de> for DomainName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Domain::parse(&s)
            .map(DomainName)
            .map_err(|e| serde::de::Error::custom(format!("bad domain name {s:?}: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    #[serde(default = "defaults::console_listen")]
    pub listen: Vec<Listen>,
}

/// The appliance's own firewall.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    #[serde(default)]
    pub enabled: bool,
    /// Public SMTP ports opened in the gate (the relay may listen on another port behind a redirect).
    #[serde(default = "defaults::smtp_ports")]
    pub smtp_ports: Vec<u16>,
    /// Empty: SMTP from anywhere. Otherwise only these (e.g. the firewall that port-forwards).
    #[serde(default)]
    pub smtp_sources: Vec<Prefix>,
    #[serde(default = "defaults::console_ports")]
    pub console_ports: Vec<u16>,
    #[serde(default)]
    pub lan: Vec<Prefix>,
    #[serde(default)]
    pub ssh: bool,
    #[serde(default = "defaults::smtp_rate_per_minute")]
    pub smtp_rate_per_minute: u32,
    #[serde(default = "defaults::ban_timeout_secs")]
    pub ban_timeout_secs: u64,
    #[serde(default = "defaults::icmp_rate_per_second")]
    pub icmp_rate_per_second: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            enabled: false,
            smtp_ports: defaults::smtp_ports(),
            smtp_sources: Vec::new(),
            console_ports: defaults::console_ports(),
            lan: Vec::new(),
            ssh: false,
            smtp_rate_per_minute: defaults::smtp_rate_per_minute(),
            ban_timeout_secs: defaults::ban_timeout_secs(),
            icmp_rate_per_second: defaults::icmp_rate_per_second(),
        }
    }
}

/// How `levee supervise` runs the engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervisor {
    /// The unprivileged user the engine runs as; it owns `data_dir`.
    #[serde(default = "defaults::supervisor_user")]
    pub user: String,
    #[serde(default = "defaults::supervisor_group")]
    pub group: String,
    /// The longest pause between engine restarts (the pause doubles from one second).
    #[serde(default = "defaults::restart_max_secs")]
    pub restart_max_secs: u64,
    /// How long a stopping engine may take to finish its sessions before it is killed.
    #[serde(default = "defaults::stop_timeout_secs")]
    pub stop_timeout_secs: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            user: defaults::supervisor_user(),
            group: defaults::supervisor_group(),
            restart_max_secs: defaults::restart_max_secs(),
            stop_timeout_secs: defaults::stop_timeout_secs(),
        }
    }
}

mod defaults {
    use super::{HopLimit, Listen, Percent, Seconds};
    pub fn tag_at() -> f64 {
        4.0
    }
    pub fn quarantine_at() -> f64 {
        6.0
    }
    pub fn reject_at() -> f64 {
        15.0
    }
    pub fn quarantine_days() -> u64 {
        30
    }
    pub fn list_weight() -> f64 {
        6.0
    }
    pub fn greet_pause_ms() -> u64 {
        1000
    }
    pub fn dns_timeout_ms() -> u64 {
        2000
    }
    pub fn connect_reject_at() -> f64 {
        10.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_message_size() -> u64 {
        25 * 1024 * 1024
    }
    pub fn max_recipients() -> usize {
        100
    }
    pub fn max_connections() -> usize {
        500
    }
    pub fn max_connections_per_ip() -> usize {
        20
    }
    pub fn max_errors() -> u32 {
        10
    }
    pub fn idle_timeout_secs() -> Seconds {
        Seconds::new(300)
    }
    pub fn smtp_command_timeout_secs() -> Seconds {
        // A real client sends a command line in one packet; a minute covers a bad link.
        Seconds::new(60)
    }
    pub fn smtp_data_timeout_secs() -> Seconds {
        // 25 MB (the default size limit) at about 28 KB/s.
        Seconds::new(900)
    }
    pub fn session_timeout_secs() -> Seconds {
        // Twice the data timeout: a largest message at the slowest accepted pace, and as
        // long again for the commands and the messages around it.
        Seconds::new(1800)
    }
    pub fn stress_at_percent() -> Percent {
        Percent::new(80)
    }
    pub fn stress_idle_timeout_secs() -> Seconds {
        // Postfix's stress value for smtpd_timeout.
        Seconds::new(10)
    }
    pub fn stress_command_timeout_secs() -> Seconds {
        Seconds::new(10)
    }
    pub fn stress_session_timeout_secs() -> Seconds {
        // Ordinary mail, even a few MB, is through in well under five minutes.
        Seconds::new(300)
    }
    pub fn soft_error_limit() -> u32 {
        3
    }
    pub fn error_delay_max_secs() -> Seconds {
        Seconds::new(5)
    }
    pub fn tls_handshake_timeout_secs() -> Seconds {
        Seconds::new(10)
    }
    pub fn write_timeout_secs() -> Seconds {
        Seconds::new(60)
    }
    pub fn min_data_rate() -> u64 {
        // Bytes per second; slower than a 2400 baud modem is a tarpit, not a client.
        256
    }
    pub fn max_command_line() -> usize {
        2048
    }
    pub fn max_data_line() -> usize {
        // RFC 5321 says 1000; real mailers exceed it, and refusing them helps nobody.
        8192
    }
    pub fn min_free_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn max_received_headers() -> HopLimit {
        // Postfix's hopcount_limit.
        HopLimit::new(50)
    }
    pub fn retry_first_secs() -> u64 {
        60
    }
    pub fn retry_max_interval_secs() -> u64 {
        3600
    }
    pub fn max_lifetime_secs() -> u64 {
        5 * 24 * 3600
    }
    pub fn dead_destination_secs() -> Seconds {
        Seconds::new(60)
    }
    pub fn connect_timeout_secs() -> Seconds {
        Seconds::new(30)
    }
    pub fn command_timeout_secs() -> Seconds {
        Seconds::new(300)
    }
    pub fn delivery_data_timeout_secs() -> Seconds {
        Seconds::new(600)
    }
    pub fn delivery_concurrency() -> usize {
        32
    }
    pub fn console_listen() -> Vec<Listen> {
        vec!["127.0.0.1:8443".parse().expect("valid default")]
    }
    pub fn smtp_ports() -> Vec<u16> {
        vec![25]
    }
    pub fn console_ports() -> Vec<u16> {
        vec![443]
    }
    pub fn smtp_rate_per_minute() -> u32 {
        60
    }
    pub fn ban_timeout_secs() -> u64 {
        3600
    }
    pub fn icmp_rate_per_second() -> u32 {
        10
    }
    pub fn supervisor_user() -> String {
        "levee".into()
    }
    pub fn supervisor_group() -> String {
        "levee".into()
    }
    pub fn restart_max_secs() -> u64 {
        60
    }
    pub fn stop_timeout_secs() -> u64 {
        30
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid { path: origin.to_string(), line, column, message }
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            at(offset, e.message().to_string())
        })?;
        config.validate().map_err(|(offset, msg)| at(offset, msg))?;
        Ok(config)
    }

    /// Checks that span several values. Returns the byte offset to blame.
    fn validate(&self) -> Result<(), (usize, String)> {
        if self.smtp.listen.is_empty() {
            return Err((0, "smtp.listen must name at least one address".into()));
        }
        if self.smtp.max_recipients == 0 || self.smtp.max_connections == 0 {
            return Err((0, "smtp limits must be greater than zero".into()));
        }
        let smtp = &self.smtp;
        if smtp.session_timeout_secs < smtp.data_timeout_secs {
            return Err((
                0,
                format!(
                    "smtp.session_timeout_secs ({}) must be at least smtp.data_timeout_secs ({}): \
                     a message could never use its whole data deadline",
                    smtp.session_timeout_secs.get(),
                    smtp.data_timeout_secs.get()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.domains {
            if !seen.insert(d.domain().clone()) {
                return Err((
                    d.name.span().start,
                    format!("domain {} is listed twice", d.domain()),
                ));
            }
        }
        for d in &self.domains {
            if d.tls != TlsPolicy::Verify && (d.tls_ca.is_some() || d.tls_pin.is_some()) {
                return Err((
                    d.name.span().start,
                    format!("domain {}: tls_ca and tls_pin need tls = \"verify\"", d.domain()),
                ));
            }
        }
        self.policy.check().map_err(|m| (0, m))?;
        self.learning.check().map_err(|m| (0, m))?;
        // Each domain's thresholds are checked after merging: a domain may raise only
        // reject_at, say, and must still end up ordered with the global values.
        for d in &self.domains {
            if let Some(over) = &d.policy {
                self.policy.merged(over).check().map_err(|m| {
                    (d.name.span().start, format!("domain {} [domain.policy]: {m}", d.domain()))
                })?;
            }
        }
        let l = &self.learning;
        for a in [&l.report_spam, &l.report_ham].into_iter().flatten() {
            levee_types::Address::parse(a.get_ref(), false).map_err(|e| {
                (a.span().start, format!("bad report address {:?}: {e}", a.get_ref()))
            })?;
        }
        if let Some((spam, ham)) = self.report_addresses() {
            if spam == ham {
                let at =
                    l.report_ham.as_ref().or(l.report_spam.as_ref()).map_or(0, |a| a.span().start);
                return Err((
                    at,
                    "learning.report_spam and learning.report_ham must differ".into(),
                ));
            }
        }
        if self.smtp.tls_cert.is_some() != self.smtp.tls_key.is_some() {
            return Err((0, "smtp.tls_cert and smtp.tls_key go together".into()));
        }
        let sv = &self.supervisor;
        if sv.user.is_empty() || sv.group.is_empty() {
            return Err((0, "supervisor.user and supervisor.group must not be empty".into()));
        }
        if sv.restart_max_secs == 0 || sv.stop_timeout_secs == 0 {
            return Err((0, "supervisor timings must be at least one second".into()));
        }
        Ok(())
    }

    pub fn domain(&self, d: &Domain) -> Option<&DomainConfig> {
        self.domains.iter().find(|c| c.domain() == d)
    }

    /// The policy that applies to mail for `d`: `[policy]` with the domain's
    /// `[domain.policy]` merged over it (the global one for unknown domains).
    pub fn policy_for(&self, d: &Domain) -> Policy {
        match self.domain(d).and_then(|c| c.policy.as_ref()) {
            Some(over) => self.policy.merged(over),
            None => self.policy.clone(),
        }
    }

    /// The (spam, ham) report addresses, lower case; `None` when reports are off.
    pub fn report_addresses(&self) -> Option<(String, String)> {
        let l = &self.learning;
        if !l.reports {
            return None;
        }
        let pick = |a: &Option<Spanned<String>>, local: &str| match a {
            Some(a) => a.get_ref().to_ascii_lowercase(),
            None => format!("{local}@{}", self.hostname.0).to_ascii_lowercase(),
        };
        Some((pick(&l.report_spam, "spam"), pick(&l.report_ham, "ham")))
    }

    /// `Some(true)` for the spam report address, `Some(false)` for the ham one.
    pub fn report_kind(&self, rcpt: &str) -> Option<bool> {
        let (spam, ham) = self.report_addresses()?;
        let rcpt = rcpt.to_ascii_lowercase();
        if rcpt == spam {
            Some(true)
        } else if rcpt == ham {
            Some(false)
        } else {
            None
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    pub fn smtp_listen(&self) -> Vec<SocketAddr> {
        self.smtp.listen.iter().map(|l| l.0).collect()
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
