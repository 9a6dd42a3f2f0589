//! Levee's web console: server-rendered admin and end-user pages, a JSON API under
//! `/api/v1`, Prometheus metrics on `/metrics`, and signed one-click links from digests.
//!
//! [`router`] builds the whole application from an [`Engine`]; tests drive it with
//! `oneshot`. [`serve`] accepts TCP, does the TLS handshake with tokio-rustls and
//! serves the router over HTTP/1.1 with hyper, until shutdown.
//!
//! Security rules live in one place each: [`auth`] (passwords, sessions, throttling,
//! roles), [`Viewer`] extraction (every handler that shows or changes data takes one),
//! [`Post`] (every state-changing form checks the session's CSRF token), the header
//! middleware (CSP and friends on every response), and `maud` templates (every
//! interpolation escaped).

mod api;
pub mod auth;
mod checks;
mod config_edit;
pub mod links;
mod mailout;
mod message;
mod pages;
pub(crate) mod rules;
pub mod sanitize;
mod stats;
mod tls;
mod training;
mod user_pages;
mod views;

use auth::Perm;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Router;
use levee_relay::Engine;
use levee_store::{Session, User};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub const SESSION_COOKIE: &str = "__Host-levee";
/// Double-submit cookie for the forms shown before there is a session (login, setup,
/// one-click links).
pub const PRE_COOKIE: &str = "__Host-levee-pre";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";
/// For the sanitised message inside the sandboxed iframe: nothing but inline styles
/// and inline images.
pub const FRAME_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                             frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] levee_store::StoreError),
}

/// What a handler can fail with. Internal details go to the log, never to the page.
#[derive(Debug)]
pub enum AppError {
    /// Not logged in: pages redirect to the login form, the API answers 401.
    Unauthenticated {
        api: bool,
    },
    Forbidden,
    /// Also used for objects the viewer may not see, so ids cannot be probed.
    NotFound,
    BadRequest(String),
    TooManyRequests,
    Internal(String),
}

