//! Set-up checks: the MX record to publish and what DNS says now, the downstream
//! probe and the rules that fence the downstream server, and "why am I still getting
//! spam?" running them per domain.

use crate::auth::Perm;
use crate::views::page;
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use levee_config::{DomainConfig, DownstreamHost};
use maud::{html, Markup};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/mx", get(mx))
        .route("/downstream", get(downstream))
        .route("/downstream/rotate-stamp", post(rotate_stamp))
        .route("/checks", get(checks))
}

#[derive(Deserialize)]
struct DomainQuery {
    domain: String,
}

fn find(st: &AppState, name: &str) -> AppResult<DomainConfig> {
    let c = st.engine().config();
    c.domains
        .iter()
        .find(|d| d.domain().as_str().eq_ignore_ascii_case(name.trim()))
        .cloned()
        .ok_or(AppError::NotFound)
}

/// What DNS says about a domain's MX.
#[derive(Debug)]
pub struct MxCheck {
    pub records: Vec<(u16, String, u32)>,
    pub error: Option<String>,
    /// The lowest-preference MX is this appliance.
    pub points_here: bool,
    /// Other hosts also listed: senders (and spammers) can use them and skip the filter.
    pub others: Vec<String>,
    /// The downstream server itself is listed (the "sandwich").
    pub downstream_listed: bool,
}

fn resolver() -> Option<hickory_resolver::TokioResolver> {
    hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.build()).ok()
}

pub async fn check_mx(hostname: &str, d: &DomainConfig) -> MxCheck {
    let mut out = MxCheck {
        records: vec![],
        error: None,
        points_here: false,
        others: vec![],
        downstream_listed: false,
    };
    let Some(r) = resolver() else {
        out.error = Some("no DNS resolver configured on the appliance".into());
        return out;
    };
    match tokio::time::timeout(Duration::from_secs(10), r.mx_lookup(format!("{}.", d.domain())))
        .await
    {
        Ok(Ok(l)) => {
            for rec in l.answers() {
                if let hickory_resolver::proto::rr::RData::MX(mx) = &rec.data {
                    out.records.push((
                        mx.preference,
                        mx.exchange.to_ascii().trim_end_matches('.').to_lowercase(),
                        rec.ttl,
                    ));
                }
            }
        }
        Ok(Err(e)) => out.error = Some(e.to_string()),
        Err(_) => out.error = Some("DNS timed out".into()),
    }
    out.records.sort();
    let me = hostname.to_lowercase();
    if let Some(low) = out.records.first() {
        out.points_here = low.1 == me;
    }
    out.others = out.records.iter().filter(|r| r.1 != me).map(|r| r.1.clone()).collect();
    if let Some(ds) = &d.downstream {
        let ds_ips: Vec<IpAddr> = match &ds.host {
            DownstreamHost::Ip(ip) => vec![*ip],
            DownstreamHost::Name(n) | DownstreamHost::Mx(n) => {
                if out.others.iter().any(|o| o == &n.to_lowercase()) {
                    out.downstream_listed = true;
                }
                r.lookup_ip(format!("{n}.")).await.map(|l| l.iter().collect()).unwrap_or_default()
            }
        };
        for o in &out.others {
            if let Ok(l) = r.lookup_ip(format!("{o}.")).await {
                if l.iter().any(|ip| ds_ips.contains(&ip)) {
                    out.downstream_listed = true;
                }
            }
        }
    }
    out
}

fn mx_markup(hostname: &str, d: &DomainConfig, c: &MxCheck) -> Markup {
    html! {
        @if let Some(e) = &c.error { p.bad { "MX lookup failed: " (e) } }
        @else if c.records.is_empty() { p.bad { "No MX record is published for " (d.domain()) " yet." } }
        @else {
            table { tr { th { "Preference" } th { "Host" } th { "TTL (s)" } }
                @for (p, h, ttl) in &c.records { tr { td { (p) } td { (h) @if h == &hostname.to_lowercase() { " (this appliance)" } } td { (ttl) } } } }
            @if c.points_here { p.ok { "✔ The lowest-preference MX is this appliance." } }
            @else { p.bad { "✘ The lowest-preference MX is not this appliance (" (hostname) "): senders deliver elsewhere first." } }
            @if c.downstream_listed { p.bad { "✘ The downstream server is still listed as an MX. Spammers deliberately use the less-preferred MX hosts (the \"sandwich\"), so their mail reaches the server without passing the filter. Remove it from the MX set and fence it (see the downstream rules)." } }
            @else if !c.others.is_empty() { p.warn { "! Other MX hosts are listed: " (c.others.join(", ")) ". Mail sent to them is not filtered by Levee unless they forward here." } }
            @if let Some(ttl) = c.records.iter().map(|r| r.2).max() {
                p { "TTL " (ttl) " s: resolvers may keep the old answer for up to " (ttl / 60) " minutes after a change, so mail can still go to the old hosts for that long. Lower the TTL a day before changing the MX, raise it again afterwards." }
            }
        }
    }
}

