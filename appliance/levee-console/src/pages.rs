//! The HTML pages: sign-in, first run, and the admin pages.

use crate::auth::{self, Perm};
use crate::config_edit::{self, DomainEdit};
use crate::stats;
use crate::views::{self, button, csrf, page, time};
use crate::{
    now, pre_cookie, session_cookie, AppError, AppResult, AppState, Post, PrePost, Viewer,
};
use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use levee_store::{Frequency, QuarantineQuery, ReportSchedule, Role, Session, User};
use levee_types::list::ListEntry;
use levee_types::QueueId;
use maud::{html, Markup};
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
        .route("/", get(root))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/setup", get(setup_form).post(setup))
        .route("/dashboard", get(dashboard))
        .route("/domains", get(domains).post(domain_save))
        .route("/domains/delete", post(domain_delete))
        .route("/domains/policy", post(domain_policy_save))
        .route("/domains/policy/weight", post(domain_weight_save))
        .route("/policy", get(policy).post(policy_save))
        .route("/policy/weight", post(weight_save))
        .route("/policy/symbols", get(symbols))
        .route("/lists", get(lists).post(list_add))
        .route("/lists/{id}/delete", post(list_delete))
        .route("/quarantine", get(quarantine))
        .route("/quarantine/bulk", post(quarantine_bulk))
        .route("/quarantine/{id}", get(quarantine_view))
        .route("/quarantine/{id}/body", get(quarantine_body))
        .route("/quarantine/{id}/attachment/{n}", get(quarantine_attachment))
        .route("/quarantine/{id}/{action}", post(quarantine_act))
        .route("/log", get(log))
        .route("/log/{id}", get(log_view))
        .route("/queue", get(queue))
        .route("/queue/{id}/retry", post(queue_retry))
        .route("/queue/{id}/delete", post(queue_delete))
        .route("/reports", get(reports).post(report_add))
        .route("/reports/{id}/delete", post(report_delete))
        .route("/reports/{id}/send", post(report_send))
        .route("/users", get(users).post(user_add))
        .route("/users/{name}/delete", post(user_delete))
        .route("/users/{name}/password", post(user_password))
        .route("/account", get(account))
        .route("/account/password", post(account_password))
        .route("/account/digest", post(account_digest))
        .route("/account/tokens", post(token_add))
        .route("/account/tokens/{id}/delete", post(token_delete))
        .route("/system", get(system))
        .route("/system/config", get(config_download).post(config_restore))
        .route("/system/certificate", post(certificate_upload))
        .route("/a/{token}", get(link_form).post(link_act))
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

// ---- sign-in, first run ---------------------------------------------------------------

