//! Levee's content filter: checks that emit findings, and the pure scorer.
//!
//! Checks name what they saw ([`Finding`]: a symbol and a detail, never a score). One table of
//! weights and three thresholds ([`score::Policy`]) and one pure function ([`score::verdict`])
//! turn findings into a [`levee_types::Verdict`]. The content checks here are:
//!
//! - [`bayes`]: a trainable token classifier (Robinson f(w) smoothing, Fisher chi-square
//!   combining) plus a [`linear`] model (logistic regression on hashed tokens) trained on the
//!   same tokens; their combined probability is reported as a `BAYES_*` bucket;
//! - [`rules`]: a small set of structural rules (GTUBE, missing headers, dangerous attachments...);
//! - [`sa`]: SpamAssassin's rule files (`levee-sarules`), each hit an `SA_<NAME>` finding;
//! - [`limits`]: bounds on MIME depth, part count, header count and line length, checked before
//!   any parse; the other checks read a message only up to the first bound it exceeds.
//!
//! [`votes`] turns releases, reports and strong evidence into bounded, validated learning.
//!
//! [`eval`] trains and measures the filter on a labelled corpus; it is the only module that
//! touches the file system.

pub mod bayes;
pub mod eval;
pub mod fit;
mod html;
pub mod linear;
pub mod mailbox;
pub mod rules;
pub mod sa;
pub mod score;
pub mod votes;

pub use levee_content::limits;
pub use levee_types::Finding;

/// Errors of the filter crate.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A stored Bayes model could not be decoded.
    #[error("corrupt bayes model: {0}")]
    CorruptModel(String),
    /// A corpus manifest line could not be understood.
    #[error("manifest {path} line {line}: {reason}")]
    Manifest { path: String, line: usize, reason: String },
    /// Reading a corpus file or directory failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FilterError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FilterError::Io { path: path.display().to_string(), source }
    }
}

/// Content findings scored by `policy`: the whole content filter for one message, as the relay
/// calls it when it has no findings of its own to add.
pub fn classify(
    model: &bayes::Model,
    sa_rules: Option<&levee_sarules::RuleSet>,
    policy: &score::Policy,
    message: &[u8],
    allow_listed: bool,
) -> levee_types::Verdict {
    score::verdict(policy, &content_findings(model, sa_rules, message), allow_listed)
}

/// Every content finding for one message: the bounds that bit, the rules, SpamAssassin's rules
/// when loaded, and the Bayes bucket. Pure: no network, no clock; the relay adds its own
/// findings (DNSBL, SPF...).
pub fn content_findings(
    model: &bayes::Model,
    sa_rules: Option<&levee_sarules::RuleSet>,
    message: &[u8],
) -> Vec<Finding> {
    content_findings_received(model, sa_rules, "", message)
}

/// [`content_findings`] for mail the gateway is receiving: `received` is the `Received:`
/// header it adds for this connection, which SpamAssassin's relay rules read on top of the
/// message's own chain (only they see it; the message is scanned and bounded once).
pub fn content_findings_received(
    model: &bayes::Model,
    sa_rules: Option<&levee_sarules::RuleSet>,
    received: &str,
    message: &[u8],
) -> Vec<Finding> {
    content_scan(model, sa_rules, received, message, 0).findings
}

/// What one pass of the content filter over a message yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scanned {
    pub findings: Vec<Finding>,
    /// The message's link hosts for the URI lists, at most the number asked for.
    pub links: Vec<levee_content::UriHost>,
    /// The Bayes tokens, for learning ([`votes::MessageKey::with_tokens`]).
    pub tokens: Vec<String>,
}

/// [`content_findings_received`] and the message's first `max_links` link hosts (none when
/// 0), from one parse ([`levee_content::Content`]): the bounds, the rules, SpamAssassin's
/// rules and the Bayes tokens all read it, and the relay asks the URI lists about its links.
pub fn content_scan(
    model: &bayes::Model,
    sa_rules: Option<&levee_sarules::RuleSet>,
    received: &str,
    message: &[u8],
    max_links: usize,
) -> Scanned {
    let content = levee_content::Content::parse(message);
    let mut findings = content.bounds().findings.clone();
    findings.extend(rules::check_content(&content));
    if let Some(set) = sa_rules {
        findings.extend(sa::findings_content(set, &content, received));
    }
    let tokens = bayes::tokenize_content(&content);
    findings.extend(bayes::findings(model, &tokens));
    let links = if max_links > 0 { content.links(max_links) } else { Vec::new() };
    Scanned { findings, links, tokens }
}