async fn mx(
    State(st): State<AppState>,
    v: Viewer,
    Query(q): Query<DomainQuery>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let d = find(&st, &q.domain)?;
    let c = st.engine().config();
    let host = c.hostname.0.clone();
    let check = check_mx(&host, &d).await;
    Ok(page(
        &format!("MX for {}", d.domain()),
        Some(&v),
        html! {
            h2 { "Publish this record" }
            p { "In your DNS zone for " (d.domain()) ", make this the only MX record (BIND form):" }
            pre id="mx-record" { (d.domain()) ".\t3600\tIN\tMX\t10\t" (host) "." }
            p { "and make sure " code { (host) } " has an A (and, if you use IPv6, AAAA) record with the appliance's public address." }
            h2 { "What DNS says now" }
            (mx_markup(&host, &d, &check))
            p { a href=(format!("/downstream?domain={}", d.domain())) { "Next: the downstream server" } }
        },
    ))
}

/// The result of connecting to a domain's downstream server as the relay would.
#[derive(Debug)]
pub struct Probe {
    pub addr: Option<SocketAddr>,
    pub ok: bool,
    pub tls: bool,
    pub detail: String,
    /// The address this appliance connects from (what the downstream must allow).
    pub local: Option<IpAddr>,
}

pub async fn probe(st: &AppState, d: &DomainConfig) -> Probe {
    let c = st.engine().config();
    let Some(ds) = &d.downstream else {
        return Probe {
            addr: None,
            ok: false,
            tls: false,
            detail: "no downstream server is set".into(),
            local: None,
        };
    };
    let addr = match &ds.host {
        DownstreamHost::Ip(ip) => Some(SocketAddr::new(*ip, ds.port)),
        DownstreamHost::Name(n) | DownstreamHost::Mx(n) => {
            match tokio::net::lookup_host((n.as_str(), ds.port)).await {
                Ok(mut it) => it.next(),
                Err(e) => {
                    return Probe {
                        addr: None,
                        ok: false,
                        tls: false,
                        detail: format!("cannot resolve {n}: {e}"),
                        local: None,
                    }
                }
            }
        }
    };
    let Some(addr) = addr else {
        return Probe {
            addr: None,
            ok: false,
            tls: false,
            detail: "no address".into(),
            local: None,
        };
    };
    // The kernel's choice of source address for this destination.
    let local = match d.source_address {
        Some(a) => Some(a),
        None => std::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
            .and_then(|s| s.connect(addr).and_then(|_| s.local_addr()))
            .map(|a| a.ip())
            .ok(),
    };
    let tls_name = match &ds.host {
        DownstreamHost::Name(n) | DownstreamHost::Mx(n) => n.clone(),
        DownstreamHost::Ip(ip) => ip.to_string(),
    };
    let connector = levee_relay::tls::connector();
    let opts = levee_relay::ConnectOptions {
        source: d.source_address,
        helo: &c.hostname.0,
        tls: d.tls,
        tls_name: &tls_name,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(20),
        connector: &connector,
    };
    match levee_relay::Client::connect(addr, &opts).await {
        Ok(client) => {
            let tls = client.tls;
            client.quit().await;
            Probe {
                addr: Some(addr),
                ok: true,
                tls,
                detail: format!(
                    "connected, banner and EHLO accepted{}",
                    if tls { ", STARTTLS done" } else { ", no TLS" }
                ),
                local,
            }
        }
        Err(e) => Probe { addr: Some(addr), ok: false, tls: false, detail: e.to_string(), local },
    }
}

/// The stamps as one anchored alternation, for the servers that match by pattern.
fn stamp_pattern(stamps: &[&str]) -> String {
    format!("^({})$", stamps.join("|"))
}

