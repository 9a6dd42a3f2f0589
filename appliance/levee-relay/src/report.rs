//! The report addresses: users forward spam that got through (or ham that was held) as
//! an attachment to `spam@` / `ham@` the appliance, and each attached message is learned
//! as that user's vote. A report is consumed, never delivered; it counts only from a user
//! of a configured domain whose mail is authenticated (SPF or DKIM for that domain, or
//! DMARC) or that comes from the domain's own downstream server.

use crate::{Conn, Engine};
use levee_config::{Config, DownstreamHost};
use levee_smtp::Incoming;
use levee_types::{Domain, Finding, Reply};
use std::net::IpAddr;
use tracing::{error, info};

/// Attached messages learned from one report at most; a report is one message's size anyway.
const MAX_ATTACHED: usize = 100;

impl Engine {
    /// Takes a message sent to a report address (`spam`: the spam one) and answers it.
    pub(crate) async fn take_report(&self, incoming: Incoming, conn: &Conn, spam: bool) -> Reply {
        let Incoming { envelope, data } = incoming;
        let config = self.config();
        let mail_from = envelope.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default();
        let mut findings = Vec::new();
        if let (Some(net), false) = (self.net(), conn.trusted) {
            let report = net
                .content_stage(
                    envelope.client_ip,
                    &envelope.helo,
                    &mail_from,
                    conn.spf.as_ref(),
                    &data,
                )
                .await;
            findings = report.findings;
        }
        let kind = if spam { "spam" } else { "ham" };
        let from_header = from_header(&data);
        let reporter = match authorise(
            &config,
            envelope.client_ip,
            &mail_from,
            from_header.as_deref(),
            &findings,
        ) {
            Ok(r) => r,
            Err(why) => {
                info!(client = %envelope.client_ip, from = %mail_from, header_from = from_header.as_deref().unwrap_or(""), kind, why, "report refused");
                return Reply::with(550, 7, 1, format!("report refused: {why}"));
            }
        };
        let attached = attached_messages(&data);
        if attached.is_empty() {
            info!(client = %envelope.client_ip, reporter, kind, "report without an attached message");
            return Reply::with(
                550,
                6,
                0,
                "report refused: no message attached; forward the message as an attachment (message/rfc822)",
            );
        }
        let mut learned = 0usize;
        for m in &attached {
            if let Err(e) = self.learn_vote(&reporter, m, spam).await {
                error!(reporter, error = %e, "report not learned");
                return Reply::with(451, 3, 0, "report could not be learned, try again later");
            }
            learned += 1;
        }
        info!(client = %envelope.client_ip, reporter, kind, learned, "report received");
        Reply::with(250, 0, 0, format!("report received: {learned} message(s) learned as {kind}"))
    }
}

/// The first address of the From header, if any.
fn from_header(data: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(data)?;
    parsed.from()?.first()?.address().map(str::to_owned)
}

/// The messages attached as `message/rfc822` parts (the outer message's own, not nested);
/// without any, a message forwarded inline by a common mail client.
pub(crate) fn attached_messages(data: &[u8]) -> Vec<Vec<u8>> {
    let Some(parsed) = mail_parser::MessageParser::default().parse(data) else {
        return Vec::new();
    };
    let attached: Vec<Vec<u8>> = parsed
        .parts
        .iter()
        .filter_map(|p| p.message())
        .map(|m| m.raw_message().to_vec())
        .filter(|m| !m.is_empty())
        .take(MAX_ATTACHED)
        .collect();
    if !attached.is_empty() {
        return attached;
    }
    parsed.body_text(0).and_then(|t| inline_forward(&t)).map(|m| vec![m]).unwrap_or_default()
}

/// The separator lines Gmail, Thunderbird, Outlook and Apple Mail put above a message
/// forwarded inline.
const FORWARD_MARKERS: &[&str] = &[
    "---------- Forwarded message ---------",
    "-------- Forwarded Message --------",
    "-------- Original Message --------",
    "-----Original Message-----",
    "Begin forwarded message:",
];

/// What follows an inline-forward separator, when it starts with the original's quoted
/// headers (a `From:` line): headers, blank line and body read as a message of their own.
fn inline_forward(text: &str) -> Option<Vec<u8>> {
    let at = FORWARD_MARKERS.iter().filter_map(|m| text.find(m).map(|i| i + m.len())).min()?;
    let rest = text[at..].trim_start();
    let head = rest.get(..5)?;
    head.eq_ignore_ascii_case("from:").then(|| rest.as_bytes().to_vec())
}

