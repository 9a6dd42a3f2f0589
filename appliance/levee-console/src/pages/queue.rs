//! The delivery queue.

use super::{back, qid, Empty, Msg};
use crate::auth::Perm;
use crate::views::{self, button, page};
use crate::{now, AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;

pub(super) async fn queue(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let rows: Vec<_> = st.store().queue_all()?.into_iter().filter(|q| !q.held).collect();
    let edit = v.can(Perm::Settings);
    let t = now();
    Ok(page(
        "Delivery queue",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            p { (rows.len()) " message(s) waiting for delivery." }
            table {
                tr { th { "Id" } th { "Age" } th { "Attempts" } th { "Next attempt" } th { "Recipients" } @if edit { th {} } }
                @for q in &rows {
                    tr {
                        td { a href=(format!("/log/{}", q.id)) { (q.id.as_str()) } }
                        td { (t.saturating_sub(q.received_at) / 60) " min" }
                        td { (q.attempts) }
                        td { "in " (q.next_attempt.saturating_sub(t)) " s" }
                        td { @for r in &q.recipients { div { (r.rcpt) " — " (format!("{:?}", r.status)) " " (r.last_reply.as_deref().unwrap_or("")) } } }
                        @if edit { td { (button(&v, &format!("/queue/{}/retry", q.id), "Retry now", "")) " " (button(&v, &format!("/queue/{}/delete", q.id), "Delete", "danger")) } }
                    }
                }
            }
        },
    ))
}

pub(super) async fn queue_retry(
    State(st): State<AppState>,
    Path(id): Path<String>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let id = qid(&id)?;
    st.store().queue_get(&id)?.ok_or(AppError::NotFound)?;
    st.engine().retry_now(id);
    Ok(back("/queue", "Retrying."))
}

pub(super) async fn queue_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    st.engine().queue_delete(&qid(&id)?).await?;
    Ok(back("/queue", "Deleted."))
}