/// Postfix cannot act on a header that is missing, so its fence is the client address:
/// only the appliance may deliver; a wrong stamp is refused too.
fn postfix_snippet(appliance: &[IpAddr], stamps: &[&str]) -> String {
    let mut cidr = String::new();
    for ip in appliance {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        cidr.push_str(&format!("{ip}/{len}\tOK\n"));
    }
    format!(
        "# /etc/postfix/main.cf\n\
         smtpd_client_restrictions = check_client_access cidr:/etc/postfix/levee_clients.cidr, reject\n\
         header_checks = regexp:/etc/postfix/levee_header_checks\n\n\
         # /etc/postfix/levee_clients.cidr  (only the appliance may deliver on port 25)\n\
         127.0.0.0/8\tOK\n{cidr}\n\
         # /etc/postfix/levee_header_checks  (a forged or foreign stamp is refused)\n\
         if /^X-Levee-Stamp:/\n\
         !/^X-Levee-Stamp: ({})$/\tREJECT message did not pass the Levee gateway\n\
         endif\n",
        stamps.join("|")
    )
}

/// Exim refuses at DATA a message without one of the stamps (missing or wrong alike).
fn exim_snippet(stamps: &[&str]) -> String {
    format!(
        "# in acl_check_data (Exim's configure)\n\
         deny  condition = ${{if match{{$h_X-Levee-Stamp:}}{{\\N{}\\N}}{{no}}{{yes}}}}\n\
         \x20     message   = message did not pass the Levee gateway\n",
        stamp_pattern(stamps)
    )
}

/// Sieve runs after delivery, so a message without the stamp is filed as junk there.
fn sieve_snippet(stamps: &[&str]) -> String {
    let list = stamps.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "require [\"fileinto\"];\n\
         # a message that did not pass the Levee gateway (no stamp, or a wrong one)\n\
         if not header :is \"X-Levee-Stamp\" [{list}] {{\n\
         \x20   fileinto \"Junk\";\n\
         \x20   stop;\n\
         }}\n"
    )
}

/// An Exchange / Microsoft 365 transport rule: mail from outside is rejected unless it
/// carries one of the stamps.
fn exchange_snippet(stamps: &[&str]) -> String {
    format!(
        "New-TransportRule -Name \"Mail must pass Levee\" -FromScope NotInOrganization `\n\
         \x20 -ExceptIfHeaderMatchesMessageHeader \"X-Levee-Stamp\" `\n\
         \x20 -ExceptIfHeaderMatchesPatterns \"{}\" `\n\
         \x20 -RejectMessageEnhancedStatusCode \"5.7.1\" `\n\
         \x20 -RejectMessageReasonText \"message did not pass the Levee gateway\"\n",
        stamp_pattern(stamps)
    )
}

