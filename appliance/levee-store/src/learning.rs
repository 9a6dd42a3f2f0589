//! Tree `learning`: the state of safe learning (`levee_filter::votes`), as JSON values.
//!
//! Keys: `global` (the global path: pending messages, de-duplication, counters), `heldback`
//! (the validation sample) and `user:<address>` (one user's own votes, so a vote rewrites
//! one small record, not everyone's). The store does not know the types (they live in
//! `levee-filter`, below it); it keeps them readable and in one place.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{db_err, Store, StoreError};

/// The key of the global learning state.
pub const LEARN_GLOBAL: &str = "global";
/// The key of the held-back validation sample.
pub const LEARN_HELDBACK: &str = "heldback";
const USER_PREFIX: &str = "user:";

fn codec(what: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Codec { what: format!("learning {what}"), message: e.to_string() }
}

impl Store {
    /// Writes one learning record (not flushed: the next group commit or flush makes it durable).
    pub fn learning_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(codec(key))?;
        self.learning.insert(key, bytes).map_err(db_err("learning put"))?;
        Ok(())
    }

    pub fn learning_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.learning.get(key).map_err(db_err("learning get"))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(codec(key))?)),
            None => Ok(None),
        }
    }

    /// One user's votes (`user` lower-cased).
    pub fn learning_user_put<T: Serialize>(&self, user: &str, value: &T) -> Result<(), StoreError> {
        self.learning_put(&format!("{USER_PREFIX}{user}"), value)
    }

    /// Every user's votes. An unreadable record is skipped and named in the second list, so one
    /// bad record cannot stop the engine.
    #[allow(clippy::type_complexity)]
    pub fn learning_users<T: DeserializeOwned>(
        &self,
    ) -> Result<(Vec<(String, T)>, Vec<String>), StoreError> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for kv in self.learning.scan_prefix(USER_PREFIX) {
            let (k, v) = kv.map_err(db_err("learning scan"))?;
            let user = String::from_utf8_lossy(&k[USER_PREFIX.len()..]).into_owned();
            match serde_json::from_slice(&v) {
                Ok(t) => out.push((user, t)),
                Err(_) => bad.push(user),
            }
        }
        Ok((out, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_records_persist() {
        let dir = std::env::temp_dir().join(format!("levee-store-learning-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.learning_put(LEARN_GLOBAL, &vec![1u32, 2, 3]).unwrap();
            s.learning_user_put("a@example.test", &"votes a").unwrap();
            s.learning_user_put("b@example.test", &"votes b").unwrap();
            s.learning_put("user:c@example.test", &7u32).unwrap();
            s.flush().unwrap();
        }
        let s = crate::tests::reopen(&dir);
        assert_eq!(s.learning_get::<Vec<u32>>(LEARN_GLOBAL).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(s.learning_get::<Vec<u32>>(LEARN_HELDBACK).unwrap(), None);
        let (users, bad) = s.learning_users::<String>().unwrap();
        assert_eq!(
            users,
            [
                ("a@example.test".into(), "votes a".into()),
                ("b@example.test".into(), "votes b".into())
            ]
        );
        assert_eq!(bad, ["c@example.test"]);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
