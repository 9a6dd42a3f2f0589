//! Allow and block lists as stored: each entry in its text form (`levee_types::list`),
//! with who added it and when. The text stays text (not a parsed `ListEntry`) so an
//! entry a later version no longer parses is still listed, and skipped by the filter.

use levee_types::list::ListEntry;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredListEntry {
    pub id: u64,
    /// The entry in its text form, e.g. `allow sender alice@example.com`.
    pub entry: String,
    pub note: String,
    pub created_at: u64,
    pub created_by: String,
}

impl StoredListEntry {
    pub fn parsed(&self) -> Option<ListEntry> {
        self.entry.parse().ok()
    }
}
