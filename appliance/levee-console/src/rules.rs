//! Policy → Rules: what SpamAssassin-language rules the engine loaded and skipped, and the
//! admin's local rules (`<data_dir>/rules`): upload a `.tar.gz`/`.tgz` of `.cf` files or a
//! single `.cf`, or remove them.
//!
//! The upload goes as the raw body of `POST /api/v1/rules?name=FILE` with the CSRF token in
//! `X-CSRF-Token` (as the training upload does). Only regular files with plain `*.cf` names
//! are taken from an archive; a path that climbs out (`..`, absolute) or a link refuses the
//! whole upload, since an archive that tries either was not made for this. The files go to a
//! private folder that the engine tries with the other rule folders before it replaces the
//! local ones ([`levee_relay::Engine::install_local_rules`]): a file that does not load is
//! refused with its `FILE:LINE`, and nothing changes.

use crate::api::{out, ApiWrite};
use crate::auth::Perm;
use crate::views::{csrf, page};
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use levee_relay::RelayError;
use maud::html;
use serde::Deserialize;
use serde_json::json;
use std::io::Read;
use std::path::{Component, Path};

/// The largest upload, and the most its `.cf` files may hold together.
pub const MAX_BYTES: usize = 10 << 20;
/// The most `.cf` files one upload may hold.
pub const MAX_FILES: usize = 200;
/// The most entries of any kind an archive may hold (directories, files left out).
const MAX_ENTRIES: usize = 2_000;
/// The most a gzip stream may expand to: a ceiling for what tar reads, headers included.
const MAX_TAR: u64 = 2 * MAX_BYTES as u64;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/policy/rules", get(rules_page))
        .route("/policy/rules/remove", post(remove))
        .route("/api/v1/rules", post(upload))
}

