//! URL hosts for the URI lists: `levee-content`'s one link reader, re-exported so the lists
//! and every other check agree on what a message links to.

pub use levee_content::{extract_from_text, registrable_domain, UriHost};

/// Distinct link hosts of a raw RFC 5322 message (read up to its first MIME bound), in
/// order of first appearance, at most `max`. The relay passes the links of the filter's
/// parse instead ([`crate::NetChecks::content_stage`]'s `links`); this is for callers that
/// have only the bytes.
pub fn extract(message: &[u8], max: usize) -> Vec<UriHost> {
    levee_content::Content::parse(message).links(max)
}
