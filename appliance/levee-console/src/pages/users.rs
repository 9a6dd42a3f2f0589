//! Console users and their roles.

use super::quarantine::enc;
use super::reports::parse_addresses;
use super::sign_in::start_session;
use super::{back, edit_or_back, Empty, Msg};
use crate::auth::{self, Perm};
use crate::views::{self, button, csrf, page};
use crate::{now, AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use levee_store::{Frequency, Role, User};
use maud::html;
use serde::Deserialize;

pub(super) async fn users(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::Users)?;
    let all = st.store().users_all()?;
    Ok(page(
        "Users and roles",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            p { "Roles: " b { "admin" } " (everything), " b { "quarantine_manager" } " (every quarantine and the lists), " b { "auditor" } " (reads everything, changes nothing), " b { "user" } " (an end user: their own addresses' quarantine and lists)." }
            table {
                tr { th { "Name" } th { "Role" } th { "Addresses" } th { "Digest" } th { "Actions" } }
                @for u in &all {
                    tr { td { (u.name) } td { (u.role.as_str()) } td { (u.addresses.join(", ")) } td { (u.digest.as_str()) }
                        td {
                            form.inline method="post" action=(format!("/users/{}/password", enc(&u.name))) {
                                (csrf(&v)) input name="password" type="password" placeholder="new password" autocomplete="new-password"; button type="submit" { "Set password" }
                            }
                            @if u.name != v.user.name { " " (button(&v, &format!("/users/{}/delete", enc(&u.name)), "Delete", "danger")) }
                        }
                    }
                }
            }
            h2 { "Add a user" }
            form id="add-user" method="post" action="/users" {
                (csrf(&v))
                label { "Name " input name="name" required; }
                label { "Role " select name="role" { @for r in Role::ALL { option value=(r.as_str()) selected[r == Role::User] { (r.as_str()) } } } }
                label { "Password " input name="password" type="password" autocomplete="new-password" required; }
                label { "Mail addresses (for end users; comma-separated) " input name="addresses" size="40"; }
                button type="submit" { "Add" }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct UserForm {
    name: String,
    role: String,
    password: String,
    #[serde(default)]
    addresses: String,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(&c))
}

pub(super) async fn user_add(State(st): State<AppState>, p: Post<UserForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Users)?;
    let f = p.form;
    let name = f.name.trim().to_lowercase();
    if !valid_name(&name) {
        return Ok(back("/users", "A user name is letters, digits and . _ @ -"));
    }
    let role = Role::parse(&f.role).ok_or(AppError::BadRequest("bad role".into()))?;
    if f.password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Ok(back("/users", "The password is too short."));
    }
    let addresses = match parse_addresses(&f.addresses) {
        Ok(a) => a.into_iter().map(|a| a.to_lowercase()).collect(),
        Err(e) => return Ok(back("/users", &e)),
    };
    let password = f.password;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::Internal)?;
    let u = User {
        name: name.clone(),
        role,
        password_hash: hash,
        addresses,
        digest: Frequency::Daily,
        digest_last_sent: now(),
        created_at: now(),
    };
    if !st.store().user_create(&u)? {
        return Ok(back("/users", "That name is taken."));
    }
    Ok(back("/users", &format!("Added {name}.")))
}

pub(super) async fn user_delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Users)?;
    if name.eq_ignore_ascii_case(&p.viewer.user.name) {
        return Ok(back("/users", "You cannot delete yourself."));
    }
    st.store().user_remove(&name)?;
    st.store().sessions_remove_user(&name)?;
    st.store().tokens_remove_user(&name)?;
    Ok(back("/users", "Deleted."))
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    password: String,
}

/// Sets a password and ends every session and API token of that user.
pub(crate) async fn set_password(st: &AppState, name: &str, password: String) -> AppResult<User> {
    st.store().user_get(name)?.ok_or(AppError::NotFound)?;
    if password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Err(AppError::BadRequest("The password is too short.".into()));
    }
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::Internal)?;
    // An update, not a put of the copy read before hashing: a change made meanwhile stays,
    // and a user removed meanwhile is not brought back.
    let u = st
        .store()
        .user_update(name, |u| u.password_hash.clone_from(&hash))?
        .ok_or(AppError::NotFound)?;
    st.store().sessions_remove_user(&u.name)?;
    st.store().tokens_remove_user(&u.name)?;
    Ok(u)
}

pub(super) async fn user_password(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Post<PasswordForm>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Users)?;
    let result = set_password(&st, &name, p.form.password).await.and_then(|u| {
        if u.name == p.viewer.user.name {
            start_session(&st, &u, "/users?msg=Password%20changed.")
        } else {
            Ok(back("/users", "Password set; that user's sessions and tokens ended."))
        }
    });
    edit_or_back(result, "/users")
}