async fn root(State(st): State<AppState>, headers: axum::http::HeaderMap) -> AppResult<Response> {
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

fn with_pre_cookie(title: &str, body: impl FnOnce(&str) -> Markup) -> Response {
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

async fn login_form(State(st): State<AppState>) -> Response {
    if st.store().users_len() == 0 {
        return Redirect::to("/setup").into_response();
    }
    login_page(None)
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// The same words for an unknown user and a wrong password.
const BAD_LOGIN: &str = "Wrong user name or password.";

async fn login(State(st): State<AppState>, f: PrePost<LoginForm>) -> AppResult<Response> {
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

#[derive(Deserialize)]
struct Empty {}

async fn logout(State(st): State<AppState>, p: Post<Empty>) -> AppResult<Response> {
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

async fn setup_form(State(st): State<AppState>) -> Response {
    if st.store().users_len() > 0 {
        return Redirect::to("/login").into_response();
    }
    setup_page(&st, None)
}

#[derive(Deserialize)]
struct SetupForm {
    #[serde(default)]
    code: String,
    password: String,
    password2: String,
    hostname: String,
    domain: String,
    #[serde(default)]
    downstream: String,
}

async fn setup(State(st): State<AppState>, f: PrePost<SetupForm>) -> AppResult<Response> {
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

// ---- dashboard ---------------------------------------------------------------------------

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

async fn dashboard(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let s = stats::stats(&st, 24)?;
    let queue = st.store().queue_all()?;
    let deferred = queue.iter().filter(|q| !q.held).count();
    let held = st.store().quarantine_len();
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
                    tr { td { "Messages logged" } td { (st.store().log_len()) } }
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

// ---- domains -----------------------------------------------------------------------------

async fn domains(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let c = st.engine().config();
    let edit = v.can(Perm::Settings);
    Ok(page(
        "Domains",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            table {
                tr { th { "Domain" } th { "Downstream" } th { "TLS" } th { "Filtering" } th { "State" } th { "Policy (tag / quarantine / reject)" } th { "Checks" } @if edit { th { "Edit" } } }
                @for d in &c.domains {
                    @let name = d.domain().to_string();
                    @let eff = c.policy_for(d.domain());
                    @let own = d.policy.clone().unwrap_or_default();
                    tr {
                        td { (name) }
                        td { (d.downstream.as_ref().map(|x| x.to_string()).unwrap_or_else(|| "(none)".into())) }
                        td { (format!("{:?}", d.tls).to_lowercase()) }
                        td { (if d.enabled { "on" } else { "off" }) }
                        td { @if d.ready() { span.ok { "ready" } } @else { span.fail { "set-up incomplete (451)" } } }
                        td.domain-policy {
                            (threshold(eff.tag_at, own.tag_at)) " / " (threshold(eff.quarantine_at, own.quarantine_at)) " / " (threshold(eff.reject_at, own.reject_at))
                            @if !own.weights.is_empty() {
                                br; "own weights: "
                                @for (i, (sym, w)) in own.weights.iter().enumerate() { @if i > 0 { ", " } code { (sym) } " " (w) }
                            }
                            @if own.is_empty() { br; small { "(global policy)" } }
                        }
                        td { a href=(format!("/mx?domain={name}")) { "MX" } " · " a href=(format!("/downstream?domain={name}")) { "downstream" } }
                        @if edit { td {
                            form.inline method="post" action="/domains" {
                                (csrf(&v))
                                input type="hidden" name="name" value=(name);
                                input name="downstream" size="18" value=(d.downstream.as_ref().map(|x| x.to_string()).unwrap_or_default());
                                select name="tls" { @for t in ["none", "opportunistic", "required"] {
                                    option value=(t) selected[format!("{:?}", d.tls).eq_ignore_ascii_case(t)] { (t) } } }
                                label.inline { input type="checkbox" name="enabled" value="on" checked[d.enabled]; " on" }
                                button type="submit" { "Save" }
                            }
                            form.inline method="post" action="/domains/delete" {
                                (csrf(&v)) input type="hidden" name="name" value=(name);
                                button.danger type="submit" data-confirm="Remove this domain?" { "Remove" }
                            }
                        } }
                    }
                }
            }
            @if edit && !c.domains.is_empty() {
                h2 { "Policy per domain" }
                p { "A domain may have its own thresholds and weights; what it leaves empty follows the "
                    a href="/policy" { "global policy" } " (tag " (c.policy.tag_at) ", quarantine " (c.policy.quarantine_at) ", reject " (c.policy.reject_at)
                    "). Its weights are merged over the global ones. A message for several domains gets each domain's own verdict." }
                @for d in &c.domains {
                    @let name = d.domain().to_string();
                    @let own = d.policy.clone().unwrap_or_default();
                    h3 { (name) }
                    form.inline method="post" action="/domains/policy" {
                        (csrf(&v))
                        input type="hidden" name="name" value=(name);
                        @for (field, label, val, global) in [("tag_at", "Tag at", own.tag_at, c.policy.tag_at), ("quarantine_at", "Quarantine at", own.quarantine_at, c.policy.quarantine_at), ("reject_at", "Reject at", own.reject_at, c.policy.reject_at)] {
                            label { (label) " " input name=(field) size="5" placeholder=(global) value=(val.map(|x| x.to_string()).unwrap_or_default()); }
                        }
                        button type="submit" { "Save" }
                        button type="submit" name="clear" value="on" data-confirm="Remove this domain's own thresholds and weights?" { "Use the global policy" }
                    }
                    form.inline method="post" action="/domains/policy/weight" {
                        (csrf(&v))
                        input type="hidden" name="name" value=(name);
                        input name="symbol" placeholder="SYMBOL" required;
                        input name="weight" placeholder="weight (empty removes)";
                        button type="submit" { "Set weight" }
                    }
                }
            }
            @if edit {
                h2 { "Add a domain" }
                form id="add-domain" method="post" action="/domains" {
                    (csrf(&v))
                    label { "Domain " input name="name" required; }
                    label { "Downstream (host:port; empty = set up later) " input name="downstream"; }
                    label { "TLS to downstream " select name="tls" { option value="opportunistic" { "opportunistic" } option value="required" { "required" } option value="none" { "none" } } }
                    input type="hidden" name="enabled" value="on";
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct DomainForm {
    name: String,
    #[serde(default)]
    downstream: String,
    #[serde(default = "default_tls")]
    tls: String,
    #[serde(default)]
    enabled: Option<String>,
}

fn default_tls() -> String {
    "opportunistic".into()
}

async fn domain_save(State(st): State<AppState>, p: Post<DomainForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let f = p.form;
    let edit = DomainEdit {
        name: f.name.trim().to_lowercase(),
        downstream: f.downstream.trim().into(),
        tls: f.tls,
        enabled: f.enabled.is_some(),
    };
    let result = edit_config(&st, |doc| config_edit::upsert_domain(doc, &edit));
    edit_or_back(result.map(|()| back("/domains", &format!("Saved {}.", edit.name))), "/domains")
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn domain_delete(State(st): State<AppState>, p: Post<NameForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    edit_config(&st, |doc| {
        config_edit::remove_domain(doc, &p.form.name);
    })?;
    Ok(back("/domains", "Removed."))
}

/// One effective threshold, marked when it is the domain's own.
fn threshold(effective: f64, own: Option<f64>) -> Markup {
    html! { @if own.is_some() { strong title="this domain's own value" { (effective) } } @else { (effective) } }
}

#[derive(Deserialize)]
struct DomainPolicyForm {
    name: String,
    #[serde(default)]
    tag_at: String,
    #[serde(default)]
    quarantine_at: String,
    #[serde(default)]
    reject_at: String,
    /// Present: remove every override of the domain.
    #[serde(default)]
    clear: Option<String>,
}

async fn domain_policy_save(
    State(st): State<AppState>,
    p: Post<DomainPolicyForm>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let f = p.form;
    let name = f.name.trim().to_lowercase();
    // Empty: follow the global threshold.
    let num = |s: &str| match s.trim() {
        "" => Ok(None),
        s => s.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some).ok_or(()),
    };
    let (Ok(tag), Ok(q), Ok(rej)) = (num(&f.tag_at), num(&f.quarantine_at), num(&f.reject_at))
    else {
        return Ok(back("/domains", "Thresholds must be numbers (or empty for the global value)."));
    };
    if !st.engine().config().domains.iter().any(|d| d.domain().as_str() == name) {
        return Ok(back("/domains", &format!("No domain {name}.")));
    }
    let clear = f.clear.is_some();
    let thresholds = if clear { None } else { Some([tag, q, rej]) };
    let result = edit_config(&st, |doc| {
        config_edit::set_domain_thresholds(doc, &name, thresholds);
    });
    edit_or_back(
        result.map(|()| back("/domains", &format!("Saved the policy of {name}."))),
        "/domains",
    )
}

#[derive(Deserialize)]
struct DomainWeightForm {
    name: String,
    symbol: String,
    #[serde(default)]
    weight: String,
}

async fn domain_weight_save(
    State(st): State<AppState>,
    p: Post<DomainWeightForm>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let name = p.form.name.trim().to_lowercase();
    let sym = p.form.symbol.trim().to_string();
    if sym.is_empty() || !sym.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Ok(back("/domains", "A symbol is letters, digits and underscores."));
    }
    let w = match p.form.weight.trim() {
        "" => None,
        s => match s.parse::<f64>() {
            Ok(w) if w.is_finite() => Some(w),
            _ => return Ok(back("/domains", "A weight must be a number.")),
        },
    };
    if !st.engine().config().domains.iter().any(|d| d.domain().as_str() == name) {
        return Ok(back("/domains", &format!("No domain {name}.")));
    }
    let result = edit_config(&st, |doc| config_edit::set_domain_weight(doc, &name, &sym, w));
    edit_or_back(
        result.map(|()| back("/domains", &format!("Saved the weights of {name}."))),
        "/domains",
    )
}

// ---- policy ------------------------------------------------------------------------------

async fn policy(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let c = st.engine().config();
    let p = &c.policy;
    let edit = v.can(Perm::Settings);
    let health = st.engine().check_health();
    let countries: Vec<String> = st
        .store()
        .list_all()?
        .into_iter()
        .filter(|e| e.entry.starts_with("block country"))
        .map(|e| e.entry)
        .collect();
    Ok(page(
        "Policy",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            h2 { "Thresholds" }
            p { "A message scoring at or above a threshold gets that action. Tag adds a header; quarantine holds it here; reject refuses it at the end of DATA (no bounce)." }
            form method="post" action="/policy" {
                (csrf(&v))
                label { "Tag at " input name="tag_at" value=(p.tag_at) disabled[!edit]; }
                label { "Quarantine at " input name="quarantine_at" value=(p.quarantine_at) disabled[!edit]; }
                label { "Reject at " input name="reject_at" value=(p.reject_at) disabled[!edit]; }
                label { "Keep quarantined mail (days) " input name="quarantine_days" value=(p.quarantine_days) disabled[!edit]; }
                @if edit { button type="submit" { "Save" } }
            }
            h2 { "Weights" }
            p { "Overrides of the built-in weight of a finding (symbol). Negative weights mean trust. "
                a href="/policy/symbols" { "Every known symbol" } " with its weight and description; "
                a href="/policy/rules" { "SpamAssassin-language rules" } ": what loaded, and your local rules." }
            table {
                tr { th { "Symbol" } th { "Weight" } }
                @for (s, w) in &p.weights { tr { td { (s) } td { (w) } } }
            }
            @if edit {
                form method="post" action="/policy/weight" {
                    (csrf(&v))
                    input name="symbol" placeholder="SYMBOL" required;
                    input name="weight" placeholder="weight (empty removes)";
                    button type="submit" { "Set" }
                }
            }
            h2 { "Country database" }
            p {
                @match &c.checks.geoip_db {
                    Some(path) => { "In use: " code { (path.display()) } ". Findings " code { "COUNTRY_XX" } " can be weighted above; block whole countries on the lists page." }
                    None => { "None: countries are not checked. Upload a MaxMind-format country database (e.g. GeoLite2-Country.mmdb)." }
                }
            }
            @if edit {
                div #geoip-upload data-csrf=(v.csrf()) {
                    input #geoip-file type="file" accept=".mmdb";
                    button #geoip-send type="button" { "Upload" }
                    span #geoip-status {}
                }
            }
            h2 { "Blocked countries" }
            @if countries.is_empty() { p { "None." } } @else { ul { @for c in &countries { li { (c) } } } }
            p { "Add " code { "block country XX" } " on the " a href="/lists" { "allow/block lists" } " page." }
            h2 { "DNS lists" }
            @if c.checks.dnsbl.is_empty() && c.checks.uribl.is_empty() {
                p { "No DNS lists are configured (" code { "[[checks.dnsbl]]" } " and " code { "[[checks.uribl]]" } " in the configuration)." }
            } @else {
                table {
                    tr { th { "Kind" } th { "Zone" } th { "Symbol" } th { "Weight" } th { "Health" } }
                    @for (kind, l) in c.checks.dnsbl.iter().map(|l| ("IP", l)).chain(c.checks.uribl.iter().map(|l| ("URI", l))) {
                        @let problem = health.iter().find(|h| h.source == l.zone.0);
                        tr {
                            td { (kind) } td { (l.zone.0) } td { (l.symbol.0) } td { (l.weight) }
                            td {
                                @match problem {
                                    Some(h) => { "Problem: " (h.message) " (" (h.count) " times, last " (time(h.last_seen)) ")" }
                                    None => { "OK: no refusals or timeouts since the engine started" }
                                }
                            }
                        }
                    }
                }
            }
            @let others: Vec<_> = health.iter().filter(|h| !c.checks.dnsbl.iter().chain(&c.checks.uribl).any(|l| l.zone.0 == h.source)).collect();
            @if !others.is_empty() {
                h3 { "Other check warnings" }
                ul { @for h in &others { li { (h.source) ": " (h.message) " (" (h.count) " times, last " (time(h.last_seen)) ")" } } }
            }
        },
    ))
}

#[derive(Deserialize)]
struct SymbolQuery {
    #[serde(default)]
    q: String,
}

/// Every symbol the filter knows: Levee's own and each scored SpamAssassin-language rule, with
/// the weight the global policy gives it (an override in bold) and what it means.
async fn symbols(
    State(st): State<AppState>,
    v: Viewer,
    Query(f): Query<SymbolQuery>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let c = st.engine().config();
    let rules = st.engine().sa_rules();
    let defaults = levee_filter::score::Policy::default();
    let mut rows: Vec<(String, f64, bool, String)> = levee_filter::score::DEFAULT_WEIGHTS
        .iter()
        .map(|(s, w)| ((*s).to_owned(), *w, false, "Levee".to_owned()))
        .collect();
    if let Some(r) = &rules {
        rows.extend(r.set.symbols().map(|(name, score, describe)| {
            let weight = score * levee_filter::sa::SCORE_SCALE;
            (format!("{}{name}", levee_filter::sa::PREFIX), weight, false, describe.to_owned())
        }));
    }
    for row in &mut rows {
        if let Some(w) = c.policy.weights.get(&row.0) {
            (row.1, row.2) = (*w, true);
        }
    }
    let q = f.q.trim().to_ascii_lowercase();
    rows.retain(|r| {
        q.is_empty()
            || r.0.to_ascii_lowercase().contains(&q)
            || r.3.to_ascii_lowercase().contains(&q)
    });
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let source = match &rules {
        Some(r) => {
            let dirs: Vec<String> = r.dirs.iter().map(|d| d.display().to_string()).collect();
            format!(
                "{} SpamAssassin-language rules from {} ({} skipped); scores x{} (Levee quarantines at {}, SpamAssassin's threshold is 5).",
                r.report.loaded,
                dirs.join(", "),
                r.report.skipped.values().map(Vec::len).sum::<usize>(),
                levee_filter::sa::SCORE_SCALE,
                defaults.quarantine_at
            )
        }
        None => "No SpamAssassin-language rules are loaded (install the spamassassin package, or see [rules] in the configuration).".to_owned(),
    };
    Ok(page(
        "Symbols",
        Some(&v),
        html! {
            p { (source) " " a href="/policy/rules" { "Rules" } ": skip reasons and local rules." }
            form method="get" action="/policy/symbols" {
                input name="q" value=(f.q) placeholder="name or words";
                button type="submit" { "Filter" }
            }
            p { (rows.len()) " symbols. Weights in bold are overrides set on the " a href="/policy" { "policy" } " page." }
            table {
                tr { th { "Symbol" } th { "Weight" } th { "Meaning" } }
                @for (name, weight, over, describe) in &rows {
                    tr {
                        td { code { (name) } }
                        td { @if *over { b { (format!("{weight:.2}")) } } @else { (format!("{weight:.2}")) } }
                        td { (describe) }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct PolicyForm {
    tag_at: String,
    quarantine_at: String,
    reject_at: String,
    quarantine_days: String,
}

async fn policy_save(State(st): State<AppState>, p: Post<PolicyForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let f = p.form;
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|x| x.is_finite());
    let (Some(tag), Some(q), Some(rej), Ok(days)) = (
        num(&f.tag_at),
        num(&f.quarantine_at),
        num(&f.reject_at),
        f.quarantine_days.trim().parse::<i64>(),
    ) else {
        return Ok(back("/policy", "Thresholds and days must be numbers."));
    };
    let result = edit_config(&st, |doc| config_edit::set_thresholds(doc, tag, q, rej, days));
    edit_or_back(result.map(|()| back("/policy", "Saved.")), "/policy")
}

#[derive(Deserialize)]
struct WeightForm {
    symbol: String,
    #[serde(default)]
    weight: String,
}

async fn weight_save(State(st): State<AppState>, p: Post<WeightForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let sym = p.form.symbol.trim().to_string();
    if sym.is_empty() || !sym.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Ok(back("/policy", "A symbol is letters, digits and underscores."));
    }
    let w = match p.form.weight.trim() {
        "" => None,
        s => Some(
            s.parse::<f64>().map_err(|_| AppError::BadRequest("weight must be a number".into()))?,
        ),
    };
    let result = edit_config(&st, |doc| config_edit::set_weight(doc, &sym, w));
    edit_or_back(result.map(|()| back("/policy", "Saved.")), "/policy")
}

// ---- allow/block lists ---------------------------------------------------------------------

async fn lists(State(st): State<AppState>, v: Viewer, Query(m): Query<Msg>) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let all = st.store().list_all()?;
    let edit = v.can(Perm::Lists);
    Ok(page(
        "Allow and block lists",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            p { "Entries look like " code { "allow sender alice@example.com" } ", " code { "block sender-domain spam.example" } ", " code { "block ip 192.0.2.0/24" } ", " code { "block country XX" } ", optionally followed by " code { "for domain:example.test" } " or " code { "for rcpt:bob@example.test" } ". The most specific entry wins." }
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
struct ListForm {
    entry: String,
    #[serde(default)]
    note: String,
}

async fn list_add(State(st): State<AppState>, p: Post<ListForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Lists)?;
    let entry: ListEntry = match p.form.entry.trim().parse() {
        Ok(e) => e,
        Err(e) => return Ok(back("/lists", &format!("Not added: {e}"))),
    };
    st.engine().add_list_entry(&entry, &p.form.note, &p.viewer.user.name)?;
    Ok(back("/lists", "Added."))
}

async fn list_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Lists)?;
    st.engine().remove_list_entry(id)?;
    Ok(back("/lists", "Removed."))
}

// ---- quarantine ----------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone)]
pub struct SearchForm {
    #[serde(default)]
    pub recipient: String,
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub subject: String,
    /// YYYY-MM-DD
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub min_score: String,
    #[serde(default)]
    pub max_score: String,
    #[serde(default)]
    pub page: usize,
    #[serde(default)]
    pub msg: Option<String>,
}

/// Days since 1970-01-01 for a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn parse_date(s: &str) -> Option<u64> {
    let mut it = s.trim().split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d) * 86_400).ok()
}

pub const PAGE: usize = 50;

impl SearchForm {
    pub fn query(&self) -> QuarantineQuery {
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        QuarantineQuery {
            recipients: None,
            recipient: text(&self.recipient),
            sender: text(&self.sender),
            subject: text(&self.subject),
            since: parse_date(&self.since),
            until: parse_date(&self.until).map(|t| t + 86_399),
            min_score: self.min_score.trim().parse().ok(),
            max_score: self.max_score.trim().parse().ok(),
            offset: self.page * PAGE,
            limit: PAGE,
        }
    }
}

/// The search form, the result table and the bulk actions; shared by the staff and
/// end-user quarantine pages.
pub fn quarantine_table(
    v: &Viewer,
    action: &str,
    f: &SearchForm,
    rows: &[levee_store::QuarantineEntry],
    total: usize,
) -> Markup {
    let act = rows.iter().any(|e| v.may_act(&e.rcpt_to));
    html! {
        (views::notice(f.msg.as_deref()))
        form.search method="get" action=(action) {
            input name="recipient" placeholder="recipient" value=(f.recipient);
            input name="sender" placeholder="sender" value=(f.sender);
            input name="subject" placeholder="subject" value=(f.subject);
            input name="since" placeholder="since YYYY-MM-DD" size="12" value=(f.since);
            input name="until" placeholder="until YYYY-MM-DD" size="12" value=(f.until);
            input name="min_score" placeholder="min score" size="6" value=(f.min_score);
            input name="max_score" placeholder="max score" size="6" value=(f.max_score);
            button type="submit" { "Search" }
        }
        p { (total) " message" (if total == 1 { "" } else { "s" }) "." }
        @if act {
            form id="bulk" method="post" action="/quarantine/bulk" {
                (csrf(v))
                select name="action" {
                    option value="release" { "Release" }
                    option value="release-allow" { "Release and allow sender" }
                    option value="report" { "Report as spam" }
                    option value="delete" { "Delete" }
                }
                button type="submit" { "Apply to selected" }
            }
        }
        table.quarantine {
            tr { @if act { th { input id="select-all" type="checkbox" title="select all"; } } th { "Received" } th { "From" } th { "To" } th { "Subject" } th { "Score" } }
            @for e in rows {
                tr {
                    @if act { td { @if v.may_act(&e.rcpt_to) { input type="checkbox" name="ids" value=(e.id.as_str()) form="bulk"; } } }
                    td { (time(e.received_at)) }
                    td { (if e.from_header.is_empty() { &e.mail_from } else { &e.from_header }) }
                    td { (e.rcpt_to.join(", ")) }
                    td { a href=(format!("/quarantine/{}", e.id)) { (if e.subject.is_empty() { "(no subject)" } else { &e.subject }) } }
                    td { (format!("{:.1}", e.score)) }
                }
            }
        }
        @if total > (f.page + 1) * PAGE {
            a href=(format!("{action}?page={}&recipient={}&sender={}&subject={}", f.page + 1, enc(&f.recipient), enc(&f.sender), enc(&f.subject))) { "Next page" }
        }
    }
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn quarantine(
    State(st): State<AppState>,
    v: Viewer,
    Query(f): Query<SearchForm>,
) -> AppResult<Response> {
    if !v.is_staff() {
        return Ok(Redirect::to("/my/quarantine").into_response());
    }
    let (rows, total) = st.store().quarantine_search(&f.query())?;
    Ok(page("Quarantine", Some(&v), quarantine_table(&v, "/quarantine", &f, &rows, total)))
}

/// The entry, if it exists and this viewer may see it; otherwise "not found" either way.
fn visible(st: &AppState, v: &Viewer, id: &str) -> AppResult<levee_store::QuarantineEntry> {
    let id = qid(id)?;
    let e = st.store().quarantine_get(&id)?.ok_or(AppError::NotFound)?;
    if !v.may_see(&e.rcpt_to) {
        return Err(AppError::NotFound);
    }
    Ok(e)
}

async fn quarantine_view(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let e = visible(&st, &v, &id)?;
    let raw = st.engine().message_bytes(&e.id).await?;
    let m = crate::message::view(&raw);
    let base = format!("/quarantine/{}", e.id);
    let act = v.may_act(&e.rcpt_to);
    Ok(page(
        "Quarantined message",
        Some(&v),
        html! {
            table {
                tr { th { "Subject" } td { (m.subject) } }
                tr { th { "From (header)" } td { (m.from) } }
                tr { th { "To (header)" } td { (m.to) } }
                tr { th { "Date" } td { (m.date) } }
                tr { th { "Envelope sender" } td { (if e.mail_from.is_empty() { "<>" } else { &e.mail_from }) } }
                tr { th { "Envelope recipients" } td { (e.rcpt_to.join(", ")) } }
                tr { th { "Client" } td { (e.client_ip) } }
                tr { th { "Received" } td { (time(e.received_at)) } }
                tr { th { "Expires" } td { (time(e.expires_at)) } }
                tr { th { "Score" } td { (format!("{:.2}", e.score)) " (" (e.action) ")" } }
            }
            @if act {
                p.actions {
                    (button(&v, &format!("{base}/release"), "Release", ""))
                    " " (button(&v, &format!("{base}/release-allow"), "Release and allow sender", ""))
                    " " (button(&v, &format!("{base}/report"), "Report as spam", ""))
                    " " (button(&v, &format!("{base}/delete"), "Delete", "danger"))
                }
            }
            h2 { "Findings" }
            table { tr { th { "Symbol" } th { "Detail" } th { "Weight" } }
                @for (s, d, w) in &e.findings { tr { td { (s) } td { (d) } td { (format!("{w:.2}")) } } } }
            h2 { "Content (safe view: scripts and remote content blocked)" }
            iframe.message sandbox="" src=(format!("{base}/body")) title="message content" referrerpolicy="no-referrer" {}
            @if !m.attachments.is_empty() {
                h2 { "Attachments (download only)" }
                ul { @for a in &m.attachments {
                    li { a href=(format!("{base}/attachment/{}", a.index)) download { (crate::message::safe_filename(&a.name, a.index)) } " — " (a.content_type) ", " (a.size) " bytes" }
                } }
            }
        },
    ))
}

async fn quarantine_body(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let e = visible(&st, &v, &id)?;
    let raw = st.engine().message_bytes(&e.id).await?;
    let m = crate::message::view(&raw);
    let fragment = match (m.html, m.text) {
        (Some(h), _) => h,
        (None, Some(t)) => format!("<pre>{}</pre>", crate::sanitize::escape(&t)),
        (None, None) => "<p>(no text)</p>".into(),
    };
    let mut r = axum::response::Html(crate::sanitize::safe_document(&fragment)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(crate::FRAME_CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
    Ok(r)
}

async fn quarantine_attachment(
    State(st): State<AppState>,
    v: Viewer,
    Path((id, n)): Path<(String, usize)>,
) -> AppResult<Response> {
    let e = visible(&st, &v, &id)?;
    let raw = st.engine().message_bytes(&e.id).await?;
    let view = crate::message::view(&raw);
    let a = view.attachments.get(n).ok_or(AppError::NotFound)?;
    let bytes = crate::message::attachment(&raw, n).ok_or(AppError::NotFound)?;
    let name = crate::message::safe_filename(&a.name, n);
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// One action on one message, after the object check.
pub(crate) async fn act_on(st: &AppState, v: &Viewer, id: &str, action: &str) -> AppResult<()> {
    let e = visible(st, v, id)?;
    if !v.may_act(&e.rcpt_to) {
        return Err(if v.is_staff() { AppError::Forbidden } else { AppError::NotFound });
    }
    let engine = st.engine();
    let by = v.user.name.as_str();
    // Staff act on the whole message; an end user only for their own addresses, so
    // the other recipients of the same message keep it held.
    let staff = v.can(Perm::QuarantineAll);
    match action {
        "release" if staff => engine.quarantine_release(&e.id, false, by).await?,
        "release" => engine.quarantine_release_for(&e.id, &v.user.addresses, by).await?,
        "release-allow" if staff => engine.quarantine_release(&e.id, true, by).await?,
        "release-allow" => {
            allow_for(st, &e, &v.user.addresses, by)?;
            engine.quarantine_release_for(&e.id, &v.user.addresses, by).await?
        }
        // A report is a vote: staff vote as admins, an end user for their own addresses.
        "report" if staff => engine.report_spam(&e.id, by).await?,
        "report" => engine.report_spam_for(&e.id, &v.user.addresses).await?,
        "delete" if staff => engine.quarantine_delete(&e.id, by).await?,
        "delete" => engine.quarantine_delete_for(&e.id, &v.user.addresses, by).await?,
        _ => return Err(AppError::NotFound),
    }
    Ok(())
}

pub(crate) fn allow_for(
    st: &AppState,
    e: &levee_store::QuarantineEntry,
    addresses: &[String],
    by: &str,
) -> AppResult<()> {
    if e.mail_from.is_empty() {
        return Ok(());
    }
    for r in e.rcpt_to.iter().filter(|r| addresses.iter().any(|a| a.eq_ignore_ascii_case(r))) {
        let entry: ListEntry =
            format!("allow sender {} for rcpt:{}", e.mail_from.to_lowercase(), r.to_lowercase())
                .parse::<ListEntry>()
                .map_err(|e| AppError::BadRequest(e.to_string()))?;
        st.engine().add_list_entry(&entry, "released from quarantine", by)?;
    }
    Ok(())
}

fn done_word(action: &str) -> &'static str {
    match action {
        "release" | "release-allow" => "Released",
        "report" => "Reported as spam",
        _ => "Deleted",
    }
}

async fn quarantine_act(
    State(st): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    p: Post<Empty>,
) -> AppResult<Response> {
    act_on(&st, &p.viewer, &id, &action).await?;
    let to = if p.viewer.is_staff() { "/quarantine" } else { "/my/quarantine" };
    Ok(back(to, &format!("{}.", done_word(&action))))
}

#[derive(Deserialize)]
struct BulkForm {
    action: String,
    #[serde(default)]
    ids: OneOrMany,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(self) -> Vec<String> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

async fn quarantine_bulk(State(st): State<AppState>, p: Post<BulkForm>) -> AppResult<Response> {
    let ids = p.form.ids.list();
    let mut n = 0;
    // Every id is checked on its own: one foreign id fails only itself.
    for id in &ids {
        if act_on(&st, &p.viewer, id, &p.form.action).await.is_ok() {
            n += 1;
        }
    }
    let to = if p.viewer.is_staff() { "/quarantine" } else { "/my/quarantine" };
    Ok(back(to, &format!("{} {n} of {} message(s).", done_word(&p.form.action), ids.len())))
}

// ---- message log, queue -----------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct LogQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    before: String,
}

async fn log(
    State(st): State<AppState>,
    v: Viewer,
    Query(q): Query<LogQuery>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let before = QueueId::parse(&q.before);
    let needle = q.q.trim().to_lowercase();
    let mut rows = Vec::new();
    let mut cursor = before;
    // Search pages back through at most 20k records.
    for _ in 0..20 {
        let page = st.store().log_page(cursor.as_ref(), 1000)?;
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|e| e.id.clone());
        rows.extend(page.into_iter().filter(|e| {
            needle.is_empty()
                || e.mail_from.to_lowercase().contains(&needle)
                || e.rcpt_to.iter().any(|r| r.to_lowercase().contains(&needle))
                || e.client_ip.contains(&needle)
                || e.id.as_str().eq_ignore_ascii_case(&needle)
                || e.action == needle
        }));
        if rows.len() >= 100 {
            break;
        }
    }
    rows.truncate(100);
    Ok(page(
        "Message log",
        Some(&v),
        html! {
            form method="get" action="/log" { input name="q" placeholder="sender, recipient, client IP, id or verdict" size="40" value=(q.q); button type="submit" { "Search" } }
            table {
                tr { th { "Received" } th { "Id" } th { "Client" } th { "From" } th { "To" } th { "Verdict" } th { "Score" } th { "Delivery" } }
                @for e in &rows {
                    tr {
                        td { (time(e.received_at)) } td { a href=(format!("/log/{}", e.id)) { (e.id.as_str()) } } td { (e.client_ip) }
                        td { (if e.mail_from.is_empty() { "<>" } else { &e.mail_from }) } td { (e.rcpt_to.join(", ")) }
                        td { (e.action) } td { (format!("{:.1}", e.score)) }
                        td { (e.deliveries.last().map(|d| d.outcome.as_str()).unwrap_or("")) }
                    }
                }
            }
            @if let Some(last) = rows.last() { @if rows.len() == 100 { a href=(format!("/log?q={}&before={}", enc(&q.q), last.id)) { "Older" } } }
        },
    ))
}

async fn log_view(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let e = st.store().log_get(&qid(&id)?)?.ok_or(AppError::NotFound)?;
    let held = st.store().quarantine_get(&e.id)?.is_some();
    Ok(page(
        "Message",
        Some(&v),
        html! {
            table {
                tr { th { "Id" } td { (e.id.as_str()) } }
                tr { th { "Received" } td { (time(e.received_at)) } }
                tr { th { "Client" } td { (e.client_ip) " (HELO " (e.helo) ")" } }
                tr { th { "Envelope sender" } td { (if e.mail_from.is_empty() { "<>" } else { &e.mail_from }) } }
                tr { th { "Recipients" } td { (e.rcpt_to.join(", ")) } }
                tr { th { "Size" } td { (e.size) } }
                tr { th { "Verdict" } td { (e.action) " (score " (format!("{:.2}", e.score)) ")" @if held { " — " a href=(format!("/quarantine/{}", e.id)) { "in quarantine" } } } }
            }
            h2 { "Findings" }
            table { tr { th { "Symbol" } th { "Detail" } th { "Weight" } }
                @for (s, d, w) in &e.findings { tr { td { (s) } td { (d) } td { (format!("{w:.2}")) } } } }
            h2 { "Delivery attempts" }
            table { tr { th { "When" } th { "Recipient" } th { "Host" } th { "Reply" } th { "Outcome" } }
                @for a in &e.deliveries { tr { td { (time(a.at)) } td { (a.rcpt) } td { (a.host) } td { (a.reply) } td { (a.outcome) } } } }
        },
    ))
}

async fn queue(State(st): State<AppState>, v: Viewer, Query(m): Query<Msg>) -> AppResult<Response> {
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

async fn queue_retry(
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

async fn queue_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    st.engine().queue_delete(&qid(&id)?).await?;
    Ok(back("/queue", "Deleted."))
}

// ---- reports --------------------------------------------------------------------------------

async fn reports(
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
struct ReportForm {
    frequency: String,
    recipients: String,
}

fn parse_addresses(s: &str) -> Result<Vec<String>, String> {
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

async fn report_add(State(st): State<AppState>, p: Post<ReportForm>) -> AppResult<Response> {
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

async fn report_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    st.store().schedule_remove(id)?;
    Ok(back("/reports", "Deleted."))
}

async fn report_send(
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

// ---- users ------------------------------------------------------------------------------------

async fn users(State(st): State<AppState>, v: Viewer, Query(m): Query<Msg>) -> AppResult<Response> {
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
struct UserForm {
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

async fn user_add(State(st): State<AppState>, p: Post<UserForm>) -> AppResult<Response> {
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

async fn user_delete(
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
struct PasswordForm {
    password: String,
}

/// Sets a password and ends every session and API token of that user.
pub(crate) async fn set_password(st: &AppState, name: &str, password: String) -> AppResult<User> {
    let mut u = st.store().user_get(name)?.ok_or(AppError::NotFound)?;
    if password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Err(AppError::BadRequest("The password is too short.".into()));
    }
    u.password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::Internal)?;
    st.store().user_put(&u)?;
    st.store().sessions_remove_user(&u.name)?;
    st.store().tokens_remove_user(&u.name)?;
    Ok(u)
}

async fn user_password(
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

// ---- own account ------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct AccountQuery {
    #[serde(default)]
    msg: Option<String>,
}

async fn account(
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
struct ChangePassword {
    current: String,
    password: String,
}

async fn account_password(
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
struct DigestForm {
    digest: String,
}

async fn account_digest(State(st): State<AppState>, p: Post<DigestForm>) -> AppResult<Response> {
    let mut u = p.viewer.user.clone();
    u.digest =
        Frequency::parse(&p.form.digest).ok_or(AppError::BadRequest("bad frequency".into()))?;
    st.store().user_put(&u)?;
    Ok(back("/account", "Saved."))
}

#[derive(Deserialize)]
struct TokenForm {
    label: String,
}

async fn token_add(State(st): State<AppState>, p: Post<TokenForm>) -> AppResult<Response> {
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

async fn token_delete(
    State(st): State<AppState>,
    Path(id): Path<u64>,
    p: Post<Empty>,
) -> AppResult<Response> {
    st.store().token_remove(id, Some(&p.viewer.user.name))?;
    Ok(back("/account", "Revoked."))
}

// ---- system ---------------------------------------------------------------------------------------

async fn system(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<Msg>,
) -> AppResult<Response> {
    v.require(Perm::Settings)?;
    let c = st.engine().config();
    let recent = st.store().log_recent(20)?;
    Ok(page(
        "System",
        Some(&v),
        html! {
            (views::notice(m.msg.as_deref()))
            h2 { "Certificate" }
            p { "Serving: " (crate::tls::describe(&c)) }
            form method="post" action="/system/certificate" {
                (csrf(&v))
                label { "Certificate chain (PEM)" textarea name="cert" rows="6" cols="70" {} }
                label { "Private key (PEM)" textarea name="key" rows="6" cols="70" {} }
                button type="submit" { "Upload" }
            }
            h2 { "Configuration" }
            p { a href="/system/config" { "Download a backup of the configuration" } " (the data partition holds the store; back it up separately)." }
            form method="post" action="/system/config" {
                (csrf(&v))
                label { "Restore: paste a configuration file" textarea name="config" rows="8" cols="70" {} }
                button type="submit" data-confirm="Replace the running configuration?" { "Validate and restore" }
            }
            h2 { "Recent mail" }
            table { tr { th { "Received" } th { "Client" } th { "From" } th { "Verdict" } }
                @for e in &recent { tr { td { (time(e.received_at)) } td { (e.client_ip) } td { (e.mail_from) } td { (e.action) } } } }
            h2 { "Recent log" }
            @let log = st.engine().recent_log();
            @if log.is_empty() { p { "No log lines kept." } } @else {
                pre.log { @for line in log.iter().rev().take(200) { (line) "\n" } }
            }
            p { "Engine version " (env!("CARGO_PKG_VERSION")) ", host name " (c.hostname.0) "." }
        },
    ))
}

async fn config_download(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
    v.require(Perm::Settings)?;
    let text = config_text(&st)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"levee.toml\""),
        ],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
struct ConfigForm {
    config: String,
}

async fn config_restore(State(st): State<AppState>, p: Post<ConfigForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let text = p.form.config.replace("\r\n", "\n");
    match st.engine().update_config(&text) {
        Ok(()) => Ok(back("/system", "Configuration restored.")),
        Err(levee_relay::RelayError::Config(e)) => Ok(back("/system", &format!("Refused: {e}"))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct CertForm {
    cert: String,
    key: String,
}

async fn certificate_upload(State(st): State<AppState>, p: Post<CertForm>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let acceptor =
        match crate::tls::acceptor_from_pem(p.form.cert.as_bytes(), p.form.key.as_bytes()) {
            Ok(a) => a,
            Err(e) => return Ok(back("/system", &format!("Refused: {e}"))),
        };
    let (cp, kp) = crate::tls::paths(&st.engine().config());
    crate::tls::write_pair(&cp, &kp, p.form.cert.as_bytes(), p.form.key.as_bytes())
        .map_err(|e| AppError::Internal(e.to_string()))?;
    st.set_tls(acceptor);
    Ok(back("/system", "Certificate installed; new connections use it."))
}

// ---- one-click links --------------------------------------------------------------------------------

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
async fn link_form(State(st): State<AppState>, Path(token): Path<String>) -> AppResult<Response> {
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

async fn link_act(
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
