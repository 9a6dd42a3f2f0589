//! Allow and block lists, stored in their text form (`levee_types::list`), each with
//! who added it and when.

use crate::{db_err, Store, StoreError};
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

fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec { what: "list entry".into(), message: e.to_string() }
}

impl Store {
    /// Adds an entry (validated by parsing) and returns its id; an identical entry
    /// is not added twice.
    pub fn list_add(
        &self,
        entry: &ListEntry,
        note: &str,
        by: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let text = entry.to_string();
        if let Some(existing) = self.list_all()?.into_iter().find(|e| e.entry == text) {
            return Ok(existing.id);
        }
        let id = self.db.generate_id().map_err(db_err("list id"))?;
        let stored = StoredListEntry {
            id,
            entry: text,
            note: note.to_string(),
            created_at: now,
            created_by: by.to_string(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(codec)?;
        self.lists.insert(id.to_be_bytes(), bytes).map_err(db_err("list add"))?;
        self.lists.flush().map_err(db_err("list flush"))?;
        Ok(id)
    }

    pub fn list_remove(&self, id: u64) -> Result<bool, StoreError> {
        let old = self.lists.remove(id.to_be_bytes()).map_err(db_err("list remove"))?;
        self.lists.flush().map_err(db_err("list flush"))?;
        Ok(old.is_some())
    }

    pub fn list_all(&self) -> Result<Vec<StoredListEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.lists.iter() {
            let (_, v) = kv.map_err(db_err("list scan"))?;
            out.push(serde_json::from_slice(&v).map_err(codec)?);
        }
        Ok(out)
    }

    /// Every entry that parses, for the filter.
    pub fn list_entries(&self) -> Result<Vec<ListEntry>, StoreError> {
        Ok(self.list_all()?.iter().filter_map(StoredListEntry::parsed).collect())
    }

    /// Stores a named blob (the Bayes model, say) durably.
    pub fn blob_put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.blobs.insert(name, bytes).map_err(db_err("blob put"))?;
        self.blobs.flush().map_err(db_err("blob flush"))?;
        Ok(())
    }

    pub fn blob_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(name).map_err(db_err("blob get"))?.map(|v| v.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_blobs_persist() {
        let dir = std::env::temp_dir().join(format!("levee-store-lists-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            let e: ListEntry = "allow sender alice@example.com".parse().unwrap();
            let id = s.list_add(&e, "customer", "admin", 1).unwrap();
            assert_eq!(s.list_add(&e, "again", "admin", 2).unwrap(), id);
            s.list_add(&"block country CN".parse().unwrap(), "", "admin", 3).unwrap();
            s.blob_put("bayes", b"model").unwrap();
            assert!(s.list_remove(id).unwrap());
            assert!(!s.list_remove(id).unwrap());
        }
        let s = Store::open(&dir).unwrap();
        let all = s.list_entries().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].to_string(), "block country CN");
        assert_eq!(s.blob_get("bayes").unwrap().unwrap(), b"model");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
