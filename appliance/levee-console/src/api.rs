//! JSON API under `/api/v1` (bearer tokens or a session; the same permission rules as
//! the pages) and Prometheus metrics on `/metrics`.
//!
//! A POST with a session cookie must carry the session's CSRF token in
//! `X-CSRF-Token`; a bearer token is not sent by browsers on their own, so it needs none.

use crate::auth::Perm;
use crate::{AppError, AppResult, AppState, Viewer};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub const OPENAPI: &str = include_str!("../static/openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/me", get(me))
        .route("/api/v1/quarantine", get(quarantine))
        .route("/api/v1/quarantine/{id}", get(quarantine_get))
        .route("/api/v1/quarantine/{id}/{action}", post(quarantine_act))
        .route("/api/v1/log", get(log))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/lists", get(lists).post(list_add))
        .route("/api/v1/lists/{id}/delete", post(list_delete))
        .route("/api/v1/geoip", post(geoip_upload))
        .route("/metrics", get(metrics))
}

/// An API caller allowed to change things: bearer token, or a session with the CSRF
/// header.
pub struct ApiWrite(pub(crate) Viewer);

impl FromRequestParts<AppState> for ApiWrite {
    type Rejection = AppError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let v = Viewer::from_request_parts(parts, state).await?;
        if v.session.is_some() {
            let sent =
                parts.headers.get("x-csrf-token").and_then(|h| h.to_str().ok()).unwrap_or("");
            if !crate::auth::ct_eq(sent, v.csrf()) {
                return Err(AppError::Forbidden);
            }
        }
        Ok(ApiWrite(v))
    }
}

pub(crate) fn err_json(e: AppError) -> Response {
    let (code, msg) = match &e {
        AppError::Unauthenticated { .. } => (401, "authentication required".to_string()),
        AppError::Forbidden => (403, "forbidden".into()),
        AppError::NotFound => (404, "not found".into()),
        AppError::BadRequest(m) => (400, m.clone()),
        AppError::TooManyRequests => (429, "too many requests".into()),
        AppError::Internal(_) => return e.into_response(),
    };
    let status =
        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    (status, Json(json!({ "error": msg }))).into_response()
}

pub(crate) fn out(r: AppResult<Value>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => err_json(e),
    }
}

fn entry_json(e: &levee_store::QuarantineEntry) -> Value {
    json!({
        "id": e.id.as_str(), "received_at": e.received_at, "expires_at": e.expires_at,
        "client_ip": e.client_ip, "mail_from": e.mail_from, "rcpt_to": e.rcpt_to,
        "from_header": e.from_header, "subject": e.subject, "size": e.size,
        "score": if e.score.is_finite() { json!(e.score) } else { Value::Null },
        "action": e.action,
        "findings": e.findings.iter().map(|(s, d, w)| json!({"symbol": s, "detail": d, "weight": if w.is_finite() { json!(w) } else { Value::Null }})).collect::<Vec<_>>(),
    })
}

async fn me(v: Result<Viewer, AppError>) -> Response {
    out(v.map(|v| json!({ "name": v.user.name, "role": v.user.role.as_str(), "addresses": v.user.addresses })))
}

/// A query string the document forbids is a 400 with the reason, as JSON.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> AppResult<T> {
    q.map(|Query(t)| t).map_err(|e| AppError::BadRequest(e.body_text()))
}

async fn quarantine(
    State(st): State<AppState>,
    v: Result<Viewer, AppError>,
    f: Result<Query<crate::pages::quarantine::SearchForm>, QueryRejection>,
) -> Response {
    out((|| {
        let v = v?;
        let f = query(f)?;
        f.check().map_err(AppError::BadRequest)?;
        let mut q = f.query();
        if !v.is_staff() {
            q.recipients = Some(v.user.addresses.clone());
        }
        let (rows, total) = if !v.is_staff() && v.user.addresses.is_empty() {
            (vec![], 0)
        } else {
            st.store().quarantine_search(&q)?
        };
        Ok(json!({ "total": total, "items": rows.iter().map(entry_json).collect::<Vec<_>>() }))
    })())
}

