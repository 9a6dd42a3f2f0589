//! The one place where findings become a decision.
//!
//! A [`Policy`] is a weight per symbol (negative = trust) and three thresholds. [`verdict`] is
//! pure: the same findings and policy always give the same verdict, and every finding is kept in
//! the verdict with the weight it got, so a decision can always be explained.
//!
//! Conventions for symbols:
//! - a symbol ending in `_FAILED`, `_TIMEOUT`, `_TEMPERROR` or `_BLOCKED` (a check that could not
//!   give an answer) weighs 0 unless the policy names it: a broken resolver must be visible, never a silent pass or a silent hit;
//! - a symbol starting with `TEMPFAIL_` asks for a temporary failure (the message should be
//!   retried later because a check it needs is unavailable); it is honoured unless the score is
//!   already at the reject threshold, since retrying cannot change that outcome.

use std::collections::HashMap;
use std::sync::Arc;

use levee_types::{Action, Finding, Verdict};

/// Weights and thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub weights: HashMap<String, f64>,
    /// Scores that came with a rule source (SpamAssassin's `score` lines, see [`crate::sa`]):
    /// used for a symbol `weights` does not name, so the config can override any of them.
    pub rule_scores: Arc<HashMap<String, f64>>,
    /// The weight of a symbol neither table names.
    pub default_weight: f64,
    pub tag_at: f64,
    pub quarantine_at: f64,
    pub reject_at: f64,
}

/// The default weights of every symbol this crate emits.
pub const DEFAULT_WEIGHTS: &[(&str, f64)] = &[
    ("GTUBE", 1000.0),
    // Bayes: one bucket fires per message. A model learns the sites it was trained on as much
    // as spam, so on mail from a new site its certainty is worth less than it says: only the
    // top bucket quarantines alone, the others need rules to agree. Chosen on the splits of
    // `examples/splits` (leave-one-source-out and oldest-half-to-newer). With SpamAssassin's
    // rules loaded, against the former weights (-4..8) and no such rules: false positives on
    // an unseen site fell from 2.9% to 2.2%, catch on unseen sites rose by ten points.
    ("BAYES_00", -3.6),
    ("BAYES_05", -1.2),
    ("BAYES_20", 0.0),
    ("BAYES_50", 1.2),
    ("BAYES_80", 3.0),
    ("BAYES_95", 4.2),
    ("BAYES_99", 5.4),
    ("BAYES_999", 6.0),
    ("BAYES_UNTRAINED", 0.0),
    // Rules: weights follow how much more often each fired on training spam than ham
    // (`examples/eval --rule-stats`), kept below the quarantine threshold so that no single
    // structural rule holds a message on its own.
    ("MISSING_DATE", 1.0),
    ("MISSING_MESSAGE_ID", 0.5),
    ("MISSING_FROM", 2.0),
    ("UNPARSABLE_MESSAGE", 2.0),
    ("HTML_ONLY_LITTLE_TEXT", 2.0),
    ("HTML_LINK_TEXT_MISMATCH", 2.0),
    ("URL_NUMERIC_IP", 1.5),
    ("FROM_DISPLAY_ADDR_MISMATCH", 2.0),
    ("FREEMAIL_REPLYTO", 2.0),
    // Fires on many legitimate messages (lists, help desks): a hint only.
    ("REPLYTO_DIFFERENT_DOMAIN", 0.3),
    ("DANGEROUS_ATTACHMENT", 4.0),
    ("SUBJECT_ALL_CAPS", 1.5),
    // Bounds on a message's shape (`crate::limits`). No mail client nests 20 deep or sends
    // 1,000 parts; those shapes exist to exhaust a parser, and they quarantine alone. Many
    // header fields or a very long line also come from broken generators: hints only.
    ("MIME_NESTING_LIMIT", 6.0),
    ("MIME_PARTS_LIMIT", 6.0),
    ("HEADER_COUNT_LIMIT", 3.0),
    ("LINE_LENGTH_LIMIT", 1.0),
    // The client sent before a reply it had to wait for (RFC 2920; postscreen's pipelining
    // test). Bulk spamware does; a few broken scripts do too, so a hint, never a verdict.
    ("SMTP_IMPROPER_PIPELINING", 2.0),
    // Network checks (levee-netcheck). DNS lists are named in the config and carry
    // their weight there. Authentication proves who sent a message, not that it is
    // wanted, so passes earn little trust; failures of a published policy weigh most.
    ("SPF_PASS", 0.0),
    ("SPF_NEUTRAL", 0.0),
    ("SPF_NONE", 0.3),
    ("SPF_SOFTFAIL", 1.0),
    ("SPF_FAIL", 2.0),
    ("SPF_PERMERROR", 0.5),
    ("DKIM_PASS", -0.5),
    ("DKIM_NONE", 0.0),
    ("DKIM_NEUTRAL", 0.0),
    ("DKIM_FAIL", 1.5),
    ("DKIM_PERMERROR", 0.5),
    ("DMARC_PASS", -1.0),
    ("DMARC_NONE", 0.0),
    ("DMARC_PERMERROR", 0.0),
    ("DMARC_POLICY_NONE", 1.0),
    ("DMARC_POLICY_QUARANTINE", 5.0),
    ("DMARC_POLICY_REJECT", 7.0),
    ("ARC_PASS", 0.0),
    ("ARC_NONE", 0.0),
    ("ARC_FAIL", 0.5),
    ("RDNS_NONE", 1.5),
    ("RDNS_NOT_CONFIRMED", 0.5),
    ("ALLOW_LISTED", 0.0),
    // A sender allow entry skipped because the sender's domain did not authenticate: a note.
    ("ALLOW_UNAUTHENTICATED", 0.0),
    // The recipient's own votes on this or a very similar message (`crate::votes`): enough to
    // move a clear verdict a whole step for that recipient, not enough to undo GTUBE or a reject.
    ("USER_HAM_VOTE", -6.0),
    ("USER_SPAM_VOTE", 6.0),
];

