//! One-click links from digest mail (signed; the action needs a POST).

use super::quarantine::allow_for;
use super::sign_in::with_pre_cookie;
use super::Empty;
use crate::views::page;
use crate::{now, AppError, AppResult, AppState, PrePost};
use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;

fn link_entry(
    st: &AppState,
    token: &str,
) -> AppResult<(crate::links::Link, levee_store::QuarantineEntry)> {
    let link = crate::links::verify(st.link_key(), token, now()).ok_or(AppError::NotFound)?;
    let e = st.store().quarantine_get(&link.id)?.ok_or(AppError::NotFound)?;
    if !e.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(&link.rcpt)) {
        return Err(AppError::NotFound);
    }
    Ok((link, e))
}

/// Shows what the link will do; the action itself needs a POST, so mail scanners that
/// follow links change nothing.
pub(super) async fn link_form(
    State(st): State<AppState>,
    Path(token): Path<String>,
) -> AppResult<Response> {
    let (link, e) = link_entry(&st, &token)?;
    Ok(with_pre_cookie(link.action.describe(), |t| {
        html! {
            table {
                tr { th { "From" } td { (e.from_header) } }
                tr { th { "Subject" } td { (e.subject) } }
                tr { th { "For" } td { (link.rcpt) } }
            }
            form method="post" action=(format!("/a/{token}")) {
                input type="hidden" name="_csrf" value=(t);
                button type="submit" { (link.action.describe()) }
            }
        }
    }))
}

pub(super) async fn link_act(
    State(st): State<AppState>,
    Path(token): Path<String>,
    _f: PrePost<Empty>,
) -> AppResult<Response> {
    let (link, e) = link_entry(&st, &token)?;
    let by = format!("link:{}", link.rcpt);
    if link.action == crate::links::LinkAction::ReleaseAllow {
        allow_for(&st, &e, std::slice::from_ref(&link.rcpt), &by)?;
    }
    st.engine().quarantine_release_for(&e.id, std::slice::from_ref(&link.rcpt), &by).await?;
    Ok(page("Done", None, html! { p.notice { "The message has been released." } }))
}
