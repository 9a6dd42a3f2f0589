//! The signed-in user's own account: password, digest, API tokens.

use super::sign_in::start_session;
use super::users::set_password;
use super::{back, edit_or_back, Empty};
use crate::auth;
use crate::views::{self, button, csrf, page, time};
use crate::{now, AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use levee_store::Frequency;
use maud::html;
use serde::Deserialize;

#[derive(Deserialize, Default)]
pub(super) struct AccountQuery {
    #[serde(default)]
    msg: Option<String>,
}

pub(super) async fn account(
    State(st): State<AppState>,
    v: Viewer,
    Query(q): Query<AccountQuery>,
) -> AppResult<Response> {
    let tokens: Vec<_> =
        st.store().tokens_all()?.into_iter().filter(|t| t.user == v.user.name).collect();
    Ok(page(
        "Account",
        Some(&v),
        html! {
            (views::notice(q.msg.as_deref()))
            h2 { "Password" }
            form method="post" action="/account/password" {
                (csrf(&v))
                label { "Current password " input name="current" type="password" autocomplete="current-password" required; }
                label { "New password " input name="password" type="password" autocomplete="new-password" required; }
                button type="submit" { "Change (ends your other sessions)" }
            }
            h2 { "Quarantine digest" }
            form method="post" action="/account/digest" {
                (csrf(&v))
                select name="digest" { @for f in Frequency::ALL { option value=(f.as_str()) selected[f == v.user.digest] { (f.as_str()) } } }
                button type="submit" { "Save" }
            }
            h2 { "API tokens" }
            p { "For scripts: send " code { "Authorization: Bearer TOKEN" } " to " code { "/api/v1/…" } " (" a href="/api/v1/openapi.json" { "OpenAPI description" } "). A token has your permissions." }
            table { tr { th { "Label" } th { "Created" } th {} }
                @for t in &tokens { tr { td { (t.label) } td { (time(t.created_at)) } td { (button(&v, &format!("/account/tokens/{}/delete", t.id), "Revoke", "danger")) } } } }
            form method="post" action="/account/tokens" { (csrf(&v)) input name="label" placeholder="label" required; button type="submit" { "New token" } }
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct ChangePassword {
    current: String,
    password: String,
}

pub(super) async fn account_password(
    State(st): State<AppState>,
    p: Post<ChangePassword>,
) -> AppResult<Response> {
    let hash = p.viewer.user.password_hash.clone();
    let current = p.form.current;
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&current, &hash))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    if !ok {
        return Ok(back("/account", "The current password is wrong."));
    }
    let result = set_password(&st, &p.viewer.user.name, p.form.password)
        .await
        .and_then(|u| start_session(&st, &u, "/account?msg=Password%20changed."));
    edit_or_back(result, "/account")
}

#[derive(Deserialize)]
pub(super) struct DigestForm {
    digest: String,
}

pub(super) async fn account_digest(
    State(st): State<AppState>,
    p: Post<DigestForm>,
) -> AppResult<Response> {
    let digest =
        Frequency::parse(&p.form.digest).ok_or(AppError::BadRequest("bad frequency".into()))?;
    st.store().user_update(&p.viewer.user.name, |u| u.digest = digest)?;
    Ok(back("/account", "Saved."))
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    label: String,
}

pub(super) async fn token_add(
    State(st): State<AppState>,
    p: Post<TokenForm>,
) -> AppResult<Response> {
    let token = auth::random_token();
    st.store().token_add(&auth::digest(&token), &p.viewer.user.name, p.form.label.trim(), now())?;
    // Shown once; only its digest is kept.
    Ok(page(
        "New API token",
        Some(&p.viewer),
        html! {
            p { "Copy this token now; it is not shown again." }
            pre id="token" { (token) }
            a href="/account" { "Back" }
        },
    ))
}

pub(super) async fn token_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    st.store().token_remove(id, Some(&p.viewer.user.name))?;
    Ok(back("/account", "Revoked."))
}