/// Who may report: the user named by From (or by MAIL FROM without one), lower case, when
/// that user's domain is configured and the mail is authenticated for that domain or
/// comes from the domain's own downstream server. Err: why not, for the 550.
pub(crate) fn authorise(
    config: &Config,
    client: IpAddr,
    mail_from: &str,
    from_header: Option<&str>,
    findings: &[Finding],
) -> Result<String, &'static str> {
    let user = from_header.filter(|f| !f.is_empty()).unwrap_or(mail_from).to_ascii_lowercase();
    let domain = user
        .rsplit_once('@')
        .and_then(|(_, d)| Domain::parse(d).ok())
        .ok_or("the reporter has no address")?;
    let Some(dc) = config.domain(&domain) else {
        return Err("reports are taken only from users of this gateway's domains");
    };
    let from_downstream = matches!(
        dc.downstream.as_ref().map(|d| &d.host),
        Some(DownstreamHost::Ip(ip)) if ip.to_canonical() == client.to_canonical()
    );
    let envelope_domain = mail_from.rsplit_once('@').map(|(_, d)| d);
    let authenticated = domain_authenticated(domain.as_str(), envelope_domain, findings);
    let dmarc_pass = findings.iter().any(|f| f.symbol == "DMARC_PASS");
    if from_downstream || authenticated || dmarc_pass {
        Ok(user)
    } else {
        Err("the reporter's mail is not authenticated (no SPF or DKIM pass for its domain) and does not come from its mail server")
    }
}

/// Whether `domain` authenticated a message, by its findings from levee-netcheck: SPF
/// passed and the envelope sender's domain (`envelope_domain`, `None` for the null sender,
/// whose SPF is HELO's) is `domain`, or a passing DKIM signature's `d=` is aligned with it.
pub(crate) fn domain_authenticated(
    domain: &str,
    envelope_domain: Option<&str>,
    findings: &[Finding],
) -> bool {
    let has = |symbol: &'static str| findings.iter().filter(move |f| f.symbol == symbol);
    let spf_pass = has("SPF_PASS").next().is_some()
        && envelope_domain.is_some_and(|d| d.eq_ignore_ascii_case(domain));
    let dkim_pass = has("DKIM_PASS").any(|f| {
        f.detail
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .filter_map(|t| t.strip_prefix("d="))
            .any(|d| aligned(&domain.to_ascii_lowercase(), d))
    });
    spf_pass || dkim_pass
}

/// Relaxed alignment: the signing domain is the From domain or a parent of it.
fn aligned(from_domain: &str, signer: &str) -> bool {
    let signer = signer.to_ascii_lowercase();
    from_domain == signer
        || from_domain.strip_suffix(signer.as_str()).is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "hostname = \"mx.example.test\"\ndata_dir = \"/tmp/x\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
[[domain]]\nname = \"example.test\"\ndownstream = \"10.0.0.5:25\"\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn who_may_report() {
        let c = config();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let downstream: IpAddr = "10.0.0.5".parse().unwrap();
        let spf = [Finding::new("SPF_PASS", "spf=pass for example.test")];
        let dkim = [Finding::new("DKIM_PASS", "d=mail.example.test s=x, d=example.test s=y")];
        let ok = |ip, mf, from, f: &[Finding]| authorise(&c, ip, mf, from, f);
        assert_eq!(
            ok(downstream, "", Some("Bob@Example.test"), &[]),
            Ok("bob@example.test".into())
        );
        assert!(ok(outside, "bob@example.test", None, &spf).is_ok());
        assert!(ok(outside, "x@example.test", Some("bob@example.test"), &dkim).is_ok());
        // SPF for someone else's envelope domain says nothing about the From user.
        assert!(ok(outside, "x@other.test", Some("bob@example.test"), &spf).is_err());
        assert!(ok(outside, "bob@example.test", None, &[]).is_err());
        // Not a user of a configured domain, even from the downstream.
        assert!(ok(downstream, "eve@other.test", None, &[]).is_err());
        let foreign = [Finding::new("DKIM_PASS", "d=notexample.test s=x")];
        assert!(ok(outside, "", Some("bob@example.test"), &foreign).is_err());
    }

    #[test]
    fn attached_messages_are_found() {
        let report = b"From: bob@example.test\r\nSubject: spam\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nthis got through\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: spammer@bad.test\r\nSubject: cheap pills\r\n\r\nbuy now\r\n--b--\r\n";
        let m = attached_messages(report);
        assert_eq!(m.len(), 1);
        assert!(String::from_utf8_lossy(&m[0]).contains("cheap pills"));
        assert!(attached_messages(b"Subject: plain\r\n\r\nno attachment\r\n").is_empty());
        let inline = b"From: bob@example.test\r\nSubject: Fwd: prize\r\n\r\nspam, see below\r\n\r\n\
---------- Forwarded message ---------\r\nFrom: Winner <w@lottery.invalid>\r\nSubject: You won\r\n\r\nclaim now\r\n";
        let m = attached_messages(inline);
        assert_eq!(m.len(), 1);
        assert!(String::from_utf8_lossy(&m[0]).starts_with("From: Winner"));
        // A marker not followed by the original's headers is not a forwarded message.
        let chat = b"Subject: x\r\n\r\n-----Original Message-----\r\nsee you\r\n";
        assert!(attached_messages(chat).is_empty());
    }
}