impl From<levee_store::StoreError> for AppError {
    fn from(e: levee_store::StoreError) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl From<levee_relay::RelayError> for AppError {
    fn from(e: levee_relay::RelayError) -> Self {
        match e {
            levee_relay::RelayError::NotFound(_) => AppError::NotFound,
            levee_relay::RelayError::Config(c) => AppError::BadRequest(c.to_string()),
            e => AppError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            AppError::Unauthenticated { api: false } => {
                return Redirect::to("/login").into_response()
            }
            AppError::Unauthenticated { api: true } => {
                (StatusCode::UNAUTHORIZED, "authentication required".to_string())
            }
            AppError::Forbidden => (StatusCode::FORBIDDEN, "forbidden".to_string()),
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found".to_string()),
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            AppError::TooManyRequests => {
                (StatusCode::TOO_MANY_REQUESTS, "too many attempts; wait a while".to_string())
            }
            AppError::Internal(m) => {
                warn!(error = %m, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see the system log)".to_string(),
                )
            }
        };
        let body = views::error_page(status, &text);
        (status, body).into_response()
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Shared state of the console.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    engine: Arc<Engine>,
    link_key: [u8; 32],
    /// Verified against when the user does not exist, so both take as long.
    dummy_hash: String,
    /// The certificate being served; swapped when the admin uploads one.
    tls: std::sync::RwLock<Option<tokio_rustls::TlsAcceptor>>,
    /// Needed to complete first-run setup (see [`links::setup_code`]).
    setup_code: String,
    /// The last corpus upload being trained (or trained), for its progress bar.
    training: std::sync::Mutex<Option<training::Job>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> Result<AppState, ConsoleError> {
        let secret = engine.store().install_secret()?;
        Ok(AppState(Arc::new(Inner {
            engine,
            link_key: links::derive_key(&secret),
            dummy_hash: auth::dummy_hash(),
            tls: std::sync::RwLock::new(None),
            setup_code: links::setup_code(&secret),
            training: std::sync::Mutex::new(None),
        })))
    }
    pub fn engine(&self) -> &Arc<Engine> {
        &self.0.engine
    }
    pub fn store(&self) -> &levee_store::Store {
        self.0.engine.store()
    }
    pub fn link_key(&self) -> &[u8; 32] {
        &self.0.link_key
    }
    pub fn setup_code(&self) -> &str {
        &self.0.setup_code
    }
    /// Where the setup code is written for the appliance's screen while no admin exists.
    pub fn setup_code_path(&self) -> std::path::PathBuf {
        self.engine().config().data_dir.join("setup-code")
    }
    fn dummy_hash(&self) -> &str {
        &self.0.dummy_hash
    }
    pub(crate) fn set_tls(&self, a: tokio_rustls::TlsAcceptor) {
        *self.0.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(a);
    }
    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.0.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The peer address of the connection, set by [`serve`] (tests may set it).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

pub fn now() -> u64 {
    levee_relay::now_unix()
}

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub user: User,
    /// The session digest and record, for cookie logins (`None` for API tokens).
    pub session: Option<(String, Session)>,
}

impl Viewer {
    pub fn can(&self, p: Perm) -> bool {
        auth::allowed(self.user.role, p)
    }
    pub fn require(&self, p: Perm) -> AppResult<()> {
        if self.can(p) {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }
    pub fn is_staff(&self) -> bool {
        self.can(Perm::ViewAll)
    }
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map(|(_, s)| s.csrf.as_str()).unwrap_or("")
    }
    /// Whether this viewer may see mail addressed to `rcpts`.
    pub fn may_see(&self, rcpts: &[String]) -> bool {
        self.can(Perm::ViewAll) || auth::owns_any(&self.user, rcpts)
    }
    /// Whether this viewer may release/delete/report mail addressed to `rcpts`.
    pub fn may_act(&self, rcpts: &[String]) -> bool {
        self.can(Perm::QuarantineAll) || (!self.is_staff() && auth::owns_any(&self.user, rcpts))
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Looks the request up: a session cookie, or (for the API and metrics) a bearer token.
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    allow_bearer: bool,
) -> AppResult<Option<Viewer>> {
    let store = state.store();
    let now = now();
    if allow_bearer {
        if let Some(token) = bearer(headers) {
            let Some(t) = store.token_get(&auth::digest(token))? else { return Ok(None) };
            return Ok(store.user_get(&t.user)?.map(|user| Viewer { user, session: None }));
        }
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    let digest = auth::digest(id);
    let Some(mut s) = store.session_get(&digest)? else { return Ok(None) };
    if !auth::session_alive(&s, now) {
        store.session_remove(&digest)?;
        return Ok(None);
    }
    let Some(user) = store.user_get(&s.user)? else {
        store.session_remove(&digest)?;
        return Ok(None);
    };
    // Touch at most once a minute: the idle timer does not need more precision.
    if now >= s.last_seen + 60 {
        // An update, not a put: a session ended meanwhile stays ended.
        match store.session_update(&digest, |x| x.last_seen = now)? {
            Some(touched) => s = touched,
            None => return Ok(None),
        }
    }
    Ok(Some(Viewer { user, session: Some((digest, s)) }))
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = AppError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let api = parts.uri.path().starts_with("/api/") || parts.uri.path() == "/metrics";
        authenticate(state, &parts.headers, api)?.ok_or(AppError::Unauthenticated { api })
    }
}

/// A state-changing form post from a logged-in user: the session's CSRF token must be
/// in the `_csrf` field. Every POST page handler takes one of these.
#[derive(Debug)]
pub struct Post<T> {
    pub viewer: Viewer,
    pub form: T,
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<AppState> for Post<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|_| AppError::BadRequest("form too large".into()))?;
        let token = form_field(&bytes, "_csrf");
        let expected = viewer.csrf();
        if expected.is_empty() || !token.as_deref().is_some_and(|t| auth::ct_eq(t, expected)) {
            return Err(AppError::Forbidden);
        }
        let form = serde_html_form(&bytes)?;
        Ok(Post { viewer, form })
    }
}

