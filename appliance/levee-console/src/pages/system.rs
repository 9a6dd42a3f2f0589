//! System: the config file, the certificate, recent events.

use super::{back, config_text, Msg};
use crate::auth::Perm;
use crate::views::{self, csrf, page, time};
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

pub(super) async fn system(
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

pub(super) async fn config_download(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
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
pub(super) struct ConfigForm {
    config: String,
}

pub(super) async fn config_restore(
    State(st): State<AppState>,
    p: Post<ConfigForm>,
) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let text = p.form.config.replace("\r\n", "\n");
    match st.engine().update_config(&text) {
        Ok(()) => Ok(back("/system", "Configuration restored.")),
        Err(levee_relay::RelayError::Config(e)) => Ok(back("/system", &format!("Refused: {e}"))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct CertForm {
    cert: String,
    key: String,
}

pub(super) async fn certificate_upload(
    State(st): State<AppState>,
    p: Post<CertForm>,
) -> AppResult<Response> {
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
