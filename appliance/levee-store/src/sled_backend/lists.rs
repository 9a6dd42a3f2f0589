//! Trees `lists` (id → entry, in its text form with who added it and when) and
//! `list_index` (entry text → id). Both change in one transaction, and an add inserts
//! only when the text is not in the index yet, so two people adding the same entry at
//! once get one entry (and the same id).

use levee_types::list::ListEntry;
use sled::Transactional;
use std::collections::hash_map::{Entry, HashMap};

use super::{abort, db_err, tx_err, SledBackend};
use crate::backend::{BlobStore, ListStore};
use crate::{StoreError, StoredListEntry};

/// In `meta`: the index has been built (stores from before it have none).
const KEY_INDEXED: &[u8] = b"lists_indexed";

fn codec(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec { what: "list entry".into(), message: e.to_string() }
}

fn id_of(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| codec("index value is not an id"))
}

/// Builds the text index of a store from before it, once. Duplicates that the old
/// check-then-insert let in are dropped (the oldest id stays): they are the same rule.
pub(crate) fn index_once(
    lists: &sled::Tree,
    index: &sled::Tree,
    meta: &sled::Tree,
) -> Result<(), StoreError> {
    if meta.contains_key(KEY_INDEXED).map_err(db_err("read meta"))? {
        return Ok(());
    }
    let mut first = HashMap::new();
    let mut duplicates = Vec::new();
    for kv in lists.iter() {
        let (k, v) = kv.map_err(db_err("list scan"))?;
        let e: StoredListEntry = serde_json::from_slice(&v).map_err(codec)?;
        match first.entry(e.entry) {
            Entry::Occupied(_) => duplicates.push(k),
            Entry::Vacant(v) => {
                v.insert(e.id);
            }
        }
    }
    (lists, index, meta)
        .transaction(|(lists, index, meta)| {
            for k in &duplicates {
                lists.remove(k)?;
            }
            for (text, id) in &first {
                index.insert(text.as_bytes(), &id.to_be_bytes())?;
            }
            meta.insert(KEY_INDEXED, b"1")?;
            Ok(())
        })
        .map_err(tx_err("list index"))
}

impl ListStore for SledBackend {
    /// Adds an entry (validated by parsing) and returns its id; an identical entry
    /// is not added twice.
    fn list_add(
        &self,
        entry: &ListEntry,
        note: &str,
        by: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let text = entry.to_string();
        // Taken before the transaction, which may run more than once; an id left unused
        // by a duplicate is only a gap.
        let id = self.db.generate_id().map_err(db_err("list id"))?;
        let stored = StoredListEntry {
            id,
            entry: text,
            note: note.to_string(),
            created_at: now,
            created_by: by.to_string(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(codec)?;
        let text = stored.entry.as_bytes();
        let id = (&self.lists, &self.list_index)
            .transaction(|(lists, index)| {
                if let Some(existing) = index.get(text)? {
                    return id_of(&existing).map_err(abort);
                }
                index.insert(text, &id.to_be_bytes())?;
                lists.insert(&id.to_be_bytes(), bytes.as_slice())?;
                Ok(id)
            })
            .map_err(tx_err("list add"))?;
        self.db.flush().map_err(db_err("list flush"))?;
        Ok(id)
    }

    fn list_remove(&self, id: u64) -> Result<bool, StoreError> {
        let key = id.to_be_bytes();
        let removed = (&self.lists, &self.list_index)
            .transaction(|(lists, index)| {
                let Some(old) = lists.remove(&key)? else { return Ok(false) };
                let old: StoredListEntry =
                    serde_json::from_slice(&old).map_err(codec).map_err(abort)?;
                // Unlinked only when it names this id, so a stray record cannot unlink
                // another's entry.
                if index.get(old.entry.as_bytes())?.is_some_and(|v| v.as_ref() == key) {
                    index.remove(old.entry.as_bytes())?;
                }
                Ok(true)
            })
            .map_err(tx_err("list remove"))?;
        self.db.flush().map_err(db_err("list flush"))?;
        Ok(removed)
    }

    fn list_all(&self) -> Result<Vec<StoredListEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.lists.iter() {
            let (_, v) = kv.map_err(db_err("list scan"))?;
            out.push(serde_json::from_slice(&v).map_err(codec)?);
        }
        Ok(out)
    }
}

impl BlobStore for SledBackend {
    /// Stores a named blob (the Bayes model, say) durably.
    fn blob_put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.blobs.insert(name, bytes).map_err(db_err("blob put"))?;
        self.blobs.flush().map_err(db_err("blob flush"))?;
        Ok(())
    }

    fn blob_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(name).map_err(db_err("blob get"))?.map(|v| v.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::sled_backend::tests::{reopen, TempDir};

    #[test]
    fn an_old_store_gets_its_index_once_and_loses_its_duplicates() {
        let d = TempDir::new("lists-upgrade");
        let dir = &d.0;
        let text = "allow sender alice@example.com";
        {
            let s = SledBackend::open(dir).unwrap();
            // What the old check-then-insert could leave: one entry under three ids.
            for id in [7u64, 3, 9] {
                let e = StoredListEntry {
                    id,
                    entry: text.into(),
                    note: String::new(),
                    created_at: id,
                    created_by: "admin".into(),
                };
                s.lists.insert(id.to_be_bytes(), serde_json::to_vec(&e).unwrap()).unwrap();
            }
            s.list_index.clear().unwrap();
            s.db.open_tree("meta").unwrap().remove(KEY_INDEXED).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir);
        let all = s.list_all().unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        assert_eq!(s.list_add(&text.parse().unwrap(), "", "admin", 1).unwrap(), 3);
        assert!(s.list_remove(3).unwrap());
        assert_ne!(s.list_add(&text.parse().unwrap(), "", "admin", 1).unwrap(), 3);
        assert_eq!(s.list_all().unwrap().len(), 1);
    }
}
