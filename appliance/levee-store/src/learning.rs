//! Safe learning's state (`levee_filter::votes`), typed here and kept as JSON by the
//! backend ([`crate::backend::LearningStore`]): the types live in `levee-filter`, above
//! the store, which keeps them readable and in one place.
//!
//! Keys: `global` (the global path: pending messages, de-duplication, counters), `heldback`
//! (the validation sample) and `user:<address>` (one user's own votes, so a vote rewrites
//! one small record, not everyone's).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Store, StoreError};

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
        self.learning_put_json(key, &bytes)
    }

    pub fn learning_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.learning_get_json(key)? {
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
        for (user, v) in self.learning_scan_json(USER_PREFIX)? {
            match serde_json::from_slice(&v) {
                Ok(t) => out.push((user, t)),
                Err(_) => bad.push(user),
            }
        }
        Ok((out, bad))
    }
}
