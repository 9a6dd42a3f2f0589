//! The global and per-domain allow and block lists.

use super::{back, Empty, Msg};
use crate::auth::Perm;
use crate::views::{self, button, csrf, page, time};
use crate::{AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use levee_types::list::ListEntry;
use maud::html;
use serde::Deserialize;

pub(super) async fn lists(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let all = st.store().list_all()?;
    let edit = v.can(Perm::Lists);
    Ok(page(
        "Allow and block lists",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            p { "Entries look like " code { "allow sender alice@example.com" } ", " code { "block sender-domain spam.example" } ", " code { "block ip 192.0.2.0/24" } ", " code { "block country XX" } ", optionally followed by " code { "for domain:example.test" } " or " code { "for rcpt:bob@example.test" } ". The most specific entry wins." }
            p.hint id="allow-auth" { "A sender or sender-domain allow entry applies only when that domain authenticated the message (SPF pass, or an aligned DKIM signature), because anyone can forge a From address. For a sender that cannot authenticate, end the entry with " code { "unauthenticated" } " (e.g. " code { "allow sender-domain old-partner.example unauthenticated" } "): a forger of that address then gets in too, so prefer an " code { "allow ip" } " entry when the sender's servers are known." }
            table {
                tr { th { "Entry" } th { "Note" } th { "Added" } th { "By" } @if edit { th {} } }
                @for e in &all {
                    tr { td { code { (e.entry) } } td { (e.note) } td { (time(e.created_at)) } td { (e.created_by) }
                        @if edit { td { (button(&v, &format!("/lists/{}/delete", e.id), "Remove", "danger")) } } }
                }
            }
            @if edit {
                h2 { "Add" }
                form method="post" action="/lists" {
                    (csrf(&v))
                    input name="entry" size="50" placeholder="block sender-domain spam.example" required;
                    input name="note" placeholder="note";
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct ListForm {
    entry: String,
    #[serde(default)]
    note: String,
}

pub(super) async fn list_add(State(st): State<AppState>, p: Post<ListForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Lists)?;
    let entry: ListEntry = match p.form.entry.trim().parse() {
        Ok(e) => e,
        Err(e) => return Ok(back("/lists", &format!("Not added: {e}"))),
    };
    st.engine().add_list_entry(&entry, &p.form.note, &p.viewer.user.name)?;
    Ok(back("/lists", "Added."))
}

pub(super) async fn list_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Lists)?;
    st.engine().remove_list_entry(id)?;
    Ok(back("/lists", "Removed."))
}
