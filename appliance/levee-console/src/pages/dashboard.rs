//! The dashboard: the last day at a glance.

use crate::auth::Perm;
use crate::stats;
use crate::views::{self, page};
use crate::{AppResult, AppState, Viewer};
use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

fn top_table(title: &str, rows: &[(String, u64)]) -> Markup {
    html! {
        div.card {
            h3 { (title) }
            @if rows.is_empty() { p { "Nothing yet." } } @else {
                table { @for (k, n) in rows { tr { td { (k) } td { (n) } } } }
            }
        }
    }
}

pub(super) async fn dashboard(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let s = stats::stats(&st, 24)?;
    let queue = st.store().queue_all()?;
    let deferred = queue.iter().filter(|q| !q.held).count();
    let held = st.store().quarantine_len()?;
    let logged = st.store().log_len()?;
    let setup_pending: Vec<String> = st
        .engine()
        .config()
        .domains
        .iter()
        .filter(|d| !d.ready())
        .map(|d| d.domain().to_string())
        .collect();
    Ok(page(
        "Dashboard",
        Some(&v),
        html! {
            @if !setup_pending.is_empty() {
                p.bad { "Set-up incomplete for: " (setup_pending.join(", ")) ". Mail for these domains is refused with 451 until a downstream is set and filtering is on. " a href="/domains" { "Domains" } }
            }
            div.grid {
                div.card { h3 { "Last 24 hours" }
                    table { @for (name, _) in stats::VERDICTS { tr { td { (name) } td { (s.total.get(name).copied().unwrap_or(0)) } } } }
                }
                div.card { h3 { "Now" } table {
                    tr { td { "Delivery queue" } td { a href="/queue" { (deferred) } } }
                    tr { td { "Quarantine" } td { a href="/quarantine" { (held) } } }
                    tr { td { "Messages logged" } td { (logged) } }
                } }
            }
            h2 { "Mail per hour by verdict" }
            (views::bar_chart(&s.hours, &s.per_hour))
            div.grid {
                (top_table("Top reasons", &s.reasons))
                (top_table("Top senders", &s.senders))
                (top_table("Top recipients", &s.recipients))
            }
        },
    ))
}
