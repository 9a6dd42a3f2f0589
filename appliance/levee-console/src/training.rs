//! Training → upload known spam or ham (an mbox, a zipped Maildir or a zip of `.eml` files)
//! and the running engine learns it in the background; the page shows a progress bar fed
//! by a small JSON status endpoint. Admins only: corpus training is trusted, not a vote.
//!
//! The file goes as the raw body of `POST /api/v1/training?label=spam|ham` with the
//! session's CSRF token in `X-CSRF-Token` (as the country database upload does), so a
//! large upload is neither form-encoded nor held twice.

use crate::api::{err_json, out, ApiWrite};
use crate::auth::Perm;
use crate::views::page;
use crate::{AppError, AppResult, AppState, Viewer};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use levee_filter::mailbox::{self, Limits};
use levee_relay::TrainProgress;
use maud::html;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The largest upload accepted.
pub const UPLOAD_MAX: usize = 200 << 20;

/// What one upload may expand to.
const LIMITS: Limits = Limits { max_messages: 100_000, max_bytes: 512 << 20, max_ratio: 100 };

/// One training run started from the console.
#[derive(Debug, Clone)]
pub struct Job {
    spam: bool,
    by: String,
    progress: Arc<TrainProgress>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/training", get(training_page))
        .route("/api/v1/training", get(status).post(upload))
}

fn job(st: &AppState) -> Option<Job> {
    st.0.training.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn training_page(State(st): State<AppState>, v: Viewer) -> AppResult<Response> {
    v.require(Perm::Settings)?;
    let (nspam, nham) = st.engine().model_counts();
    let running = job(&st).filter(|j| !j.progress.finished());
    Ok(page(
        "Training",
        Some(&v),
        html! {
            p { "The content model knows " strong #training-counts { (nspam) " spam and " (nham) " ham" } " messages." }
            p {
                "Teach it your own mail: upload known spam or known ham as an mbox file, a Maildir packed as a zip, or a zip of "
                code { ".eml" } " files (up to " (UPLOAD_MAX >> 20) " MiB and " (LIMITS.max_messages) " messages per upload). "
                "The engine keeps filtering while it learns. Users report single messages by forwarding them as an attachment to the report address."
            }
            div #training-upload data-csrf=(v.csrf()) {
                label { "File " input #training-file type="file" accept=".mbox,.zip,.eml,application/zip,application/mbox"; }
                label { input type="radio" name="training-label" value="spam" checked; " spam" }
                label { input type="radio" name="training-label" value="ham"; " ham" }
                button #training-send type="button" disabled[running.is_some()] { "Upload and train" }
            }
            p {
                progress #training-progress max="1" value="0" {}
                " " span #training-status {
                    @if let Some(j) = &running {
                        @let (done, total) = j.progress.counts();
                        "Training " (if j.spam { "spam" } else { "ham" }) " uploaded by " (j.by) ": " (done) "/" (total)
                    }
                }
            }
            p { "Without the console: stop the engine and run " code { "levee train --data DIR --spam PATH --ham PATH" } "." }
        },
    ))
}

#[derive(Deserialize)]
struct LabelQuery {
    label: String,
}

/// Takes an upload, reads its messages and starts training them; answers at once with
/// the message count (the status endpoint tells the rest).
async fn upload(
    State(st): State<AppState>,
    w: Result<ApiWrite, AppError>,
    q: Result<Query<LabelQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Response {
    let r = async {
        let ApiWrite(v) = w?;
        v.require(Perm::Settings)?;
        let spam = match q.as_ref().map(|q| q.label.as_str()) {
            Ok("spam") => true,
            Ok("ham") => false,
            _ => return Err(AppError::BadRequest("label must be spam or ham".into())),
        };
        if job(&st).is_some_and(|j| !j.progress.finished()) {
            return Err(AppError::BadRequest(
                "a training run is still going; wait for it to finish".into(),
            ));
        }
        let bytes = axum::body::to_bytes(body, UPLOAD_MAX).await.map_err(|_| {
            AppError::BadRequest(format!("the upload is larger than {} MiB", UPLOAD_MAX >> 20))
        })?;
        let size = bytes.len();
        // Unzipping is CPU work; keep it off the request threads.
        let messages = tokio::task::spawn_blocking(move || mailbox::read_upload(&bytes, &LIMITS))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::BadRequest(format!("cannot read the upload: {e}")))?;
        if messages.is_empty() {
            return Err(AppError::BadRequest("no message found in the upload".into()));
        }
        let n = messages.len();
        let progress = TrainProgress::new(n);
        let started = Job { spam, by: v.user.name.clone(), progress: progress.clone() };
        {
            let mut slot = st.0.training.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock: two uploads may have raced past the first check.
            if slot.as_ref().is_some_and(|j| !j.progress.finished()) {
                return Err(AppError::BadRequest(
                    "a training run is still going; wait for it to finish".into(),
                ));
            }
            *slot = Some(started);
        }
        tracing::info!(by = %v.user.name, size, messages = n, spam, "training upload");
        let engine = st.engine().clone();
        tokio::spawn(async move {
            if let Err(e) = engine.train_corpus(messages, spam, progress).await {
                tracing::error!(error = %e, "training upload failed");
            }
        });
        Ok(json!({ "ok": true, "messages": n, "label": if spam { "spam" } else { "ham" } }))
    }
    .await;
    out(r)
}

/// The progress of the last run and the model's counts.
async fn status(State(st): State<AppState>, v: Result<Viewer, AppError>) -> Response {
    if let Err(e) = v.and_then(|v| v.require(Perm::Settings)) {
        return err_json(e);
    }
    let (nspam, nham) = st.engine().model_counts();
    let run = job(&st).map(|j| {
        let (done, total) = j.progress.counts();
        json!({
            "label": if j.spam { "spam" } else { "ham" }, "by": j.by, "done": done, "total": total,
            "finished": j.progress.finished(), "error": j.progress.error(),
        })
    });
    out(Ok(json!({ "model": { "spam": nspam, "ham": nham }, "run": run })))
}
