//! Allow and block lists, stored in their text form (`levee_types::list`), each with
//! who added it and when.
//!
//! `lists` maps id → entry; `list_index` maps the entry text → its id. Both change in one
//! transaction, and an add inserts only when the text is not in the index yet, so two
//! people adding the same entry at once get one entry (and the same id).

use crate::{abort, db_err, tx_err, Store, StoreError};
use levee_types::list::ListEntry;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use std::collections::hash_map::{Entry, HashMap};

/// In `meta`: the index has been built (stores from before it have none).
const KEY_INDEXED: &[u8] = b"lists_indexed";

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

    pub fn list_remove(&self, id: u64) -> Result<bool, StoreError> {
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
    use std::sync::{Arc, Barrier};

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("levee-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The race of issue 11: every thread sees "not there yet", then all insert.
    #[test]
    fn parallel_adds_of_one_entry_make_exactly_one() {
        let dir = scratch("lists-race");
        let s = Store::open(&dir).unwrap();
        let e: ListEntry = "block sender spam@example.net".parse().unwrap();
        for round in 0..20 {
            let threads = 8;
            let barrier = Arc::new(Barrier::new(threads));
            let ids: Vec<u64> = (0..threads)
                .map(|t| {
                    let (s, e, barrier) = (s.clone(), e.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        s.list_add(&e, &format!("thread {t}"), "admin", round).unwrap()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            let all = s.list_all().unwrap();
            assert_eq!(all.len(), 1, "round {round}: {all:?}");
            assert!(ids.iter().all(|id| *id == all[0].id), "round {round}: {ids:?}");
            assert!(s.list_remove(all[0].id).unwrap());
            assert!(s.list_all().unwrap().is_empty());
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_old_store_gets_its_index_once_and_loses_its_duplicates() {
        let dir = scratch("lists-upgrade");
        let text = "allow sender alice@example.com";
        {
            let s = Store::open(&dir).unwrap();
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
        let s = crate::tests::reopen(&dir);
        let all = s.list_all().unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        assert_eq!(s.list_add(&text.parse().unwrap(), "", "admin", 1).unwrap(), 3);
        assert!(s.list_remove(3).unwrap());
        assert_ne!(s.list_add(&text.parse().unwrap(), "", "admin", 1).unwrap(), 3);
        assert_eq!(s.list_all().unwrap().len(), 1);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        let s = crate::tests::reopen(&dir);
        let all = s.list_entries().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].to_string(), "block country CN");
        assert_eq!(s.blob_get("bayes").unwrap().unwrap(), b"model");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
