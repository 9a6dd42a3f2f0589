//! Temporary stand-in for the per-user vote path of the safe-learning work; deleted when
//! that branch is merged (its `learn_vote` has the same name and arguments).

use crate::{Engine, RelayError};

impl Engine {
    /// Learns `message` as `voter`'s vote; here simply as an admin would.
    pub async fn learn_vote(
        &self,
        voter: &str,
        message: &[u8],
        spam: bool,
    ) -> Result<(), RelayError> {
        let _ = voter;
        self.learn(message, spam).await
    }
}
