//! What the console shows about the engine's own health: the last warning of each
//! check source (a DNS list refusing us, a resolver timing out), and the most recent
//! log lines.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// The last warning per source, with when it was last seen and how often.
#[derive(Debug, Default)]
pub struct Health(Mutex<BTreeMap<String, HealthEntry>>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEntry {
    pub source: String,
    pub message: String,
    pub last_seen: u64,
    pub count: u64,
}

impl Health {
    pub fn record(&self, source: &str, message: &str, now: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(source.to_string()).or_insert_with(|| HealthEntry {
            source: source.to_string(),
            message: String::new(),
            last_seen: 0,
            count: 0,
        });
        e.message = message.to_string();
        e.last_seen = now;
        e.count += 1;
    }

    pub fn entries(&self) -> Vec<HealthEntry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// The last lines the process logged, for the console's system page. Bounded.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
    cap: usize,
}

impl LogRing {
    pub fn new(cap: usize) -> LogRing {
        LogRing { lines: Mutex::new(VecDeque::with_capacity(cap)), cap }
    }

    /// Adds text (one or more lines; a line is cut at 1000 characters).
    pub fn push(&self, text: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for line in text.lines().filter(|l| !l.is_empty()) {
            if lines.len() == self.cap {
                lines.pop_front();
            }
            lines.push_back(line.chars().take(1000).collect());
        }
    }

    /// Newest last.
    pub fn recent(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_keeps_the_last_warning_per_source() {
        let h = Health::default();
        h.record("zen.example", "refused (127.255.255.254)", 10);
        h.record("zen.example", "timed out", 20);
        h.record("dbl.example", "refused", 15);
        let e = h.entries();
        assert_eq!(e.len(), 2);
        let zen = e.iter().find(|e| e.source == "zen.example").unwrap();
        assert_eq!((zen.message.as_str(), zen.last_seen, zen.count), ("timed out", 20, 2));
    }

    #[test]
    fn the_ring_keeps_only_the_newest_lines() {
        let r = LogRing::new(3);
        r.push("a\nb\n");
        r.push("c\nd");
        assert_eq!(r.recent(), vec!["b", "c", "d"]);
    }
}
