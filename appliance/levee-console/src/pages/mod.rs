//! The HTML pages: sign-in, first run, and the admin pages, one module per area.
//! `routes` is the map from each path to its handler; what the areas share (the
//! message-and-redirect answers and the config edit path) lives here.

mod account;
mod dashboard;
mod domains;
mod lists;
mod log;
mod one_click;
mod policy;
pub(crate) mod quarantine;
mod queue;
mod reports;
mod sign_in;
mod system;
mod users;

use crate::config_edit;
use crate::views;
use crate::{AppError, AppResult, AppState};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use levee_types::QueueId;
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], views::CSS) }),
        )
        .route(
            "/static/app.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], views::JS)
            }),
        )
        .route("/", get(sign_in::root))
        .route("/login", get(sign_in::login_form).post(sign_in::login))
        .route("/logout", post(sign_in::logout))
        .route("/setup", get(sign_in::setup_form).post(sign_in::setup))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/domains", get(domains::domains).post(domains::domain_save))
        .route("/domains/delete", post(domains::domain_delete))
        .route("/domains/policy", post(domains::domain_policy_save))
        .route("/domains/policy/weight", post(domains::domain_weight_save))
        .route("/policy", get(policy::policy).post(policy::policy_save))
        .route("/policy/weight", post(policy::weight_save))
        .route("/policy/symbols", get(policy::symbols))
        .route("/lists", get(lists::lists).post(lists::list_add))
        .route("/lists/{id}/delete", post(lists::list_delete))
        .route("/quarantine", get(quarantine::quarantine))
        .route("/quarantine/bulk", post(quarantine::quarantine_bulk))
        .route("/quarantine/{id}", get(quarantine::quarantine_view))
        .route("/quarantine/{id}/body", get(quarantine::quarantine_body))
        .route("/quarantine/{id}/attachment/{n}", get(quarantine::quarantine_attachment))
        .route("/quarantine/{id}/{action}", post(quarantine::quarantine_act))
        .route("/log", get(log::log))
        .route("/log/{id}", get(log::log_view))
        .route("/queue", get(queue::queue))
        .route("/queue/{id}/retry", post(queue::queue_retry))
        .route("/queue/{id}/delete", post(queue::queue_delete))
        .route("/reports", get(reports::reports).post(reports::report_add))
        .route("/reports/{id}/delete", post(reports::report_delete))
        .route("/reports/{id}/send", post(reports::report_send))
        .route("/users", get(users::users).post(users::user_add))
        .route("/users/{name}/delete", post(users::user_delete))
        .route("/users/{name}/password", post(users::user_password))
        .route("/account", get(account::account))
        .route("/account/password", post(account::account_password))
        .route("/account/digest", post(account::account_digest))
        .route("/account/tokens", post(account::token_add))
        .route("/account/tokens/{id}/delete", post(account::token_delete))
        .route("/system", get(system::system))
        .route("/system/config", get(system::config_download).post(system::config_restore))
        .route("/system/certificate", post(system::certificate_upload))
        .route("/a/{token}", get(one_click::link_form).post(one_click::link_act))
        .merge(crate::checks::routes())
}

#[derive(Deserialize, Default)]
pub struct Msg {
    #[serde(default)]
    pub msg: Option<String>,
}

pub(crate) fn back(to: &str, msg: &str) -> Response {
    let mut url = String::from(to);
    url.push(if to.contains('?') { '&' } else { '?' });
    url.push_str("msg=");
    for b in msg.bytes() {
        if b.is_ascii_alphanumeric() {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Redirect::to(&url).into_response()
}

/// A form handler's answer after a change: a refusal (a bad value, a config the engine
/// will not load) goes back to the page at `to` as its message; other errors stay errors.
fn edit_or_back(result: AppResult<Response>, to: &str) -> AppResult<Response> {
    match result {
        Err(AppError::BadRequest(m)) => Ok(back(to, &m)),
        other => other,
    }
}

fn qid(s: &str) -> AppResult<QueueId> {
    QueueId::parse(s).ok_or(AppError::NotFound)
}

#[derive(Deserialize)]
struct Empty {}

fn no_config_file() -> AppError {
    AppError::BadRequest(
        "the engine runs without a config file; settings cannot be changed here".into(),
    )
}

pub(crate) fn config_text(st: &AppState) -> AppResult<String> {
    let path = st.engine().config_path().ok_or_else(no_config_file)?;
    std::fs::read_to_string(path)
        .map_err(|e| AppError::Internal(format!("{}: {e}", path.display())))
}

/// Applies an edit to the config file through the engine's validating path, under the
/// engine's writer lock from read to write.
pub(crate) fn edit_config(
    st: &AppState,
    f: impl FnOnce(&mut toml_edit::DocumentMut),
) -> AppResult<()> {
    if st.engine().config_path().is_none() {
        return Err(no_config_file());
    }
    st.engine().edit_config(|text| {
        let mut doc = config_edit::parse(text).map_err(AppError::BadRequest)?;
        f(&mut doc);
        Ok(doc.to_string())
    })
}
