//! Counts over the message log for the dashboard, the API and the report mail. Kept out
//! of the pages so that the mail writers (`mailout`) do not depend on the HTML pages.

use crate::{now, AppResult, AppState};
use levee_types::QueueId;
use std::collections::HashMap;

/// The message log's actions, each with its colour in the charts.
pub(crate) const VERDICTS: [(&str, &str); 5] = [
    ("accept", "#4a9"),
    ("tag", "#db3"),
    ("quarantine", "#e73"),
    ("reject", "#c33"),
    ("tempfail", "#88a"),
];

pub(crate) struct Stats {
    pub hours: Vec<String>,
    pub per_hour: Vec<(&'static str, &'static str, Vec<u64>)>,
    pub total: HashMap<String, u64>,
    pub reasons: Vec<(String, u64)>,
    pub senders: Vec<(String, u64)>,
    pub recipients: Vec<(String, u64)>,
}

fn top(m: HashMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Counts over the message log for the last `hours` hours.
pub(crate) fn stats(st: &AppState, hours: u64) -> AppResult<Stats> {
    let t = now();
    let start = (t / 3600 + 1 - hours) * 3600;
    let mut per_hour: Vec<_> =
        VERDICTS.iter().map(|(n, c)| (*n, *c, vec![0u64; hours as usize])).collect();
    let (mut total, mut reasons, mut senders, mut rcpts) =
        (HashMap::new(), HashMap::new(), HashMap::new(), HashMap::new());
    let mut before: Option<QueueId> = None;
    // At most 100k records; the log is newest first.
    'pages: for _ in 0..100 {
        let page = st.store().log_page(before.as_ref(), 1000)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if e.received_at < start {
                break 'pages;
            }
            let bucket = ((e.received_at - start) / 3600) as usize;
            if let Some(s) = per_hour.iter_mut().find(|s| s.0 == e.action) {
                if let Some(b) = s.2.get_mut(bucket) {
                    *b += 1;
                }
            }
            *total.entry(e.action.clone()).or_insert(0) += 1;
            for (sym, _, w) in &e.findings {
                if *w > 0.0 {
                    *reasons.entry(sym.clone()).or_insert(0) += 1;
                }
            }
            *senders
                .entry(if e.mail_from.is_empty() {
                    "<>".into()
                } else {
                    e.mail_from.to_lowercase()
                })
                .or_insert(0) += 1;
            for r in &e.rcpt_to {
                *rcpts.entry(r.to_lowercase()).or_insert(0) += 1;
            }
        }
        before = page.last().map(|e| e.id.clone());
    }
    let hours_labels = (0..hours).map(|i| format!("{:02}h", ((start / 3600 + i) % 24))).collect();
    Ok(Stats {
        hours: hours_labels,
        per_hour,
        total,
        reasons: top(reasons, 10),
        senders: top(senders, 10),
        recipients: top(rcpts, 10),
    })
}
