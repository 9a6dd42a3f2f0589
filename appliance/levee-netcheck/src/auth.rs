//! SPF, DKIM, DMARC and ARC through mail-auth, as findings plus one
//! Authentication-Results header value (RFC 8601).
//!
//! mail-auth is given the very resolver the other checks use (its `MessageAuthenticator`
//! is a newtype over hickory's), so it shares one cache and one upstream, and tests point
//! both at the same loopback server.

use std::net::IpAddr;

use levee_types::Finding;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, Error, MessageAuthenticator, SpfOutput, SpfResult,
};
use tokio::time::{timeout_at, Instant};

use crate::{merge_by_symbol, Dns};

/// SPF/DKIM/DMARC/ARC verifier bound to a resolver and to the name this gateway stamps
/// into Authentication-Results (its authserv-id).
pub struct Auth {
    authenticator: MessageAuthenticator,
    hostname: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("hostname", &self.hostname).finish_non_exhaustive()
    }
}

/// The outcome of the content-time checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthReport {
    pub findings: Vec<Finding>,
    /// The header *value* (`<hostname>; spf=...; dkim=...`), folded with CRLF TAB, without
    /// the `Authentication-Results:` name and without a final CRLF.
    pub authentication_results: String,
}

/// SPF as evaluated when MAIL FROM arrived. The relay keeps it on the transaction and
/// hands it back at the end of DATA, so DMARC and the Authentication-Results header use
/// this answer: SPF is asked once per transaction, and the verdict at RCPT and the one
/// at the end of DATA rest on the same result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailSpf {
    pub ip: IpAddr,
    pub helo: String,
    /// Without angle brackets; empty for the null sender (then HELO was checked).
    pub mail_from: String,
    /// `None`: it did not finish in time (`SPF_TIMEOUT`, `spf=temperror`).
    pub output: Option<SpfOutput>,
}

impl MailSpf {
    /// `SPF_<RESULT>`, or the zero-weight `SPF_TIMEOUT`.
    pub fn findings(&self) -> Vec<Finding> {
        match &self.output {
            Some(spf) => spf_findings(spf),
            None => vec![Finding::new("SPF_TIMEOUT", "spf did not finish in time")],
        }
    }

    /// The domain whose policy was checked (sender's, or HELO's for `<>`).
    pub fn domain(&self) -> &str {
        match &self.output {
            Some(spf) if !spf.domain().is_empty() => spf.domain(),
            _ if self.mail_from.is_empty() => &self.helo,
            _ => self.mail_from.rsplit_once('@').map_or(self.helo.as_str(), |(_, d)| d),
        }
    }

    /// Whether it answers for this transaction's identities.
    fn is_for(&self, ip: IpAddr, helo: &str, mail_from: &str) -> bool {
        self.ip == ip && self.helo == helo && self.mail_from.eq_ignore_ascii_case(mail_from)
    }
}

impl Auth {
    pub fn new(dns: &Dns, hostname: &str) -> Self {
        Auth {
            authenticator: MessageAuthenticator(dns.resolver().clone()),
            hostname: hostname.to_string(),
        }
    }

