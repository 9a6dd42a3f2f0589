//! End users: their own quarantine and their own allow/block list.

use crate::pages::quarantine::{quarantine_table, SearchForm};
use crate::views::{button, csrf, page, time};
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use levee_types::list::{ListEntry, ListKind, ListScope, Matcher};
use maud::html;
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/my/quarantine", get(my_quarantine))
        .route("/my/lists", get(my_lists).post(my_list_add))
        .route("/my/lists/{id}/delete", post(my_list_delete))
}

async fn my_quarantine(
    State(st): State<AppState>,
    v: Viewer,
    Query(f): Query<SearchForm>,
) -> AppResult<Response> {
    let mut q = f.query();
    // Only mail to the user's own addresses, whoever asks (staff see theirs here too).
    q.recipients = Some(v.user.addresses.clone());
    let (rows, total) =
        if v.user.addresses.is_empty() { (vec![], 0) } else { st.store().quarantine_search(&q)? };
    Ok(page(
        "My quarantine",
        Some(&v),
        html! {
            p { "Mail held for " (v.user.addresses.join(", ")) ". Release what you expected; report the rest as spam." }
            (quarantine_table(&v, "/my/quarantine", &f, &rows, total))
        },
    ))
}

/// The user's own entries: scoped to one of their addresses.
fn own(v: &Viewer, e: &ListEntry) -> bool {
    matches!(&e.scope, ListScope::Recipient(r) if v.user.addresses.iter().any(|a| a.eq_ignore_ascii_case(r)))
}

async fn my_lists(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<crate::pages::Msg>,
) -> AppResult<Response> {
    let mine: Vec<_> = st
        .store()
        .list_all()?
        .into_iter()
        .filter(|e| e.parsed().is_some_and(|p| own(&v, &p)))
        .collect();
    Ok(page(
        "My allow/block list",
        Some(&v),
        html! {
            (crate::views::notice(m.msg.as_deref()))
            table {
                tr { th { "Entry" } th { "Added" } th {} }
                @for e in &mine { tr { td { code { (e.entry) } } td { (time(e.created_at)) } td { (button(&v, &format!("/my/lists/{}/delete", e.id), "Remove", "danger")) } } }
            }
            @if v.user.addresses.is_empty() { p { "You have no mail addresses; ask your administrator." } } @else {
                h2 { "Add" }
                form method="post" action="/my/lists" {
                    (csrf(&v))
                    select name="kind" { option value="allow" { "Always allow" } option value="block" { "Always block" } }
                    select name="what" { option value="sender" { "sender address" } option value="sender-domain" { "sender domain" } }
                    input name="value" placeholder="someone@example.com or example.com" required;
                    @if v.user.addresses.len() > 1 {
                        select name="address" { @for a in &v.user.addresses { option value=(a) { (a) } } }
                    } @else { input type="hidden" name="address" value=(v.user.addresses[0]); }
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct MyListForm {
    kind: String,
    what: String,
    value: String,
    address: String,
}

fn back(msg: &str) -> Response {
    Redirect::to(&format!("/my/lists?msg={}", crate::pages::quarantine::enc(msg))).into_response()
}

async fn my_list_add(State(st): State<AppState>, p: Post<MyListForm>) -> AppResult<Response> {
    let f = p.form;
    let address = f.address.trim().to_lowercase();
    // Only for one of the user's own addresses.
    if !p.viewer.user.addresses.iter().any(|a| a.eq_ignore_ascii_case(&address)) {
        return Err(AppError::Forbidden);
    }
    let kind = match f.kind.as_str() {
        "allow" => ListKind::Allow,
        "block" => ListKind::Block,
        _ => return Err(AppError::BadRequest("bad kind".into())),
    };
    let value = f.value.trim().to_lowercase();
    let text = format!(
        "{} {} {} for rcpt:{}",
        if kind == ListKind::Allow { "allow" } else { "block" },
        f.what,
        value,
        address
    );
    let entry: ListEntry = match text.parse() {
        Ok(e) => e,
        Err(e) => return Ok(back(&format!("Not added: {e}"))),
    };
    if !matches!(entry.matcher, Matcher::Sender(_) | Matcher::SenderDomain(_)) {
        return Err(AppError::BadRequest("end users list senders only".into()));
    }
    st.engine().add_list_entry(&entry, "end user", &p.viewer.user.name)?;
    Ok(back("Added."))
}

async fn my_list_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<crate::pages::Msg>,
) -> AppResult<Response> {
    let e = st.store().list_all()?.into_iter().find(|e| e.id == id).ok_or(AppError::NotFound)?;
    // Someone else's entry looks like no entry.
    if !e.parsed().is_some_and(|x| own(&p.viewer, &x)) {
        return Err(AppError::NotFound);
    }
    st.engine().remove_list_entry(id)?;
    Ok(back("Removed."))
}
