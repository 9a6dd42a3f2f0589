//! Counts over the message log for the dashboard, the metrics and the report mail. Kept out
//! of the pages so that the mail writers (`mailout`) do not depend on the HTML pages.

use crate::{now, AppResult, AppState};
use levee_store::TopKind;
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

/// Counts over the message log for the last `hours` hours, from the store's counters
/// (a few keys per hour of the window, not the log itself).
pub(crate) fn stats(st: &AppState, hours: u64) -> AppResult<Stats> {
    let first = now() / 3600 + 1 - hours;
    let c = st.store().counts(first, true)?;
    let mut per_hour: Vec<_> =
        VERDICTS.iter().map(|(n, c)| (*n, *c, vec![0u64; hours as usize])).collect();
    let mut total = HashMap::new();
    for ((hour, action), n) in &c.log_by_hour {
        let bucket = (hour - first) as usize;
        if let Some(b) =
            per_hour.iter_mut().find(|s| s.0 == action).and_then(|s| s.2.get_mut(bucket))
        {
            *b += n;
        }
        *total.entry(action.clone()).or_insert(0) += n;
    }
    let (mut reasons, mut senders, mut rcpts) = (HashMap::new(), HashMap::new(), HashMap::new());
    for ((_, kind, name), n) in c.top_by_hour {
        let m = match kind {
            TopKind::Reason => &mut reasons,
            TopKind::Sender => &mut senders,
            TopKind::Recipient => &mut rcpts,
        };
        *m.entry(name).or_insert(0) += n;
    }
    let hours_labels = (0..hours).map(|i| format!("{:02}h", (first + i) % 24)).collect();
    Ok(Stats {
        hours: hours_labels,
        per_hour,
        total,
        reasons: top(reasons, 10),
        senders: top(senders, 10),
        recipients: top(rcpts, 10),
    })
}

/// Messages received in the last 24 hours, by verdict (the `/metrics` gauge), without the
/// top lists that [`stats`] also reads.
pub(crate) fn last_day(st: &AppState) -> AppResult<Vec<(&'static str, u64)>> {
    let first = now() / 3600 + 1 - 24;
    let c = st.store().counts(first, false)?;
    Ok(VERDICTS
        .iter()
        .map(|(name, _)| {
            let n = c.log_by_hour.iter().filter(|((_, a), _)| a == name).map(|(_, n)| n).sum();
            (*name, n)
        })
        .collect())
}