/// What each of Levee's own content symbols means, for the console's symbol list; a symbol
/// not named here is described only by its source.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    ("GTUBE", "the GTUBE test string is in the message"),
    ("MISSING_DATE", "no Date header"),
    ("MISSING_MESSAGE_ID", "no Message-ID header"),
    ("MISSING_FROM", "no From header"),
    ("UNPARSABLE_MESSAGE", "the message has no header section at all"),
    ("HTML_ONLY_LITTLE_TEXT", "HTML without a text alternative and under 80 visible characters"),
    (
        "HTML_LINK_TEXT_MISMATCH",
        "a link's visible text is a web address in another domain than its target",
    ),
    ("URL_NUMERIC_IP", "an HTML link points at a bare IPv4 address"),
    ("FROM_DISPLAY_ADDR_MISMATCH", "the From display name holds an address in another domain"),
    ("FREEMAIL_REPLYTO", "replies go to a freemail mailbox while From is elsewhere"),
    ("REPLYTO_DIFFERENT_DOMAIN", "Reply-To's domain differs from From's (list rewrites excepted)"),
    ("DANGEROUS_ATTACHMENT", "an executable, script, disk image or macro document is attached"),
    ("SUBJECT_ALL_CAPS", "the subject has 10+ letters, all capitals"),
    (
        "MIME_NESTING_LIMIT",
        "multipart or message/rfc822 nested more than 20 deep; the rest is not read",
    ),
    ("MIME_PARTS_LIMIT", "more than 1,000 MIME parts; the rest is not read"),
    ("HEADER_COUNT_LIMIT", "a header section of more than 1,000 fields; the rest is not read"),
    ("LINE_LENGTH_LIMIT", "a line longer than 100,000 octets"),
];

/// The meaning of one of Levee's own content symbols ([`DESCRIPTIONS`]).
pub fn describe(symbol: &str) -> Option<&'static str> {
    DESCRIPTIONS.iter().find(|(s, _)| *s == symbol).map(|(_, d)| *d)
}

/// Suffixes of findings that say a check could not give an answer (timed out, failed,
/// a DNS list refused us, a temporary DNS error). They weigh nothing unless the table
/// names them: a broken check must never push mail either way.
const NO_ANSWER: &[&str] = &["_FAILED", "_TIMEOUT", "_TEMPERROR", "_BLOCKED"];

