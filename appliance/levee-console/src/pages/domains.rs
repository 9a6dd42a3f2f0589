//! Domains: downstream, TLS, and each domain's own policy.

use super::{back, edit_config, edit_or_back, Msg};
use crate::auth::Perm;
use crate::config_edit::{self, DomainEdit};
use crate::views::{self, csrf, page};
use crate::{AppResult, AppState, Post, Viewer};
use axum::extract::{Query, State};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

pub(super) async fn domains(
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
                                select name="tls" { @for t in ["none", "opportunistic", "required", "verify"] {
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
                    label { "TLS to downstream " select name="tls" { option value="opportunistic" { "opportunistic" } option value="required" { "required" } option value="verify" { "verify" } option value="none" { "none" } } }
                    input type="hidden" name="enabled" value="on";
                    button type="submit" { "Add" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(super) struct DomainForm {
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

pub(super) async fn domain_save(
    State(st): State<AppState>,
    p: Post<DomainForm>,
) -> AppResult<Response> {
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
pub(super) struct NameForm {
    name: String,
}

pub(super) async fn domain_delete(
    State(st): State<AppState>,
    p: Post<NameForm>,
) -> AppResult<Response> {
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
pub(super) struct DomainPolicyForm {
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

pub(super) async fn domain_policy_save(
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
pub(super) struct DomainWeightForm {
    name: String,
    symbol: String,
    #[serde(default)]
    weight: String,
}

pub(super) async fn domain_weight_save(
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
