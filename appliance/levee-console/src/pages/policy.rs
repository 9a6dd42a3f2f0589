//! The global policy: thresholds, weights and the symbol list.

use super::{back, edit_config, edit_or_back, Msg};
use crate::auth::Perm;
use crate::config_edit;
use crate::views::{self, csrf, page, time};
use crate::{AppError, AppResult, AppState, Post, Viewer};
use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

pub(super) async fn policy(
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
pub(super) struct SymbolQuery {
    #[serde(default)]
    q: String,
}

/// Every symbol the filter knows: Levee's own and each scored SpamAssassin-language rule, with
/// the weight the global policy gives it (an override in bold) and what it means.
pub(super) async fn symbols(
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
        .map(|(s, w)| {
            let meaning = levee_filter::score::describe(s).unwrap_or("Levee");
            ((*s).to_owned(), *w, false, meaning.to_owned())
        })
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
pub(super) struct PolicyForm {
    tag_at: String,
    quarantine_at: String,
    reject_at: String,
    quarantine_days: String,
}

pub(super) async fn policy_save(
    State(st): State<AppState>,
    p: Post<PolicyForm>,
) -> AppResult<Response> {
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
pub(super) struct WeightForm {
    symbol: String,
    #[serde(default)]
    weight: String,
}

pub(super) async fn weight_save(
    State(st): State<AppState>,
    p: Post<WeightForm>,
) -> AppResult<Response> {
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