impl Default for Policy {
    fn default() -> Self {
        Policy {
            weights: DEFAULT_WEIGHTS.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
            rule_scores: Arc::default(),
            default_weight: 0.0,
            tag_at: 4.0,
            quarantine_at: 6.0,
            reject_at: 15.0,
        }
    }
}

impl Policy {
    /// The weight a finding with this symbol gets.
    pub fn weight(&self, symbol: &str) -> f64 {
        match self.weights.get(symbol).or_else(|| self.rule_scores.get(symbol)) {
            Some(w) => *w,
            None if NO_ANSWER.iter().any(|s| symbol.ends_with(s)) => 0.0,
            None => self.default_weight,
        }
    }

    /// The action a total score earns, ignoring allow lists and tempfail requests.
    pub fn action_for(&self, score: f64) -> Action {
        if score >= self.reject_at {
            Action::Reject
        } else if score >= self.quarantine_at {
            Action::Quarantine
        } else if score >= self.tag_at {
            Action::Tag
        } else {
            Action::Accept
        }
    }
}

/// The most one rule from a rule source (`SA_*`) weighs on mail whose From domain vouched for
/// it (`DMARC_PASS`): half the default quarantine threshold, so no single heavy rule sinks
/// authenticated mail; it takes two rules, or a rule and the model, to hold it. A weight the
/// config names is the admin's and is not capped.
pub const AUTHENTICATED_RULE_CAP: f64 = 3.0;

