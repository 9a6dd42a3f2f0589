//! Page layout and small view helpers. `maud` escapes every `(expr)`; nothing here
//! uses `PreEscaped` on data that came from outside, except the server-built SVG whose
//! text parts are escaped by [`crate::sanitize::escape`].

use crate::auth::Perm;
use crate::Viewer;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

pub const CSS: &str = include_str!("../static/app.css");
pub const JS: &str = include_str!("../static/app.js");

/// Navigation entries: (path, label, permission needed; `None` = end users only).
const NAV: &[(&str, &str, Option<Perm>)] = &[
    ("/dashboard", "Dashboard", Some(Perm::ViewAll)),
    ("/quarantine", "Quarantine", Some(Perm::ViewAll)),
    ("/log", "Message log", Some(Perm::ViewAll)),
    ("/queue", "Queue", Some(Perm::ViewAll)),
    ("/domains", "Domains", Some(Perm::ViewAll)),
    ("/checks", "Why spam?", Some(Perm::ViewAll)),
    ("/policy", "Policy", Some(Perm::ViewAll)),
    ("/training", "Training", Some(Perm::Settings)),
    ("/lists", "Allow/block", Some(Perm::ViewAll)),
    ("/reports", "Reports", Some(Perm::Settings)),
    ("/users", "Users", Some(Perm::Users)),
    ("/system", "System", Some(Perm::Settings)),
    ("/my/quarantine", "My quarantine", None),
    ("/my/lists", "My allow/block list", None),
];

pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — Levee" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Levee" }
                    @if let Some(v) = viewer {
                        nav {
                            @for (path, label, perm) in NAV {
                                @let show = match perm { Some(p) => v.can(*p), None => !v.is_staff() };
                                @if show { a href=(path) { (label) } }
                            }
                            a href="/account" { "Account" }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="_csrf" value=(v.csrf());
                            span.who { (v.user.name) " (" (v.user.role.as_str()) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

pub fn error_page(status: StatusCode, text: &str) -> Response {
    let mut r =
        page(status.canonical_reason().unwrap_or("Error"), None, html! { p.error { (text) } });
    *r.status_mut() = status;
    r
}

pub fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="_csrf" value=(v.csrf()); }
}

/// A one-button form posting to `action`.
pub fn button(v: &Viewer, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(v))
            button class=(class) type="submit" { (label) }
        }
    }
}

pub fn time(unix: u64) -> String {
    levee_relay::rfc5322_date(unix)
}

pub fn notice(msg: Option<&str>) -> Markup {
    html! { @if let Some(m) = msg { p.notice { (m) } } }
}

/// A stacked bar chart as inline SVG: one bar per bucket, one colour per series.
pub fn bar_chart(labels: &[String], series: &[(&str, &str, Vec<u64>)]) -> Markup {
    use crate::sanitize::escape;
    let w = 720.0;
    let h = 200.0;
    let n = labels.len().max(1) as f64;
    let max = (0..labels.len())
        .map(|i| series.iter().map(|s| s.2.get(i).copied().unwrap_or(0)).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bw = w / n;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">",
        h + 40.0
    );
    for (i, label) in labels.iter().enumerate() {
        let mut y = h;
        for (name, colour, values) in series {
            let v = values.get(i).copied().unwrap_or(0);
            if v == 0 {
                continue;
            }
            let bh = v as f64 / max * h;
            y -= bh;
            svg.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                i as f64 * bw + 1.0,
                y,
                (bw - 2.0).max(1.0),
                bh,
                escape(colour),
                escape(label),
                escape(name),
                v
            ));
        }
        if i % 3 == 0 {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{}</text>",
                i as f64 * bw,
                h + 14.0,
                escape(label)
            ));
        }
    }
    let mut x = 0.0;
    for (name, colour, _) in series {
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            h + 24.0,
            escape(colour),
            x + 14.0,
            h + 33.0,
            escape(name)
        ));
        x += 110.0;
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"10\" font-size=\"10\" text-anchor=\"end\">max {}</text></svg>",
        w - 2.0,
        max
    ));
    PreEscaped(svg)
}
