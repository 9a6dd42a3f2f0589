//! The quarantine: search, safe view, and actions on held mail.

use super::{back, qid, Empty};
use crate::auth::Perm;
use crate::views::{self, button, csrf, page, time};
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use levee_store::QuarantineQuery;
use levee_types::list::ListEntry;
use maud::{html, Markup};
use serde::Deserialize;

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

pub fn parse_date(s: &str) -> Option<u64> {
    let mut it = s.trim().split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    u64::try_from(levee_types::civil::days_from_civil(y, m, d) * 86_400).ok()
}

pub const PAGE: usize = 50;

impl SearchForm {
    /// What the API refuses (the page shows what it could read): a date that is not
    /// YYYY-MM-DD, a score that is not a number.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("since", &self.since), ("until", &self.until)] {
            if !v.trim().is_empty() && parse_date(v).is_none() {
                return Err(format!("{name} must be a date as YYYY-MM-DD"));
            }
        }
        for (name, v) in [("min_score", &self.min_score), ("max_score", &self.max_score)] {
            if !v.trim().is_empty() && v.trim().parse::<f64>().map_or(true, |x| !x.is_finite()) {
                return Err(format!("{name} must be a number"));
            }
        }
        Ok(())
    }

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

pub(super) async fn quarantine(
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

/// [`visible`], with the held message's bytes.
async fn visible_message(
    st: &AppState,
    v: &Viewer,
    id: &str,
) -> AppResult<(levee_store::QuarantineEntry, Vec<u8>)> {
    let e = visible(st, v, id)?;
    let raw = st.engine().message_bytes(&e.id).await?;
    Ok((e, raw))
}

pub(super) async fn quarantine_view(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (e, raw) = visible_message(&st, &v, &id).await?;
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

pub(super) async fn quarantine_body(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (_, raw) = visible_message(&st, &v, &id).await?;
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

pub(super) async fn quarantine_attachment(
    State(st): State<AppState>,
    v: Viewer,
    Path((id, n)): Path<(String, usize)>,
) -> AppResult<Response> {
    let (_, raw) = visible_message(&st, &v, &id).await?;
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

pub(super) async fn quarantine_act(
    State(st): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    p: Post<Empty>,
) -> AppResult<Response> {
    act_on(&st, &p.viewer, &id, &action).await?;
    let to = if p.viewer.is_staff() { "/quarantine" } else { "/my/quarantine" };
    Ok(back(to, &format!("{}.", done_word(&action))))
}

#[derive(Deserialize)]
pub(super) struct BulkForm {
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

pub(super) async fn quarantine_bulk(
    State(st): State<AppState>,
    p: Post<BulkForm>,
) -> AppResult<Response> {
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
