//! Mail the console writes: the scheduled admin report and per-user quarantine digests
//! with signed one-click links, all through Levee's own queue.

use crate::links::{self, Link, LinkAction};
use crate::{now, AppError, AppResult, AppState};
use levee_store::{Frequency, QuarantineQuery, ReportSchedule, User};
use levee_types::Address;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// One-click links stay valid this long.
pub const LINK_LIFETIME_SECS: u64 = 14 * 86_400;

/// Checks every minute whether a report or digest is due.
pub async fn run(st: AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(e) = tick(&st, now()).await {
            warn!(error = ?e, "report scheduler");
        }
        let _ = st.store().sessions_prune(|s| !crate::auth::session_alive(s, now()));
    }
}

pub async fn tick(st: &AppState, t: u64) -> AppResult<()> {
    for s in st.store().schedules_all()? {
        if s.frequency.period_secs().is_some_and(|p| t >= s.last_sent + p) {
            send_report(st, &s).await?;
        }
    }
    for u in st.store().users_all()? {
        if u.addresses.is_empty() {
            continue;
        }
        if u.digest.period_secs().is_some_and(|p| t >= u.digest_last_sent + p) {
            send_digest(st, &u, t).await?;
        }
    }
    Ok(())
}

fn base_url(st: &AppState) -> String {
    let c = st.engine().config();
    let port = c.console.as_ref().and_then(|c| c.listen.first()).map(|l| l.0.port()).unwrap_or(443);
    if port == 443 {
        format!("https://{}", c.hostname.0)
    } else {
        format!("https://{}:{port}", c.hostname.0)
    }
}

fn postmaster(st: &AppState) -> Option<Address> {
    Address::parse(&format!("postmaster@{}", st.engine().config().hostname.0), false).ok()
}

/// Headers and a text body, CRLF line ends, dot-safe (the queue dot-stuffs anyway).
fn compose(from: &str, to: &[String], subject: &str, body: &str) -> Vec<u8> {
    let mut m = String::new();
    m.push_str(&format!("From: Levee <{from}>\r\n"));
    m.push_str(&format!("To: {}\r\n", to.join(", ")));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", levee_relay::rfc5322_date(now())));
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nAuto-Submitted: auto-generated\r\n\r\n");
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// Header-safe: no line breaks from stored text.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect()
}

pub fn report_text(st: &AppState, hours: u64) -> AppResult<String> {
    let s = crate::stats::stats(st, hours)?;
    let mut b =
        format!("Levee report for {} — last {hours} hours\n\n", st.engine().config().hostname.0);
    for (name, _, v) in &s.per_hour {
        b.push_str(&format!("{name:<12}{}\n", v.iter().sum::<u64>()));
    }
    b.push_str(&format!(
        "\nDelivery queue: {}\nQuarantine: {}\n",
        st.store().queue_waiting(),
        st.store().quarantine_len()?
    ));
    for (title, rows) in [
        ("Top reasons", &s.reasons),
        ("Top senders", &s.senders),
        ("Top recipients", &s.recipients),
    ] {
        b.push_str(&format!("\n{title}:\n"));
        for (k, n) in rows.iter() {
            b.push_str(&format!("  {n:>6}  {}\n", one_line(k)));
        }
    }
    Ok(b)
}

pub async fn send_report(st: &AppState, s: &ReportSchedule) -> AppResult<()> {
    let hours = if s.frequency == Frequency::Weekly { 24 * 7 } else { 24 };
    let body = report_text(st, hours)?;
    let from = postmaster(st).ok_or_else(|| AppError::Internal("no postmaster address".into()))?;
    let to: Vec<Address> =
        s.recipients.iter().filter_map(|r| Address::parse(r, false).ok()).collect();
    if to.is_empty() {
        return Ok(());
    }
    let data = compose(&from.to_string(), &s.recipients, "Levee report", &body);
    st.engine().send_mail(Some(from), to, data).await?;
    // An update, not a put: a schedule removed meanwhile stays removed.
    st.store().schedule_update(s.id, |x| x.last_sent = now())?;
    info!(schedule = s.id, "admin report queued");
    Ok(())
}

/// The digest body for `user`: messages held since `since`, each with signed links.
pub fn digest_text(st: &AppState, user: &User, since: u64, t: u64) -> AppResult<Option<String>> {
    let q = QuarantineQuery {
        recipients: Some(user.addresses.clone()),
        since: Some(since),
        limit: 200,
        ..Default::default()
    };
    let (rows, total) = st.store().quarantine_search(&q)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let base = base_url(st);
    let mut b = format!("{total} message(s) addressed to you are held as suspected spam.\nThey are deleted after a while unless you release them.\n\n");
    for e in &rows {
        let rcpt = e
            .rcpt_to
            .iter()
            .find(|r| user.addresses.iter().any(|a| a.eq_ignore_ascii_case(r)))
            .cloned()
            .unwrap_or_default();
        let link = |action| {
            links::sign(
                st.link_key(),
                &Link {
                    action,
                    id: e.id.clone(),
                    rcpt: rcpt.clone(),
                    expires: t + LINK_LIFETIME_SECS,
                },
            )
        };
        b.push_str(&format!(
            "From:    {}\nSubject: {}\nScore:   {:.1}\nRelease: {base}/a/{}\nRelease and always allow this sender: {base}/a/{}\n\n",
            one_line(if e.from_header.is_empty() { &e.mail_from } else { &e.from_header }),
            one_line(&e.subject),
            e.score,
            link(LinkAction::Release),
            link(LinkAction::ReleaseAllow),
        ));
    }
    b.push_str(&format!("Sign in to see all your held mail: {base}/my/quarantine\n"));
    Ok(Some(b))
}

pub async fn send_digest(st: &AppState, user: &User, t: u64) -> AppResult<()> {
    let since = if user.digest_last_sent == 0 {
        t.saturating_sub(7 * 86_400)
    } else {
        user.digest_last_sent
    };
    if let Some(body) = digest_text(st, user, since, t)? {
        let from =
            postmaster(st).ok_or_else(|| AppError::Internal("no postmaster address".into()))?;
        let to: Vec<Address> =
            user.addresses.iter().filter_map(|a| Address::parse(a, false).ok()).collect();
        let data = compose(&from.to_string(), &user.addresses, "Your quarantined mail", &body);
        st.engine().send_mail(Some(from), to, data).await?;
        info!(user = %user.name, "quarantine digest queued");
    }
    // An update, not a put of the copy read before sending: a password or role changed
    // meanwhile stays changed, and a removed user stays removed.
    st.store().user_update(&user.name, |u| u.digest_last_sent = t)?;
    Ok(())
}
