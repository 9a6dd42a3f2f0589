//! Sign-in, sign-out and the first-run set-up.

use super::{config_text, edit_config, Empty};
use crate::auth;
use crate::config_edit::{self, DomainEdit};
use crate::views::page;
use crate::{now, pre_cookie, session_cookie, AppError, AppResult, AppState, Post, PrePost};
use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use levee_store::{Frequency, Role, Session, User};
use maud::{html, Markup};
use serde::Deserialize;

pub(super) async fn root(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
) -> AppResult<Response> {
    if st.store().users_len() == 0 {
        return Ok(Redirect::to("/setup").into_response());
    }
    Ok(match crate::authenticate(&st, &headers, false)? {
        None => Redirect::to("/login"),
        Some(v) if v.is_staff() => Redirect::to("/dashboard"),
        Some(_) => Redirect::to("/my/quarantine"),
    }
    .into_response())
}

pub(super) fn with_pre_cookie(title: &str, body: impl FnOnce(&str) -> Markup) -> Response {
    let (token, cookie) = pre_cookie();
    let mut r = page(title, None, body(&token));
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

fn login_page(error: Option<&str>) -> Response {
    with_pre_cookie("Sign in", |t| {
        html! {
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="_csrf" value=(t);
                label { "User name " input name="username" autocomplete="username" required; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
        }
    })
}

pub(super) async fn login_form(State(st): State<AppState>) -> Response {
    if st.store().users_len() == 0 {
        return Redirect::to("/setup").into_response();
    }
    login_page(None)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

/// The same words for an unknown user and a wrong password.
const BAD_LOGIN: &str = "Wrong user name or password.";

pub(super) async fn login(
    State(st): State<AppState>,
    f: PrePost<LoginForm>,
) -> AppResult<Response> {
    let store = st.store();
    let name = f.form.username.trim().to_lowercase();
    let t = now();
    let (pk, sk) = (auth::pair_key(&name, f.peer), auth::source_throttle_key(f.peer));
    // Counted before the slow password check, atomically: read-then-write around the
    // check let parallel guesses share one count. A success gives its count back.
    let reserve = |key: &str, limit| -> AppResult<bool> {
        let (before, _) = store.throttle_update(key, |r| auth::reserve(r, limit, t))?;
        Ok(auth::under_limit(&before, limit, t))
    };
    let pair_ok = reserve(&pk, auth::PAIR_LIMIT)?;
    if !pair_ok || !reserve(&sk, auth::SOURCE_LIMIT)? {
        if pair_ok {
            store.throttle_update(&pk, |r| auth::release(r, t))?;
        }
        tracing::warn!(user = %name, source = %f.peer, "console login throttled");
        let mut r =
            login_page(Some("Too many failed attempts from here. Wait 15 minutes and try again."));
        *r.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        return Ok(r);
    }
    let user = store.user_get(&name)?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| st.dummy_hash().to_string());
    let password = f.form.password;
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(user = %name, source = %f.peer, "console login failed");
        let mut r = login_page(Some(BAD_LOGIN));
        *r.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        return Ok(r);
    };
    store.throttle_clear(&pk)?;
    store.throttle_update(&sk, |r| auth::release(r, t))?;
    tracing::info!(user = %user.name, source = %f.peer, "console login");
    start_session(&st, &user, "/")
}

/// A fresh session (never one the browser brought along) and a redirect.
pub(crate) fn start_session(st: &AppState, user: &User, to: &str) -> AppResult<Response> {
    let id = auth::random_token();
    let t = now();
    st.store().session_put(
        &auth::digest(&id),
        &Session {
            user: user.name.clone(),
            csrf: auth::random_token(),
            created_at: t,
            last_seen: t,
        },
    )?;
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().append(header::SET_COOKIE, session_cookie(&id));
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-levee-pre=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(r)
}

pub(super) async fn logout(State(st): State<AppState>, p: Post<Empty>) -> AppResult<Response> {
    if let Some((digest, _)) = &p.viewer.session {
        st.store().session_remove(digest)?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(header::SET_COOKIE, crate::clear_session_cookie());
    Ok(r)
}

fn setup_page(st: &AppState, error: Option<&str>) -> Response {
    let c = st.engine().config();
    let first = c.domains.first();
    with_pre_cookie("First-run setup", |t| {
        html! {
            p { "Welcome to Levee. Choose the administrator's password (there is no default), the appliance's host name and the first domain it filters." }
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/setup" {
                input type="hidden" name="_csrf" value=(t);
                fieldset {
                    legend { "Setup code" }
                    p { "Shown on the appliance's screen and in its log, and kept in " code { "setup-code" } " in the data directory: proof that you are the one who installed it." }
                    label { "Setup code " input name="code" autocomplete="off" required; }
                }
                fieldset {
                    legend { "Administrator" }
                    label { "User name: " b { "admin" } }
                    label { "Password (at least " (auth::MIN_PASSWORD_LEN) " characters) " input name="password" type="password" autocomplete="new-password" required; }
                    label { "Repeat " input name="password2" type="password" autocomplete="new-password" required; }
                }
                fieldset {
                    legend { "Appliance" }
                    label { "Host name (the name in your MX record) " input name="hostname" value=(c.hostname.0) required; }
                }
                fieldset {
                    legend { "First domain" }
                    label { "Domain " input name="domain" value=(first.map(|d| d.domain().to_string()).unwrap_or_default()) required; }
                    label { "Downstream mail server (host:port) " input name="downstream" value=(first.and_then(|d| d.downstream.as_ref()).map(|d| d.to_string()).unwrap_or_default()) placeholder="mail.internal:25"; }
                }
                button type="submit" { "Save and continue" }
            }
        }
    })
}

pub(super) async fn setup_form(State(st): State<AppState>) -> Response {
    if st.store().users_len() > 0 {
        return Redirect::to("/login").into_response();
    }
    setup_page(&st, None)
}

#[derive(Deserialize)]
pub(super) struct SetupForm {
    #[serde(default)]
    code: String,
    password: String,
    password2: String,
    hostname: String,
    domain: String,
    #[serde(default)]
    downstream: String,
}

pub(super) async fn setup(
    State(st): State<AppState>,
    f: PrePost<SetupForm>,
) -> AppResult<Response> {
    if st.store().users_len() > 0 {
        return Err(AppError::Forbidden);
    }
    let f = f.form;
    let code = f.code.trim().to_ascii_uppercase().replace([' ', '-'], "");
    if !auth::ct_eq(&code, st.setup_code()) {
        return Ok(setup_page(&st, Some("The setup code is not right.")));
    }
    if f.password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Ok(setup_page(&st, Some("The password is too short.")));
    }
    if f.password != f.password2 {
        return Ok(setup_page(&st, Some("The passwords differ.")));
    }
    // Validate the config change before creating anyone.
    let domain = DomainEdit {
        name: f.domain.trim().to_lowercase(),
        downstream: f.downstream.trim().to_string(),
        tls: "opportunistic".into(),
        enabled: true,
    };
    let apply = |doc: &mut toml_edit::DocumentMut| {
        config_edit::set_hostname(doc, f.hostname.trim());
        config_edit::upsert_domain(doc, &domain);
    };
    let mut doc = config_edit::parse(&config_text(&st)?).map_err(AppError::Internal)?;
    apply(&mut doc);
    if let Err(e) = levee_config::Config::parse(&doc.to_string(), "setup") {
        return Ok(setup_page(&st, Some(&e.to_string())));
    }
    let password = f.password;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::Internal)?;
    let admin = User {
        name: "admin".into(),
        role: Role::Admin,
        password_hash: hash,
        addresses: vec![],
        digest: Frequency::Never,
        digest_last_sent: 0,
        created_at: now(),
    };
    // Only the first of two racing set-ups wins.
    if !st.store().user_create(&admin)? {
        return Err(AppError::Forbidden);
    }
    // Applied again under the writer lock: the file may have changed during the hash.
    edit_config(&st, apply)?;
    let _ = std::fs::remove_file(st.setup_code_path());
    tracing::info!(domain = %f.domain, "first-run setup done");
    start_session(&st, &admin, &format!("/mx?domain={}", f.domain.trim().to_lowercase()))
}
