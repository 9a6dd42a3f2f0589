//! The message log.

use super::qid;
use super::quarantine::enc;
use crate::auth::Perm;
use crate::views::{page, time};
use crate::{AppError, AppResult, AppState, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use levee_types::QueueId;
use maud::html;
use serde::Deserialize;

#[derive(Deserialize, Default)]
pub(super) struct LogQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    before: String,
}

pub(super) async fn log(
    State(st): State<AppState>,
    v: Viewer,
    Query(q): Query<LogQuery>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let before = QueueId::parse(&q.before);
    let needle = q.q.trim().to_lowercase();
    let mut rows = Vec::new();
    let mut cursor = before;
    // Search pages back through at most 20k records.
    for _ in 0..20 {
        let page = st.store().log_page(cursor.as_ref(), 1000)?;
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|e| e.id.clone());
        rows.extend(page.into_iter().filter(|e| {
            needle.is_empty()
                || e.mail_from.to_lowercase().contains(&needle)
                || e.rcpt_to.iter().any(|r| r.to_lowercase().contains(&needle))
                || e.client_ip.contains(&needle)
                || e.id.as_str().eq_ignore_ascii_case(&needle)
                || e.action == needle
        }));
        if rows.len() >= 100 {
            break;
        }
    }
    rows.truncate(100);
    Ok(page(
        "Message log",
        Some(&v),
        html! {
            form method="get" action="/log" { input name="q" placeholder="sender, recipient, client IP, id or verdict" size="40" value=(q.q); button type="submit" { "Search" } }
            table {
                tr { th { "Received" } th { "Id" } th { "Client" } th { "From" } th { "To" } th { "Verdict" } th { "Score" } th { "Delivery" } }
                @for e in &rows {
                    tr {
                        td { (time(e.received_at)) } td { a href=(format!("/log/{}", e.id)) { (e.id.as_str()) } } td { (e.client_ip) }
                        td { (if e.mail_from.is_empty() { "<>" } else { &e.mail_from }) } td { (e.rcpt_to.join(", ")) }
                        td { (e.action) } td { (format!("{:.1}", e.score)) }
                        td { (e.deliveries.last().map(|d| d.outcome.as_str()).unwrap_or("")) }
                    }
                }
            }
            @if let Some(last) = rows.last() { @if rows.len() == 100 { a href=(format!("/log?q={}&before={}", enc(&q.q), last.id)) { "Older" } } }
        },
    ))
}

pub(super) async fn log_view(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let e = st.store().log_get(&qid(&id)?)?.ok_or(AppError::NotFound)?;
    let held = st.store().quarantine_get(&e.id)?.is_some();
    Ok(page(
        "Message",
        Some(&v),
        html! {
            table {
                tr { th { "Id" } td { (e.id.as_str()) } }
                tr { th { "Received" } td { (time(e.received_at)) } }
                tr { th { "Client" } td { (e.client_ip) " (HELO " (e.helo) ")" } }
                tr { th { "Envelope sender" } td { (if e.mail_from.is_empty() { "<>" } else { &e.mail_from }) } }
                tr { th { "Recipients" } td { (e.rcpt_to.join(", ")) } }
                tr { th { "Size" } td { (e.size) } }
                tr { th { "Verdict" } td { (e.action) " (score " (format!("{:.2}", e.score)) ")" @if held { " — " a href=(format!("/quarantine/{}", e.id)) { "in quarantine" } } } }
            }
            h2 { "Findings" }
            table { tr { th { "Symbol" } th { "Detail" } th { "Weight" } }
                @for (s, d, w) in &e.findings { tr { td { (s) } td { (d) } td { (format!("{w:.2}")) } } } }
            h2 { "Delivery attempts" }
            table { tr { th { "When" } th { "Recipient" } th { "Host" } th { "Reply" } th { "Outcome" } }
                @for a in &e.deliveries { tr { td { (time(a.at)) } td { (a.rcpt) } td { (a.host) } td { (a.reply) } td { (a.outcome) } } } }
        },
    ))
}
