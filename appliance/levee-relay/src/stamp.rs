//! The install stamp: the `X-Levee-Stamp` value that tells the downstream a message came
//! through this gateway. It can be rotated (say, after it leaked); the previous value
//! stays listed as accepted for a grace period, so the downstream's rule can be updated
//! without refusing mail in between.

use levee_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// How long the downstream should still accept the previous stamp after a rotation.
pub const GRACE_SECS: u64 = 7 * 86_400;

const BLOB: &str = "stamp";

/// The stamp in use, and the one before it while its grace period lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamps {
    pub current: String,
    /// The previous stamp and until when (Unix seconds) the downstream should accept it.
    pub previous: Option<(String, u64)>,
}

impl Stamps {
    /// Every stamp the downstream should accept at `now`.
    pub fn accepted(&self, now: u64) -> Vec<&str> {
        let mut v = vec![self.current.as_str()];
        if let Some((p, until)) = &self.previous {
            if now < *until {
                v.push(p);
            }
        }
        v
    }
}

/// The one owner of the stamp: the store holds it, this keeps the value in use.
#[derive(Debug)]
pub(crate) struct Keeper {
    current: RwLock<Arc<Stamps>>,
}

impl Keeper {
    /// The stored stamps, or (never rotated) the one derived from the install secret.
    pub fn load(store: &Store) -> Result<Keeper, StoreError> {
        let stamps = match store.blob_get(BLOB)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Codec {
                what: "the stamp".into(),
                message: e.to_string(),
            })?,
            None => Stamps { current: hex::encode(&store.install_secret()?[..16]), previous: None },
        };
        Ok(Keeper { current: RwLock::new(Arc::new(stamps)) })
    }

    pub fn get(&self) -> Arc<Stamps> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A fresh random stamp; the old one is accepted for [`GRACE_SECS`] from `now`.
    pub fn rotate(&self, store: &Store, now: u64) -> Result<Arc<Stamps>, StoreError> {
        let mut fresh = [0u8; 16];
        getrandom::getrandom(&mut fresh).map_err(|e| StoreError::Random(e.to_string()))?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let next = Arc::new(Stamps {
            current: hex::encode(fresh),
            previous: Some((current.current.clone(), now + GRACE_SECS)),
        });
        let bytes = serde_json::to_vec(&*next)
            .map_err(|e| StoreError::Codec { what: "the stamp".into(), message: e.to_string() })?;
        store.blob_put(BLOB, &bytes)?;
        *current = next.clone();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::Scratch;

    #[test]
    fn a_rotated_stamp_is_kept_and_the_old_one_accepted_for_the_grace_period() {
        let dir = Scratch::new("stamp");
        let store = Store::open(&dir.0).unwrap();
        let keeper = Keeper::load(&store).unwrap();
        let first = keeper.get();
        assert_eq!(first.current, hex::encode(&store.install_secret().unwrap()[..16]));
        assert_eq!(first.accepted(0), [first.current.as_str()]);

        let now = 1_000_000;
        let rotated = keeper.rotate(&store, now).unwrap();
        assert_ne!(rotated.current, first.current);
        assert_eq!(rotated.accepted(now), [rotated.current.as_str(), first.current.as_str()]);
        assert_eq!(rotated.accepted(now + GRACE_SECS), [rotated.current.as_str()]);
        assert_eq!(keeper.get(), rotated);

        drop(keeper);
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(Keeper::load(&store).unwrap().get(), rotated, "kept across a restart");
    }
}
