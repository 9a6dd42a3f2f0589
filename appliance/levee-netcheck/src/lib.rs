//! Levee's network-facing checks: DNS block/allow lists, forward-confirmed rDNS, GeoIP
//! country, URI blocklists, and SPF/DKIM/DMARC/ARC.
//!
//! Every check looks things up only through an injected [`Dns`] handle (and [`GeoIp`]
//! reader), so each is testable alone against a loopback DNS server. Checks emit
//! [`Finding`]s and never scores; the scorer in levee-filter weighs them. A check that
//! cannot finish says so with a `<CHECK>_TIMEOUT` or `<CHECK>_FAILED` finding, never by
//! silence, and a list's "you are blocked" answer is `<LIST>_BLOCKED` plus a
//! [`HealthWarning`], never a listing.
//!
//! [`NetChecks`] bundles them by SMTP stage, each stage under one deadline:
//! [`NetChecks::connect_stage`] (DNSBL, rDNS, country), [`NetChecks::mail_stage`] (SPF,
//! kept as a [`MailSpf`] for later), [`NetChecks::content_stage`] (DKIM, DMARC, ARC, URI
//! lists, and the Authentication-Results header, with the SPF result from MAIL).

mod error;

pub mod auth;
pub mod dns;
pub mod dnsbl;
pub mod geoip;
pub mod rdns;
pub mod uribl;
pub mod urls;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
pub use levee_types::Finding;
use tokio::time::{timeout_at, Instant};

pub use auth::{Auth, AuthReport, MailSpf};
pub use dns::{Dns, Upstream};
pub use dnsbl::{DnsList, HealthWarning};
pub use error::NetCheckError;
pub use geoip::GeoIp;
pub use urls::UriHost;

/// What the network checks are told (the config crate maps TOML onto this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// This gateway's name: the authserv-id of Authentication-Results, and SPF's `%{r}`.
    pub hostname: String,
    /// IP lists queried at connect (block lists and allow lists alike).
    pub dnsbl: Vec<DnsList>,
    /// Domain lists queried for link hosts in the body.
    pub uribl: Vec<DnsList>,
    /// Distinct link hosts looked up per message; the rest are ignored.
    pub max_uri_hosts: usize,
    /// Whether to check forward-confirmed reverse DNS at connect.
    pub rdns: bool,
    /// Whether to check SPF, DKIM, DMARC and ARC at all. Off, they ask nothing and say
    /// nothing: no findings and no Authentication-Results.
    pub auth: bool,
    pub connect_timeout: Duration,
    pub mail_timeout: Duration,
    pub content_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            hostname: "localhost".into(),
            dnsbl: Vec::new(),
            uribl: Vec::new(),
            max_uri_hosts: 20,
            rdns: true,
            auth: true,
            connect_timeout: Duration::from_secs(8),
            mail_timeout: Duration::from_secs(10),
            content_timeout: Duration::from_secs(20),
        }
    }
}

/// What the connect-time checks saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectReport {
    pub findings: Vec<Finding>,
    pub warnings: Vec<HealthWarning>,
    /// The forward-confirmed PTR name of the client, for the Received header.
    pub confirmed_name: Option<String>,
}

/// What the content-time checks saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentReport {
    pub findings: Vec<Finding>,
    pub warnings: Vec<HealthWarning>,
    /// The Authentication-Results header value (see [`AuthReport::authentication_results`]);
    /// empty when the authentication checks are off.
    pub authentication_results: String,
}

/// All network checks, configured once and shared by every session.
#[derive(Debug)]
pub struct NetChecks {
    dns: Dns,
    config: NetConfig,
    geoip: Option<GeoIp>,
    auth: Auth,
}

impl NetChecks {
    pub fn new(dns: Dns, config: NetConfig, geoip: Option<GeoIp>) -> Self {
        let auth = Auth::new(&dns, &config.hostname);
        NetChecks { dns, config, geoip, auth }
    }

    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// DNSBL/DNSWL, FCrDNS and country of the connecting `ip`, concurrently, within
    /// `connect_timeout`. Whether to run it for trusted networks is the caller's choice.
    pub async fn connect_stage(&self, ip: IpAddr) -> ConnectReport {
        let deadline = Instant::now() + self.config.connect_timeout;
        let lists =
            per_list(&self.config.dnsbl, deadline, |list| dnsbl::check_ip(&self.dns, ip, list));
        let rdns = async {
            if self.config.rdns {
                Some(timeout_at(deadline, rdns::check(&self.dns, ip)).await)
            } else {
                None
            }
        };
        let ((mut findings, warnings), rdns) = tokio::join!(lists, rdns);
        let mut confirmed_name = None;
        match rdns {
            Some(Ok((rdns_findings, name))) => {
                findings.extend(rdns_findings);
                confirmed_name = name;
            }
            Some(Err(_)) => {
                findings.push(Finding::new("RDNS_TIMEOUT", "connect stage deadline passed"))
            }
            None => {}
        }
        if let Some(geoip) = &self.geoip {
            findings.extend(geoip.check(ip));
        }
        ConnectReport { findings, warnings, confirmed_name }
    }