/// Findings + policy -> verdict. `allow_listed` forces Accept but keeps the findings and score.
pub fn verdict(policy: &Policy, findings: &[Finding], allow_listed: bool) -> Verdict {
    let authenticated = findings.iter().any(|f| f.symbol == "DMARC_PASS");
    let weight = |f: &Finding| {
        let w = policy.weight(&f.symbol);
        let from_rule_source =
            f.symbol.starts_with(crate::sa::PREFIX) && !policy.weights.contains_key(&f.symbol);
        if authenticated && from_rule_source {
            w.min(AUTHENTICATED_RULE_CAP)
        } else {
            w
        }
    };
    let weighted: Vec<(Finding, f64)> = findings.iter().map(|f| (f.clone(), weight(f))).collect();
    let score: f64 = weighted.iter().map(|(_, w)| w).sum();
    let by_score = policy.action_for(score);
    let action = if allow_listed {
        Action::Accept
    } else if by_score != Action::Reject
        && findings.iter().any(|f| f.symbol.starts_with("TEMPFAIL_"))
    {
        Action::Tempfail
    } else {
        by_score
    };
    Verdict { action, score, findings: weighted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_symbol_has_a_weight_and_a_meaning() {
        for symbol in
            ["MIME_NESTING_LIMIT", "MIME_PARTS_LIMIT", "HEADER_COUNT_LIMIT", "LINE_LENGTH_LIMIT"]
        {
            assert!(Policy::default().weight(symbol) > 0.0, "{symbol}");
            assert!(describe(symbol).is_some(), "{symbol}");
        }
    }

    #[test]
    fn one_heavy_rule_does_not_sink_authenticated_mail_unless_the_admin_says_so() {
        let mut p = Policy {
            rule_scores: Arc::new([("SA_HEAVY".to_owned(), 8.0)].into_iter().collect()),
            ..Policy::default()
        };
        let plain = verdict(&p, &[f("SA_HEAVY")], false);
        assert_eq!((plain.score, plain.action), (8.0, Action::Quarantine));
        let signed = verdict(&p, &[f("SA_HEAVY"), f("DMARC_PASS")], false);
        assert_eq!(signed.action, Action::Accept, "{}", signed.findings_summary());
        assert!(signed.findings_summary().contains("SA_HEAVY(3.00)"));
        p.weights.insert("SA_HEAVY".into(), 8.0);
        let named = verdict(&p, &[f("SA_HEAVY"), f("DMARC_PASS")], false);
        assert_eq!(named.action, Action::Quarantine);
    }

    fn f(s: &str) -> Finding {
        Finding::new(s, "test")
    }

    fn policy() -> Policy {
        Policy {
            weights: [("A", 3.0), ("B", 2.5), ("TRUST", -10.0), ("DNSBL_FAILED", 7.0)]
                .into_iter()
                .map(|(s, w)| (s.to_owned(), w))
                .collect(),
            rule_scores: Default::default(),
            default_weight: 0.25,
            tag_at: 4.0,
            quarantine_at: 6.0,
            reject_at: 15.0,
        }
    }

    #[test]
    fn weights_sum_and_thresholds() {
        let p = policy();
        let v = verdict(&p, &[], false);
        assert_eq!((v.action, v.score), (Action::Accept, 0.0));
        let v = verdict(&p, &[f("A")], false);
        assert_eq!((v.action, v.score), (Action::Accept, 3.0));
        let v = verdict(&p, &[f("A"), f("A"), f("UNKNOWN"), f("UNKNOWN")], false);
        assert_eq!((v.action, v.score), (Action::Quarantine, 6.5));
        let v = verdict(&p, &[f("A"), f("UNKNOWN"), f("UNKNOWN"), f("UNKNOWN")], false);
        assert_eq!((v.action, v.score), (Action::Accept, 3.75));
        let v = verdict(&p, &[f("A"), f("B")], false);
        assert_eq!((v.action, v.score), (Action::Tag, 5.5));
        let v = verdict(&p, &[f("A"), f("A"), f("A"), f("A"), f("A")], false);
        assert_eq!((v.action, v.score), (Action::Reject, 15.0));
        let v = verdict(&p, &[f("A"), f("A"), f("TRUST")], false);
        assert_eq!((v.action, v.score), (Action::Accept, -4.0));
        // Every finding is kept with its weight, in order.
        let v = verdict(&p, &[f("B"), f("A")], false);
        assert_eq!(v.findings, vec![(f("B"), 2.5), (f("A"), 3.0)]);
        assert_eq!(v.findings_summary(), "B(2.50) A(3.00)");
    }

    #[test]
    fn allow_list_accepts_but_explains() {
        let p = policy();
        let v = verdict(&p, &[f("A"), f("A"), f("A"), f("A"), f("A"), f("TEMPFAIL_DNS")], true);
        assert_eq!(v.action, Action::Accept);
        assert_eq!(v.score, 15.25);
        assert_eq!(v.findings.len(), 6);
    }

    #[test]
    fn failed_and_timed_out_checks_weigh_nothing_unless_configured() {
        let mut p = policy();
        p.default_weight = 5.0;
        let v = verdict(
            &p,
            &[f("URIBL_FAILED"), f("SPF_TIMEOUT"), f("DMARC_TEMPERROR"), f("ZEN_BLOCKED")],
            false,
        );
        assert_eq!((v.action, v.score), (Action::Accept, 0.0));
        assert_eq!(v.findings.len(), 4, "failed checks stay visible");
        // Configured explicitly: the table wins.
        let v = verdict(&p, &[f("DNSBL_FAILED")], false);
        assert_eq!(v.score, 7.0);
    }

    #[test]
    fn tempfail_convention() {
        let p = policy();
        let v = verdict(&p, &[f("TEMPFAIL_STORE")], false);
        assert_eq!(v.action, Action::Tempfail);
        let v = verdict(&p, &[f("A"), f("A"), f("A"), f("A"), f("A"), f("TEMPFAIL_STORE")], false);
        assert_eq!(v.action, Action::Reject, "retrying cannot change a reject");
    }

    #[test]
    fn default_policy_covers_every_emitted_symbol() {
        let p = Policy::default();
        assert!(p.tag_at < p.quarantine_at && p.quarantine_at < p.reject_at);
        assert!(p.weight("GTUBE") >= p.reject_at);
        assert!(p.weight("BAYES_00") < 0.0 && p.weight("BAYES_999") > p.weight("BAYES_99"));
        assert!(p.weight("BAYES_999") >= p.quarantine_at);
        for b in [0.0, 0.02, 0.1, 0.5, 0.9, 0.97, 0.995, 0.9999] {
            assert!(p.weights.contains_key(crate::bayes::bucket(b)));
        }
    }
}