fn visible(st: &AppState, v: &Viewer, id: &str) -> AppResult<levee_store::QuarantineEntry> {
    let id = levee_types::QueueId::parse(id).ok_or(AppError::NotFound)?;
    let e = st.store().quarantine_get(&id)?.ok_or(AppError::NotFound)?;
    if !v.may_see(&e.rcpt_to) {
        return Err(AppError::NotFound);
    }
    Ok(e)
}

async fn quarantine_get(
    State(st): State<AppState>,
    v: Result<Viewer, AppError>,
    Path(id): Path<String>,
) -> Response {
    out(v.and_then(|v| visible(&st, &v, &id)).map(|e| entry_json(&e)))
}

async fn quarantine_act(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let r = async {
        let ApiWrite(v) = w?;
        crate::pages::quarantine::act_on(&st, &v, &id, &action).await?;
        Ok(json!({ "ok": true }))
    }
    .await;
    out(r)
}

#[derive(Deserialize, Default)]
struct LogQuery {
    #[serde(default)]
    before: String,
    #[serde(default)]
    limit: Option<usize>,
}

async fn log(
    State(st): State<AppState>,
    v: Result<Viewer, AppError>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    out((|| {
        v?.require(Perm::ViewAll)?;
        let q = query(q)?;
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(AppError::BadRequest("limit must be from 1 to 1000".into()));
        }
        let before = match q.before.trim() {
            "" => None,
            b => Some(levee_types::QueueId::parse(b).ok_or_else(|| {
                AppError::BadRequest("before must be a message id (16 hex digits)".into())
            })?),
        };
        let rows = st.store().log_page(before.as_ref(), limit)?;
        Ok(json!(rows.iter().map(|e| json!({
            "id": e.id.as_str(), "received_at": e.received_at, "client_ip": e.client_ip, "helo": e.helo,
            "mail_from": e.mail_from, "rcpt_to": e.rcpt_to, "size": e.size, "action": e.action,
            "score": if e.score.is_finite() { json!(e.score) } else { Value::Null },
            "findings": e.findings.iter().map(|(s, d, w)| json!({"symbol": s, "detail": d, "weight": if w.is_finite() { json!(w) } else { Value::Null }})).collect::<Vec<_>>(),
            "deliveries": e.deliveries.iter().map(|a| json!({"at": a.at, "rcpt": a.rcpt, "host": a.host, "reply": a.reply, "outcome": a.outcome})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()))
    })())
}

async fn queue(State(st): State<AppState>, v: Result<Viewer, AppError>) -> Response {
    out((|| {
        v?.require(Perm::ViewAll)?;
        let rows = st.store().queue_all()?;
        Ok(json!(rows.iter().map(|q| json!({
            "id": q.id.as_str(), "received_at": q.received_at, "attempts": q.attempts, "next_attempt": q.next_attempt, "held": q.held,
            "recipients": q.recipients.iter().map(|r| json!({"rcpt": r.rcpt, "status": format!("{:?}", r.status).to_lowercase(), "last_reply": r.last_reply})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()))
    })())
}

async fn lists(State(st): State<AppState>, v: Result<Viewer, AppError>) -> Response {
    out((|| {
        v?.require(Perm::ViewAll)?;
        Ok(json!(st.store().list_all()?.iter().map(|e| json!({"id": e.id, "entry": e.entry, "note": e.note, "created_at": e.created_at, "created_by": e.created_by})).collect::<Vec<_>>()))
    })())
}

#[derive(Deserialize)]
struct NewEntry {
    entry: String,
    #[serde(default)]
    note: String,
}

async fn list_add(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    body: Result<Json<NewEntry>, axum::extract::rejection::JsonRejection>,
) -> Response {
    out((|| {
        let ApiWrite(v) = w?;
        v.require(Perm::Lists)?;
        let Json(n) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let entry: levee_types::list::ListEntry =
            n.entry
                .parse::<levee_types::list::ListEntry>()
                .map_err(|e| AppError::BadRequest(e.to_string()))?;
        let id = st.engine().add_list_entry(&entry, &n.note, &v.user.name)?;
        Ok(json!({ "id": id }))
    })())
}

async fn list_delete(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    out((|| {
        let ApiWrite(v) = w?;
        v.require(Perm::Lists)?;
        let Path(id) = id.map_err(|e| AppError::BadRequest(e.body_text()))?;
        Ok(json!({ "removed": st.engine().remove_list_entry(id)? }))
    })())
}

/// The largest country database accepted (GeoLite2-Country is about 10 MiB).
const GEOIP_MAX: usize = 128 << 20;

/// Replaces the country database: the body is a MaxMind-format file. It is checked
/// by opening it before it replaces the old one, then `checks.geoip_db` points at it.
async fn geoip_upload(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    body: axum::body::Body,
) -> Response {
    let r = async {
        let ApiWrite(v) = w?;
        v.require(Perm::Settings)?;
        let bytes = axum::body::to_bytes(body, GEOIP_MAX)
            .await
            .map_err(|_| AppError::BadRequest("the database is too large".into()))?;
        let dir = st.engine().config().data_dir.join("geoip");
        let path = dir.join("country.mmdb");
        let tmp = dir.join("country.mmdb.new");
        let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&tmp, &bytes));
        written.map_err(|e| AppError::Internal(format!("{}: {e}", tmp.display())))?;
        let countries = match levee_netcheck::GeoIp::open(&tmp) {
            Ok(db) => db,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(AppError::BadRequest(format!("not a MaxMind country database: {e}")));
            }
        };
        drop(countries);
        std::fs::rename(&tmp, &path)
            .map_err(|e| AppError::Internal(format!("{}: {e}", path.display())))?;
        let shown = path.display().to_string();
        crate::pages::edit_config(&st, |doc| crate::config_edit::set_geoip_db(doc, &shown))?;
        tracing::info!(by = %v.user.name, size = bytes.len(), "country database replaced");
        Ok(json!({ "ok": true, "path": shown, "size": bytes.len() }))
    }
    .await;
    out(r)
}

/// Prometheus text format, version 0.0.4.
async fn metrics(State(st): State<AppState>, v: Result<Viewer, AppError>) -> Response {
    let v = match v {
        Ok(v) => v,
        Err(e) => return err_json(e),
    };
    if let Err(e) = v.require(Perm::ViewAll) {
        return err_json(e);
    }
    match metrics_text(&st) {
        Ok(t) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], t)
            .into_response(),
        Err(e) => err_json(e),
    }
}

pub(crate) fn metrics_text(st: &AppState) -> AppResult<String> {
    let store = st.store();
    let day = crate::stats::last_day(st)?;
    let counts = store.counts(u64::MAX, false)?;
    let written = store.log_written()?;
    let mut t = String::new();
    t.push_str("# HELP levee_messages_24h Messages received in the last 24 hours, by verdict.\n# TYPE levee_messages_24h gauge\n");
    for (name, n) in &day {
        t.push_str(&format!("levee_messages_24h{{verdict=\"{name}\"}} {n}\n"));
    }
    t.push_str("# HELP levee_messages_total Messages written to the message log, by verdict (pruning does not lower it).\n# TYPE levee_messages_total counter\n");
    for (name, _) in crate::stats::VERDICTS {
        let n = written.get(name).copied().unwrap_or(0);
        t.push_str(&format!("levee_messages_total{{verdict=\"{name}\"}} {n}\n"));
    }
    t.push_str("# HELP levee_queue_messages Messages waiting for delivery.\n# TYPE levee_queue_messages gauge\n");
    t.push_str(&format!("levee_queue_messages {}\n", store.queue_waiting()));
    t.push_str("# HELP levee_quarantine_messages Messages held in quarantine.\n# TYPE levee_quarantine_messages gauge\n");
    t.push_str(&format!("levee_quarantine_messages {}\n", counts.quarantine));
    t.push_str(
        "# HELP levee_log_messages Records in the message log.\n# TYPE levee_log_messages gauge\n",
    );
    t.push_str(&format!("levee_log_messages {}\n", counts.log));
    let c = st.engine().config();
    t.push_str("# HELP levee_domain_ready Whether a domain accepts mail (1) or its set-up is incomplete (0).\n# TYPE levee_domain_ready gauge\n");
    for d in &c.domains {
        // Domain names are validated LDH labels: nothing to escape in a label value.
        t.push_str(&format!(
            "levee_domain_ready{{domain=\"{}\"}} {}\n",
            d.domain(),
            u8::from(d.ready())
        ));
    }
    Ok(t)
}
