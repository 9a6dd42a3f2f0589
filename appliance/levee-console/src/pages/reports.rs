//! Scheduled report mail.

use super::{back, Empty, Msg};
use crate::auth::Perm;
use crate::views::{self, button, csrf, page, time};
use crate::{now, AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use levee_store::{Frequency, ReportSchedule};
use maud::html;
use serde::Deserialize;

pub(super) async fn reports(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::Settings)?;
    let all = st.store().schedules_all()?;
    Ok(page(
        "Reports",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            p { "The admin report (mail per verdict, top reasons, senders and recipients, queue and quarantine sizes) is mailed through Levee's own queue." }
            table {
                tr { th { "Frequency" } th { "Recipients" } th { "Last sent" } th {} }
                @for s in &all {
                    tr { td { (s.frequency.as_str()) } td { (s.recipients.join(", ")) } td { (if s.last_sent == 0 { "never".to_string() } else { time(s.last_sent) }) }
                         td { (button(&v, &format!("/reports/{}/send", s.id), "Send now", "")) " " (button(&v, &format!("/reports/{}/delete", s.id), "Delete", "danger")) } }
                }
            }
            h2 { "Add a schedule" }
            form method="post" action="/reports" {
                (csrf(&v))
                select name="frequency" { option value="daily" { "daily" } option value="weekly" { "weekly" } }
                input name="recipients" size="40" placeholder="postmaster@example.test, boss@example.test" required;
                button type="submit" { "Add" }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct ReportForm {
    frequency: String,
    recipients: String,
}

pub(super) fn parse_addresses(s: &str) -> Result<Vec<String>, String> {
    s.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|a| {
            levee_types::Address::parse(a, false)
                .map(|a| a.to_string())
                .map_err(|e| format!("{a}: {e}"))
        })
        .collect()
}

pub(super) async fn report_add(
    State(st): State<AppState>,
    p: Post<ReportForm>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let frequency = Frequency::parse(&p.form.frequency)
        .filter(|f| *f != Frequency::Never)
        .ok_or(AppError::BadRequest("bad frequency".into()))?;
    let recipients = match parse_addresses(&p.form.recipients) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return Ok(back("/reports", "Give at least one recipient.")),
        Err(e) => return Ok(back("/reports", &e)),
    };
    st.store().schedule_put(&ReportSchedule { id: 0, frequency, recipients, last_sent: now() })?;
    Ok(back("/reports", "Added."))
}

pub(super) async fn report_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    st.store().schedule_remove(id)?;
    Ok(back("/reports", "Deleted."))
}

pub(super) async fn report_send(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let s =
        st.store().schedules_all()?.into_iter().find(|s| s.id == id).ok_or(AppError::NotFound)?;
    crate::mailout::send_report(&st, &s).await?;
    Ok(back("/reports", "Report queued."))
}