async fn rules_page(
    State(st): State<AppState>,
    v: Viewer,
    Query(m): Query<crate::pages::Msg>,
) -> AppResult<Response> {
    v.require(Perm::ViewAll)?;
    let edit = v.can(Perm::Settings);
    let c = st.engine().config();
    let rules = st.engine().sa_rules();
    let local = st.engine().local_rules_dir();
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&local)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
        .filter(|(n, _)| n.ends_with(".cf"))
        .collect();
    files.sort();
    let read =
        c.rules.spamassassin && c.rules.dirs.as_ref().is_none_or(|named| named.contains(&local));
    let mut reasons: Vec<(&String, usize)> = rules
        .as_ref()
        .map(|r| r.report.skipped.iter().map(|(k, v)| (k, v.len())).collect())
        .unwrap_or_default();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    Ok(page(
        "Rules",
        Some(&v),
        html! {
            (crate::views::notice(m.msg.as_deref()))
            h2 { "Loaded" }
            @match &rules {
                Some(r) => {
                    p {
                        (r.report.loaded) " rules loaded from "
                        @for (i, d) in r.dirs.iter().enumerate() { @if i > 0 { ", " } code { (d.display()) } }
                        "; " (reasons.iter().map(|(_, n)| n).sum::<usize>()) " skipped. "
                        a href="/policy/symbols" { "Every known symbol" } " shows their weights."
                    }
                    @if !reasons.is_empty() {
                        table {
                            tr { th { "Skipped because" } th { "Rules" } }
                            @for (reason, n) in &reasons { tr { td { (reason) } td { (n) } } }
                        }
                    }
                }
                None => { p { "No SpamAssassin-language rules are loaded." } }
            }
            h2 { "Local rules" }
            p {
                "Rules of your own in SpamAssassin's language, read after the others (so their scores win), from "
                code { (local.display()) } "."
            }
            @if !read {
                p.error { "The configuration's " code { "[rules]" } " section does not read this folder: uploaded rules would not be used." }
            }
            @if files.is_empty() { p { "None." } } @else {
                table {
                    tr { th { "File" } th { "Bytes" } }
                    @for (n, size) in &files { tr { td { code { (n) } } td { (size) } } }
                }
            }
            @if edit {
                p {
                    "Upload a " code { ".tar.gz" } " of " code { ".cf" } " files or one " code { ".cf" } " file (up to "
                    (MAX_FILES) " files and " (MAX_BYTES >> 20) " MiB). It replaces the local rules once it loads together with the others; "
                    "a file that does not load is refused with its line, and nothing changes."
                }
                div #rules-upload data-csrf=(v.csrf()) {
                    input #rules-file type="file" accept=".tar.gz,.tgz,.cf";
                    button #rules-send type="button" { "Upload" }
                    " " span #rules-status {}
                }
                @if !files.is_empty() {
                    form method="post" action="/policy/rules/remove" {
                        (csrf(&v))
                        button type="submit" data-confirm="Remove every local rule?" { "Remove local rules" }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct NameQuery {
    #[serde(default)]
    name: String,
}

/// Takes an upload, unpacks it into a private folder under the data directory and has the
/// engine try and install it.
async fn upload(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    q: Result<Query<NameQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Response {
    let r = async {
        let ApiWrite(v) = w?;
        v.require(Perm::Settings)?;
        let name = q.map(|q| q.0.name).unwrap_or_default();
        let bytes = axum::body::to_bytes(body, MAX_BYTES).await.map_err(|_| {
            AppError::BadRequest(format!("the upload is larger than {} MiB", MAX_BYTES >> 20))
        })?;
        let engine = st.engine().clone();
        // Unpacking and loading rules is seconds of CPU: off the request threads.
        let (files, loaded) = tokio::task::spawn_blocking(move || {
            let files = unpack(&bytes, &name).map_err(AppError::BadRequest)?;
            let staged = engine.config().data_dir.join(format!(
                "{}{}",
                levee_relay::rules::STAGED_PREFIX,
                &crate::auth::random_token()[..16]
            ));
            if let Err(e) = write_private(&staged, &files) {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(AppError::Internal(format!("{}: {e}", staged.display())));
            }
            let names: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
            match engine.install_local_rules(&staged) {
                Ok(loaded) => Ok((names, loaded)),
                Err(RelayError::Rules(m)) => Err(AppError::BadRequest(m)),
                Err(e) => Err(AppError::Internal(e.to_string())),
            }
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
        let r = &loaded.report;
        let skipped: usize = r.skipped.values().map(Vec::len).sum();
        tracing::info!(by = %v.user.name, files = files.len(), loaded = r.loaded, skipped, "local rules uploaded");
        Ok(json!({
            "ok": true, "files": files, "loaded": r.loaded, "skipped": skipped,
            "reasons": levee_filter::sa::skip_summary(r, 5),
        }))
    }
    .await;
    out(r)
}

#[derive(Deserialize)]
struct Empty {}

async fn remove(State(st): State<AppState>, p: Post<Empty>) -> AppResult<Response> {
    p.viewer.require(Perm::Settings)?;
    let engine = st.engine().clone();
    tokio::task::spawn_blocking(move || engine.remove_local_rules())
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
    tracing::info!(by = %p.viewer.user.name, "local rules removed");
    Ok(crate::pages::back("/policy/rules", "Local rules removed."))
}

/// The `.cf` files of an upload, by name: a gzipped (or plain) tar, or one `.cf` file named
/// `name`. The error says what is wrong, for the admin.
pub fn unpack(bytes: &[u8], name: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let files = if bytes.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::read::GzDecoder::new(bytes).take(MAX_TAR);
        untar(gz)?
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        untar(bytes)?
    } else if name.ends_with(".cf") {
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        if !plain_cf_name(name) {
            return Err(format!(
                "{name}: a rule file is named with letters, digits, . _ - and ends in .cf"
            ));
        }
        vec![(name.to_owned(), bytes.to_vec())]
    } else {
        return Err("not a .tar.gz, .tgz or .cf file".into());
    };
    if files.is_empty() {
        return Err("no .cf file in the upload".into());
    }
    Ok(files)
}

fn untar(r: impl Read) -> Result<Vec<(String, Vec<u8>)>, String> {
    let unreadable = |e: std::io::Error| {
        format!("unreadable archive (or larger than {} MiB unpacked): {e}", MAX_TAR >> 20)
    };
    let mut archive = tar::Archive::new(r);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    for (i, entry) in archive.entries().map_err(unreadable)?.enumerate() {
        let mut entry = entry.map_err(unreadable)?;
        if i >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries in the archive"));
        }
        let path = entry.path().map_err(unreadable)?.into_owned();
        let shown = path.display().to_string();
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!("{shown}: a path outside the archive's folder"));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(format!("{shown}: a link (only plain files are taken)"));
        }
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(format!("{shown}: not a plain file"));
        }
        // Folders inside the archive are flattened (`rules/local.cf` is `local.cf`).
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if !name.ends_with(".cf") {
            continue;
        }
        if !plain_cf_name(name) {
            return Err(format!(
                "{shown}: a rule file is named with letters, digits, . _ - and ends in .cf"
            ));
        }
        if files.iter().any(|(n, _)| n == name) {
            return Err(format!("{shown}: two files named {name}"));
        }
        if files.len() == MAX_FILES {
            return Err(format!("more than {MAX_FILES} .cf files"));
        }
        let size = usize::try_from(entry.size()).unwrap_or(usize::MAX);
        total = total.saturating_add(size);
        if total > MAX_BYTES {
            return Err(format!("the .cf files hold more than {} MiB", MAX_BYTES >> 20));
        }
        let mut data = Vec::with_capacity(size);
        entry.read_to_end(&mut data).map_err(unreadable)?;
        files.push((name.to_owned(), data));
    }
    Ok(files)
}

/// A flat file name the loader reads: `[A-Za-z0-9._-]+\.cf`, not hidden.
fn plain_cf_name(name: &str) -> bool {
    name.len() <= 100
        && name.len() > 3
        && name.ends_with(".cf")
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Writes `files` into a new folder `dir` only the engine's user can read, durably.
fn write_private(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    levee_relay::rules::private_dir(dir)?;
    for (name, data) in files {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}