    /// SPF at MAIL FROM (`mail_from` without angle brackets; empty for the null sender),
    /// within `mail_timeout`; `None` when the authentication checks are off. Keep the
    /// result for [`NetChecks::content_stage`].
    pub async fn mail_stage(&self, ip: IpAddr, helo: &str, mail_from: &str) -> Option<MailSpf> {
        if !self.config.auth {
            return None;
        }
        let deadline = Instant::now() + self.config.mail_timeout;
        Some(self.auth.spf_at_mail(ip, helo, mail_from, deadline).await)
    }

    /// DKIM, DMARC, ARC and URI lists for the whole `message`, within `content_timeout`,
    /// and SPF: `spf` from [`NetChecks::mail_stage`] of this transaction (not asked
    /// again), or evaluated here when there is none. With the authentication checks off,
    /// only the URI lists. The links are read from `message` here; a caller that parses the
    /// message anyway asks [`NetChecks::auth_stage`] and [`NetChecks::uri_stage`] instead.
    pub async fn content_stage(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: Option<&MailSpf>,
        message: &[u8],
    ) -> ContentReport {
        let deadline = Instant::now() + self.config.content_timeout;
        let hosts = match self.uri_hosts_wanted() {
            0 => Vec::new(),
            max => urls::extract(message, max),
        };
        let uri = self.uri_lists(&hosts, deadline);
        let auth = self.auth_lists(ip, helo, mail_from, spf, message, deadline);
        let ((uri_findings, warnings), mut report) = tokio::join!(uri, auth);
        report.findings.extend(uri_findings);
        report.warnings = warnings;
        report
    }

    /// [`NetChecks::content_stage`] without the URI lists: DKIM, DMARC, ARC and SPF.
    pub async fn auth_stage(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: Option<&MailSpf>,
        message: &[u8],
    ) -> ContentReport {
        let deadline = Instant::now() + self.config.content_timeout;
        self.auth_lists(ip, helo, mail_from, spf, message, deadline).await
    }

    /// The URI lists for `hosts` (the message's links, as `levee-content` reads them; at
    /// most [`NetChecks::uri_hosts_wanted`] are asked about), within its own
    /// `content_timeout`.
    pub async fn uri_stage(&self, hosts: &[UriHost]) -> (Vec<Finding>, Vec<HealthWarning>) {
        let hosts = &hosts[..hosts.len().min(self.uri_hosts_wanted())];
        self.uri_lists(hosts, Instant::now() + self.config.content_timeout).await
    }

    /// How many link hosts the URI lists want: none when no list is configured.
    pub fn uri_hosts_wanted(&self) -> usize {
        if self.config.uribl.is_empty() {
            0
        } else {
            self.config.max_uri_hosts
        }
    }

    async fn uri_lists(
        &self,
        hosts: &[UriHost],
        deadline: Instant,
    ) -> (Vec<Finding>, Vec<HealthWarning>) {
        per_list(&self.config.uribl, deadline, |list| uribl::check_hosts(&self.dns, hosts, list))
            .await
    }

    async fn auth_lists(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: Option<&MailSpf>,
        message: &[u8],
        deadline: Instant,
    ) -> ContentReport {
        let auth = if self.config.auth {
            self.auth.verify(ip, helo, mail_from, spf, message, deadline).await
        } else {
            AuthReport::default()
        };
        ContentReport {
            findings: auth.findings,
            warnings: Vec::new(),
            authentication_results: auth.authentication_results,
        }
    }
}

/// Runs `check` for each list on its own under `deadline`, so one slow list costs only
/// its own `<LIST>_TIMEOUT` and the others' answers are kept.
async fn per_list<'a, F, Fut>(
    lists: &'a [DnsList],
    deadline: Instant,
    check: F,
) -> (Vec<Finding>, Vec<HealthWarning>)
where
    F: Fn(&'a [DnsList]) -> Fut,
    Fut: std::future::Future<Output = (Vec<Finding>, Vec<HealthWarning>)>,
{
    let runs = lists.iter().enumerate().map(|(i, list)| {
        let one = &lists[i..=i];
        let fut = check(one);
        async move { (list, timeout_at(deadline, fut).await) }
    });
    let mut findings = Vec::new();
    let mut warnings = Vec::new();
    for (list, result) in join_all(runs).await {
        match result {
            Ok((f, w)) => {
                findings.extend(f);
                warnings.extend(w);
            }
            Err(_) => findings.push(Finding::new(
                format!("{}_TIMEOUT", list.symbol),
                format!("{}: stage deadline passed", list.zone),
            )),
        }
    }
    (findings, warnings)
}

/// One finding per symbol, distinct details joined with "; ": the scorer adds every
/// finding, and one cause seen many times must weigh once.
pub(crate) fn merge_by_symbol(findings: Vec<Finding>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::with_capacity(findings.len());
    for f in findings {
        match out.iter_mut().find(|o| o.symbol == f.symbol) {
            Some(o) => {
                if !o.detail.split("; ").any(|d| d == f.detail) {
                    o.detail.push_str("; ");
                    o.detail.push_str(&f.detail);
                }
            }
            None => out.push(f),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_order_and_distinct_details() {
        let merged = merge_by_symbol(vec![
            Finding::new("A", "x"),
            Finding::new("B", "y"),
            Finding::new("A", "z"),
            Finding::new("A", "x"),
        ]);
        assert_eq!(merged, vec![Finding::new("A", "x; z"), Finding::new("B", "y")]);
    }
}