    /// SPF for the MAIL FROM identity, or for the HELO identity when the reverse path is
    /// null (RFC 7208 section 2.4).
    pub async fn spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutput {
        let params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.hostname)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.hostname, mail_from)
        };
        self.authenticator.verify_spf(params).await
    }

    /// SPF at MAIL FROM, bounded by `deadline` (a miss is kept as "timed out").
    pub async fn spf_at_mail(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        deadline: Instant,
    ) -> MailSpf {
        let output = timeout_at(deadline, self.spf(ip, helo, mail_from)).await.ok();
        MailSpf { ip, helo: helo.to_string(), mail_from: mail_from.to_string(), output }
    }

    /// DKIM, DMARC and ARC, each bounded by `deadline`, with SPF taken from `at_mail`
    /// (the MAIL FROM result for these identities) or, without one, evaluated here.
    /// A part that misses the deadline is a `<CHECK>_TIMEOUT` finding and a `temperror`
    /// in the header; the parts that finished are reported as they are.
    pub async fn verify(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        at_mail: Option<&MailSpf>,
        message: &[u8],
        deadline: Instant,
    ) -> AuthReport {
        let mut findings = Vec::new();
        let mut header = String::new();
        let parsed = AuthenticatedMessage::parse(message);
        let earlier = at_mail.filter(|s| s.is_for(ip, helo, mail_from));
        let spf_fut = async {
            match earlier {
                Some(s) => s.output.clone(),
                None => timeout_at(deadline, self.spf(ip, helo, mail_from)).await.ok(),
            }
        };
        let (spf, verified) = match &parsed {
            Some(parsed) => {
                let (spf, dkim, arc) = tokio::join!(
                    spf_fut,
                    timeout_at(deadline, self.authenticator.verify_dkim(parsed)),
                    timeout_at(deadline, self.authenticator.verify_arc(parsed)),
                );
                (spf, Some((parsed, dkim, arc)))
            }
            None => (spf_fut.await, None),
        };
        match &spf {
            Some(spf) => {
                findings.extend(spf_findings(spf));
                header.push_str(
                    &self.segment(|ar| ar.with_spf_mailfrom_result(spf, ip, mail_from, helo)),
                );
            }
            None => timed_out(&mut findings, &mut header, "spf", "SPF"),
        }
        let Some((parsed, dkim, arc)) = verified else {
            for (method, check) in [("dkim", "DKIM"), ("dmarc", "DMARC"), ("arc", "ARC")] {
                findings.push(Finding::new(
                    format!("{check}_FAILED"),
                    "message headers cannot be parsed",
                ));
                header.push_str(&format!(";\r\n\t{method}=permerror (unparsable message)"));
            }
            return self.report(findings, header);
        };
        let header_from = parsed.from.first().map(String::as_str).unwrap_or("");
        match &dkim {
            Ok(dkim) => {
                findings.extend(dkim_findings(dkim));
                if dkim.is_empty() {
                    header.push_str(";\r\n\tdkim=none");
                } else {
                    // Same reading as dkim_findings: a body-hash mismatch is a failure.
                    let segment = self.segment(|ar| ar.with_dkim_results(dkim, header_from));
                    header.push_str(&segment.replace(
                        "dkim=neutral (body hash did not verify)",
                        "dkim=fail (body hash did not verify)",
                    ));
                }
            }
            Err(_) => timed_out(&mut findings, &mut header, "dkim", "DKIM"),
        }

        let dmarc = match (&dkim, &spf) {
            (Ok(dkim), Some(spf)) => {
                let from_domain = if mail_from.is_empty() {
                    helo
                } else {
                    mail_from.rsplit_once('@').map_or(helo, |(_, d)| d)
                };
                let params = DmarcParameters::new(parsed, dkim, from_domain, spf);
                timeout_at(deadline, self.authenticator.verify_dmarc(params)).await.ok()
            }
            _ => None,
        };
        match &dmarc {
            Some(dmarc) => {
                findings.extend(dmarc_findings(dmarc));
                header.push_str(&self.segment(|ar| ar.with_dmarc_result(dmarc)));
            }
            None => timed_out(&mut findings, &mut header, "dmarc", "DMARC"),
        }

        match &arc {
            Ok(arc) => {
                findings.extend(arc_findings(arc));
                header.push_str(&self.segment(|ar| ar.with_arc_result(arc, ip)));
            }
            Err(_) => timed_out(&mut findings, &mut header, "arc", "ARC"),
        }
        self.report(findings, header)
    }

    fn report(&self, findings: Vec<Finding>, header: String) -> AuthReport {
        AuthReport {
            findings: merge_by_symbol(findings),
            authentication_results: format!("{}{header}", self.hostname),
        }
    }

    /// One `;\r\n\tmethod=result props` piece, formatted by mail-auth (it knows the
    /// property names and quoting) so pieces can be mixed with our timeout pieces.
    fn segment<'a>(
        &'a self,
        with: impl FnOnce(AuthenticationResults<'a>) -> AuthenticationResults<'a>,
    ) -> String {
        let full = with(AuthenticationResults::new(&self.hostname)).to_string();
        full.strip_prefix(self.hostname.as_str()).unwrap_or(&full).to_string()
    }
}

fn timed_out(findings: &mut Vec<Finding>, header: &mut String, method: &str, check: &str) {
    findings
        .push(Finding::new(format!("{check}_TIMEOUT"), format!("{method} did not finish in time")));
    header.push_str(&format!(";\r\n\t{method}=temperror (timeout)"));
}

