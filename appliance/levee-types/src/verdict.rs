//! What the filter saw (findings) and what it decided (verdict).

use std::fmt;

/// One observation of a check: a symbol such as `DNSBL_ZEN_SBL` and a detail for
/// people. Findings carry no score: weights live in config and one scorer applies them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Finding {
    pub symbol: String,
    pub detail: String,
}

impl Finding {
    pub fn new(symbol: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding { symbol: symbol.into(), detail: detail.into() }
    }
}

/// The decision for a message, in order of severity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Action {
    Accept,
    Tag,
    Quarantine,
    Reject,
    Tempfail,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tag => "tag",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accept" => Action::Accept,
            "tag" => Action::Tag,
            "quarantine" => Action::Quarantine,
            "reject" => Action::Reject,
            "tempfail" => Action::Tempfail,
            _ => return None,
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scorer's output: the action, the total score and the findings it was built from,
/// each with the weight it was given, so every verdict explains itself.
#[derive(Clone, PartialEq, Debug)]
pub struct Verdict {
    pub action: Action,
    pub score: f64,
    pub findings: Vec<(Finding, f64)>,
}

impl Verdict {
    /// The verdict of a message that no check has looked at.
    pub fn unfiltered() -> Self {
        Verdict { action: Action::Accept, score: 0.0, findings: Vec::new() }
    }

    /// The symbols that pushed towards spam (positive weight), space-separated: the reason a
    /// refusal gives the client.
    pub fn spam_symbols(&self) -> String {
        let parts: Vec<&str> = self
            .findings
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|(f, _)| f.symbol.as_str())
            .collect();
        parts.join(" ")
    }

    /// `SYMBOL(weight) SYMBOL(weight)` for the X-Levee-Findings header and logs.
    pub fn findings_summary(&self) -> String {
        let parts: Vec<String> =
            self.findings.iter().map(|(f, w)| format!("{}({:.2})", f.symbol, w)).collect();
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spam_symbols_name_only_what_pushed_towards_spam() {
        let v = Verdict {
            action: Action::Reject,
            score: 9.5,
            findings: vec![
                (Finding::new("RBL_X", "listed"), 8.0),
                (Finding::new("DKIM_PASS", "ok"), -0.5),
                (Finding::new("SPF_TIMEOUT", "dns"), 0.0),
                (Finding::new("RDNS_NONE", "no ptr"), 2.0),
            ],
        };
        assert_eq!(v.spam_symbols(), "RBL_X RDNS_NONE");
        assert_eq!(
            v.findings_summary(),
            "RBL_X(8.00) DKIM_PASS(-0.50) SPF_TIMEOUT(0.00) RDNS_NONE(2.00)"
        );
    }
}