async fn downstream(
    State(st): State<AppState>,
    v: Viewer,
    Query(q): Query<DomainQuery>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let d = find(&st, &q.domain)?;
    let p = probe(&st, &d).await;
    let port = d.downstream.as_ref().map(|x| x.port).unwrap_or(25);
    let ips: Vec<IpAddr> = p.local.into_iter().collect();
    let stamps = st.engine().stamps();
    let now = levee_relay::now_unix();
    let accepted = stamps.accepted(now);
    Ok(page(
        &format!("Downstream for {}", d.domain()),
        Some(&v),
        html! {
            h2 { "Probe" }
            @if p.ok { p .ok id="probe" { "✔ " (p.addr.map(|a| a.to_string()).unwrap_or_default()) ": " (p.detail) } }
            @else { p .bad id="probe" { "✘ " (p.addr.map(|a| a.to_string()).unwrap_or_default()) " " (p.detail) } }
            @if p.ok && !p.tls && d.tls != levee_config::TlsPolicy::None { p.warn { "The server offers no STARTTLS: mail crosses your network in clear text." } }
            h2 { "Fence the downstream server" }
            p { "Only this appliance (" (ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")) ") should reach the server's port " (port) "; everyone else who ignores the MX must be refused." }
            h3 { "nftables" }
            pre { (levee_gate::downstream_rules(&ips, port, levee_gate::Flavour::Nftables)) }
            h3 { "iptables" }
            pre { (levee_gate::downstream_rules(&ips, port, levee_gate::Flavour::Iptables)) }
            h3 { "Postfix" }
            pre id="postfix" { (postfix_snippet(&ips, &accepted)) }
            h2 { "Refuse mail without the stamp" }
            p { "Every message Levee delivers carries this header. Servers that can act on a missing header should refuse (or file as junk) mail without it:" }
            pre id="stamp" { "X-Levee-Stamp: " (stamps.current) }
            @if let Some((old, until)) = stamps.previous.as_ref().filter(|(_, u)| *u > now) {
                p.warn id="previous-stamp" { "The previous stamp " code { (old) } " is still listed as accepted until " (crate::views::time(*until)) ": update the rules on your server before then." }
            }
            h3 { "Exchange / Microsoft 365 (PowerShell)" }
            pre id="exchange" { (exchange_snippet(&accepted)) }
            h3 { "Exim" }
            pre id="exim" { (exim_snippet(&accepted)) }
            h3 { "Sieve (Dovecot, Cyrus)" }
            pre id="sieve" { (sieve_snippet(&accepted)) }
            @if v.can(Perm::Settings) {
                form method="post" action="/downstream/rotate-stamp" {
                    (crate::views::csrf(&v))
                    input type="hidden" name="domain" value=(d.domain().as_str());
                    button type="submit" data-confirm="Make a new stamp? Update your server's rules within 7 days." { "Rotate the stamp" }
                }
                p.hint { "Rotate it if it leaked: new mail carries a new stamp at once, and the rules above accept the old one for 7 days." }
            }
        },
    ))
}

async fn rotate_stamp(State(st): State<AppState>, p: Post<DomainQuery>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    st.engine().rotate_stamp(&p.viewer.user.name)?;
    let to = format!("/downstream?domain={}", p.form.domain.trim());
    Ok(crate::pages::back(&to, "New stamp made; the previous one is accepted for 7 days."))
}

async fn checks(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let c = st.engine().config();
    let mut sections = Vec::new();
    for d in &c.domains {
        let mx = check_mx(&c.hostname.0, d).await;
        let p = probe(&st, d).await;
        sections.push(html! {
            h2 { (d.domain()) }
            @if !d.ready() { p.bad { "Set-up incomplete: mail for this domain is refused (451) until a downstream is set and filtering is on." } }
            h3 { "1. Does mail come here first?" }
            (mx_markup(&c.hostname.0, d, &mx))
            h3 { "2. Can spammers skip the appliance?" }
            @if p.ok { p { "The downstream answers at " (p.addr.map(|a| a.to_string()).unwrap_or_default()) ". Make sure only this appliance can reach it: " a href=(format!("/downstream?domain={}", d.domain())) { "rules to paste" } "." } }
            @else { p.bad { "Downstream probe failed: " (p.detail) } }
            h3 { "3. Is the filter strict enough?" }
            p { "Quarantine at score " (c.policy.quarantine_at) ", reject at " (c.policy.reject_at) ". Look at the scores of the spam that got through in the " a href="/log?q=accept" { "message log" } " and lower the thresholds or block senders on the " a href="/lists" { "lists" } " page." }
        });
    }
    Ok(page(
        "Why am I still getting spam?",
        Some(&v),
        html! {
            @if sections.is_empty() { p { "No domains yet." } }
            @for s in sections { (s) }
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn postfix_snippet_names_the_appliance_and_the_stamps() {
        let s = super::postfix_snippet(&["192.0.2.7".parse().unwrap()], &["abc123", "old456"]);
        assert!(s.contains("192.0.2.7/32\tOK"));
        assert!(s.contains("check_client_access cidr:/etc/postfix/levee_clients.cidr"));
        assert!(s.contains("!/^X-Levee-Stamp: (abc123|old456)$/"));
    }

    /// Issue 12: the snippets must act on a missing stamp where the server can.
    #[test]
    fn the_other_snippets_refuse_mail_without_a_stamp() {
        let st = ["abc123"];
        let exim = super::exim_snippet(&st);
        assert!(exim.contains("if match{$h_X-Levee-Stamp:}{\\N^(abc123)$\\N}{no}{yes}"), "{exim}");
        let sieve = super::sieve_snippet(&st);
        assert!(sieve.contains("if not header :is \"X-Levee-Stamp\" [\"abc123\"]"), "{sieve}");
        let ex = super::exchange_snippet(&st);
        assert!(ex.contains("-ExceptIfHeaderMatchesPatterns \"^(abc123)$\""), "{ex}");
    }
}