/// `SPF_PASS`, `SPF_FAIL`, `SPF_SOFTFAIL`, `SPF_NEUTRAL`, `SPF_NONE`, `SPF_TEMPERROR`,
/// `SPF_PERMERROR`.
pub fn spf_findings(spf: &SpfOutput) -> Vec<Finding> {
    let symbol = match spf.result() {
        SpfResult::Pass => "SPF_PASS",
        SpfResult::Fail => "SPF_FAIL",
        SpfResult::SoftFail => "SPF_SOFTFAIL",
        SpfResult::Neutral => "SPF_NEUTRAL",
        SpfResult::TempError => "SPF_TEMPERROR",
        SpfResult::PermError => "SPF_PERMERROR",
        SpfResult::None => "SPF_NONE",
    };
    vec![Finding::new(symbol, format!("spf={} for {}", spf.result(), spf.domain()))]
}

/// One finding per result kind (`DKIM_PASS` with every passing d=/s= in the detail, ...);
/// `DKIM_NONE` for an unsigned message.
pub fn dkim_findings(dkim: &[DkimOutput<'_>]) -> Vec<Finding> {
    if dkim.is_empty() {
        return vec![Finding::new("DKIM_NONE", "no DKIM-Signature")];
    }
    let findings = dkim
        .iter()
        .map(|out| {
            let (symbol, why) = match out.result() {
                DkimResult::Pass => ("DKIM_PASS", String::new()),
                DkimResult::Fail(e) => ("DKIM_FAIL", format!(": {e}")),
                // mail-auth files a body-hash mismatch under neutral; for us a body changed
                // after signing is a failed signature (RFC 6376 section 6.3: PERMFAIL).
                DkimResult::Neutral(e @ Error::Dkim(DkimError::FailedBodyHashMatch)) => {
                    ("DKIM_FAIL", format!(": {e}"))
                }
                DkimResult::Neutral(e) => ("DKIM_NEUTRAL", format!(": {e}")),
                DkimResult::PermError(e) => ("DKIM_PERMERROR", format!(": {e}")),
                DkimResult::TempError(e) => ("DKIM_TEMPERROR", format!(": {e}")),
                DkimResult::None => ("DKIM_NONE", String::new()),
            };
            let who = out
                .signature()
                .map_or_else(|| "signature".to_string(), |s| format!("d={} s={}", s.d, s.s));
            Finding::new(symbol, format!("{who}{why}"))
        })
        .collect();
    merge_by_symbol(findings)
}

/// `DMARC_PASS`; on failure the policy the domain asks for (`DMARC_POLICY_REJECT`,
/// `DMARC_POLICY_QUARANTINE`, `DMARC_POLICY_NONE`) — one symbol, so config weighs the
/// failure by what its owner wants; `DMARC_NONE` without a record; `DMARC_TEMPERROR`,
/// `DMARC_PERMERROR`.
pub fn dmarc_findings(dmarc: &DmarcOutput) -> Vec<Finding> {
    let domain = dmarc.domain();
    let (symbol, why) = match dmarc.result() {
        DmarcResult::Pass => ("DMARC_PASS", "aligned".to_string()),
        DmarcResult::None => ("DMARC_NONE", "no DMARC record".to_string()),
        DmarcResult::TempError(e) => ("DMARC_TEMPERROR", e.to_string()),
        DmarcResult::PermError(e) => ("DMARC_PERMERROR", e.to_string()),
        DmarcResult::Fail(e) => {
            let symbol = match dmarc.policy() {
                Policy::Reject => "DMARC_POLICY_REJECT",
                Policy::Quarantine => "DMARC_POLICY_QUARANTINE",
                Policy::None | Policy::Unspecified => "DMARC_POLICY_NONE",
            };
            (symbol, format!("fail: {e}"))
        }
    };
    let domain = if domain.is_empty() { "(no From domain)" } else { domain };
    vec![Finding::new(symbol, format!("{domain}: {why}"))]
}

/// `ARC_PASS`, `ARC_FAIL`, `ARC_NONE` (no ARC set), `ARC_PERMERROR`, `ARC_TEMPERROR`.
pub fn arc_findings(arc: &ArcOutput<'_>) -> Vec<Finding> {
    let (symbol, why) = match arc.result() {
        DkimResult::Pass => ("ARC_PASS", format!("{} ARC set(s) verified", arc.sets().len())),
        DkimResult::None => ("ARC_NONE", "no ARC headers".to_string()),
        DkimResult::Fail(e) | DkimResult::Neutral(e) => ("ARC_FAIL", e.to_string()),
        DkimResult::PermError(e) => ("ARC_PERMERROR", e.to_string()),
        DkimResult::TempError(e) => ("ARC_TEMPERROR", e.to_string()),
    };
    vec![Finding::new(symbol, why)]
}
