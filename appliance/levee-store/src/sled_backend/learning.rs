//! Tree `learning`: safe learning's records as JSON, under the keys `Store` chooses.

use super::{db_err, SledBackend};
use crate::backend::LearningStore;
use crate::StoreError;

impl LearningStore for SledBackend {
    fn learning_put_json(&self, key: &str, json: &[u8]) -> Result<(), StoreError> {
        self.learning.insert(key, json).map_err(db_err("learning put"))?;
        Ok(())
    }

    fn learning_get_json(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.learning.get(key).map_err(db_err("learning get"))?.map(|v| v.to_vec()))
    }

    fn learning_scan_json(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.learning
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("learning scan"))?;
                Ok((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v.to_vec()))
            })
            .collect()
    }
}