/// Parses `application/x-www-form-urlencoded` into `T` (repeated keys become lists
/// where `T` has a `Vec`).
fn serde_html_form<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> AppResult<T> {
    let pairs: Vec<(String, String)> = url_pairs(bytes);
    // Collapse into a JSON object: repeated keys -> arrays, so `Vec<String>` fields work.
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        if k == "_csrf" {
            continue;
        }
        match map.get_mut(&k) {
            Some(serde_json::Value::Array(a)) => a.push(v.into()),
            Some(old) => {
                let first = old.take();
                *old = serde_json::Value::Array(vec![first, v.into()]);
            }
            None => {
                map.insert(k, v.into());
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| AppError::BadRequest(format!("bad form: {e}")))
}

pub(crate) fn url_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(bytes)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn form_field(bytes: &[u8], name: &str) -> Option<String> {
    url_pairs(bytes).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A form posted before login (login, setup, one-click link): the double-submit
/// pre-session cookie must match the `_csrf` field.
#[derive(Debug)]
pub struct PrePost<T> {
    pub form: T,
    pub peer: IpAddr,
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<AppState> for PrePost<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let peer = peer_ip(&parts);
        let expected = cookie(&parts.headers, PRE_COOKIE).unwrap_or("").to_string();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|_| AppError::BadRequest("form too large".into()))?;
        let token = form_field(&bytes, "_csrf");
        if expected.len() < 32 || !token.as_deref().is_some_and(|t| auth::ct_eq(t, &expected)) {
            return Err(AppError::Forbidden);
        }
        Ok(PrePost { form: serde_html_form(&bytes)?, peer })
    }
}

pub(crate) fn peer_ip(parts: &Parts) -> IpAddr {
    parts.extensions.get::<Peer>().map(|p| p.0.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A fresh pre-session token and the cookie that carries it.
pub(crate) fn pre_cookie() -> (String, HeaderValue) {
    let t = auth::random_token();
    let v = format!("{PRE_COOKIE}={t}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=3600");
    (t, HeaderValue::from_str(&v).expect("hex is a valid header value"))
}

pub(crate) fn session_cookie(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex is a valid header value")
}

pub(crate) fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-levee=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Security headers on every response; a handler that sets its own CSP (the
/// message frame) keeps it.
async fn security_headers(req: Request, next: Next) -> Response {
    // Belt and braces beside the CSRF tokens: browsers say where a request comes from.
    if req.method() == Method::POST {
        let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if matches!(site, Some("cross-site") | Some("same-site")) {
            return AppError::Forbidden.into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        if !h.contains_key(&k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(h, HeaderName::from_static("cross-origin-resource-policy"), "same-origin");
    resp
}

/// The whole console.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(user_pages::routes())
        .merge(training::routes())
        .merge(rules::routes())
        .merge(api::routes())
        .fallback(|| async { AppError::NotFound })
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Binds every `[console] listen` address.
pub async fn bind(config: &levee_config::Config) -> Result<Vec<TcpListener>, ConsoleError> {
    let mut out = Vec::new();
    if let Some(c) = &config.console {
        for l in &c.listen {
            out.push(TcpListener::bind(l.0).await.map_err(|e| ConsoleError::Listen(l.0, e))?);
        }
    }
    Ok(out)
}

/// Serves the console over HTTPS on `listeners` until `shutdown` turns true; also runs
/// the report and digest scheduler.
pub async fn serve(
    engine: Arc<Engine>,
    listeners: Vec<TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsoleError> {
    let state = AppState::new(engine.clone())?;
    let app = router(state.clone());
    state.set_tls(tls::acceptor_for(&engine.config())?);
    if state.store().users_len() == 0 {
        write_setup_code(&state);
    }
    let scheduler = tokio::spawn(mailout::run(state.clone(), shutdown.clone()));
    let mut tasks = Vec::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "console listening (https)");
        }
        tasks.push(tokio::spawn(accept_loop(l, app.clone(), state.clone(), shutdown.clone())));
    }
    crate::stopped(&mut shutdown).await;
    for t in tasks {
        let _ = t.await;
    }
    let _ = scheduler.await;
    Ok(())
}

/// Shows the first-run setup code to whoever has the box: in the log and in a file
/// (read by the appliance's screen), readable by its owner only.
fn write_setup_code(state: &AppState) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.setup_code_path();
    warn!(code = %state.setup_code(), file = %path.display(), "console not set up yet: first-run setup code");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{}", state.setup_code()));
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "cannot write the setup code file");
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Connections above this wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "console accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(tls) = state.tls() else { return };
        let app = app.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(stream)).await;
            let Ok(Ok(stream)) = handshake else { return };
            let svc =
                tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let app = app.clone();
                    async move {
                        use tower::ServiceExt;
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                );
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = crate::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
