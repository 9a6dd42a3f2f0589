//! Trees of the console's records: `users` (key = lower-case name), `sessions` (key =
//! digest of the session id), `throttle` (key chosen by the console), `tokens` (key =
//! digest of the token) and `schedules` (key = u64 id). Console writes are rare and a
//! person is waiting for them, so each is flushed.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{db_err, SledBackend};
use crate::backend::AccountStore;
use crate::{ApiToken, ReportSchedule, Session, StoreError, Throttle, User};

/// The console's trees, opened with the store.
#[derive(Clone, Debug)]
pub(crate) struct ConsoleTrees {
    users: sled::Tree,
    sessions: sled::Tree,
    throttle: sled::Tree,
    tokens: sled::Tree,
    schedules: sled::Tree,
}

impl ConsoleTrees {
    pub(crate) fn open(db: &sled::Db) -> Result<ConsoleTrees, StoreError> {
        Ok(ConsoleTrees {
            users: db.open_tree("users").map_err(db_err("open tree users"))?,
            sessions: db.open_tree("sessions").map_err(db_err("open tree sessions"))?,
            throttle: db.open_tree("throttle").map_err(db_err("open tree throttle"))?,
            tokens: db.open_tree("tokens").map_err(db_err("open tree tokens"))?,
            schedules: db.open_tree("schedules").map_err(db_err("open tree schedules"))?,
        })
    }
}

fn enc<T: Serialize>(v: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v)
        .map_err(|e| StoreError::Codec { what: what.to_string(), message: e.to_string() })
}

fn dec<T: DeserializeOwned>(v: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(v)
        .map_err(|e| StoreError::Codec { what: what.to_string(), message: e.to_string() })
}

fn get<T: DeserializeOwned>(t: &sled::Tree, k: &[u8], what: &str) -> Result<Option<T>, StoreError> {
    match t.get(k).map_err(db_err("console get"))? {
        Some(v) => dec(&v, what).map(Some),
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(t: &sled::Tree, what: &str) -> Result<Vec<T>, StoreError> {
    t.iter()
        .map(|kv| {
            let (_, v) = kv.map_err(db_err("console scan"))?;
            dec(&v, what)
        })
        .collect()
}

/// Console writes are rare and a person is waiting for them: flush each.
fn put<T: Serialize>(t: &sled::Tree, k: &[u8], v: &T, what: &str) -> Result<(), StoreError> {
    t.insert(k, enc(v, what)?).map_err(db_err("console put"))?;
    t.flush().map_err(db_err("console flush"))?;
    Ok(())
}

/// Changes the record under `k` with `f` in a compare-and-swap loop; nothing when there
/// is none. `fix` restores what `f` must not change (the key's own field).
fn update<T: Serialize + DeserializeOwned>(
    t: &sled::Tree,
    k: &[u8],
    what: &str,
    f: &mut dyn FnMut(&mut T),
    fix: impl Fn(&mut T),
) -> Result<Option<T>, StoreError> {
    loop {
        let Some(old) = t.get(k).map_err(db_err("console get"))? else { return Ok(None) };
        let mut v: T = dec(&old, what)?;
        f(&mut v);
        fix(&mut v);
        let swapped = t
            .compare_and_swap(k, Some(old), Some(enc(&v, what)?))
            .map_err(db_err("console update"))?;
        if swapped.is_ok() {
            return Ok(Some(v));
        }
    }
}

fn del(t: &sled::Tree, k: &[u8]) -> Result<bool, StoreError> {
    let old = t.remove(k).map_err(db_err("console remove"))?;
    t.flush().map_err(db_err("console flush"))?;
    Ok(old.is_some())
}

impl AccountStore for SledBackend {
    // ---- users ---------------------------------------------------------------------

    fn user_get(&self, name: &str) -> Result<Option<User>, StoreError> {
        get(&self.console.users, name.to_lowercase().as_bytes(), "user")
    }

    /// Creates or replaces a user (the name is stored lower-case).
    fn user_put(&self, u: &User) -> Result<(), StoreError> {
        let mut u = u.clone();
        u.name = u.name.to_lowercase();
        put(&self.console.users, u.name.as_bytes(), &u, "user")
    }

    /// Creates a user only if the name is free; `false` if it is taken.
    fn user_create(&self, u: &User) -> Result<bool, StoreError> {
        let mut u = u.clone();
        u.name = u.name.to_lowercase();
        let swapped = self
            .console
            .users
            .compare_and_swap(u.name.as_bytes(), None as Option<&[u8]>, Some(enc(&u, "user")?))
            .map_err(db_err("user create"))?;
        self.console.users.flush().map_err(db_err("console flush"))?;
        Ok(swapped.is_ok())
    }

    fn user_update(
        &self,
        name: &str,
        f: &mut dyn FnMut(&mut User),
    ) -> Result<Option<User>, StoreError> {
        let name = name.to_lowercase();
        let u =
            update(&self.console.users, name.as_bytes(), "user", f, |u| u.name.clone_from(&name))?;
        self.console.users.flush().map_err(db_err("console flush"))?;
        Ok(u)
    }

    fn user_remove(&self, name: &str) -> Result<bool, StoreError> {
        del(&self.console.users, name.to_lowercase().as_bytes())
    }

    fn users_all(&self) -> Result<Vec<User>, StoreError> {
        all(&self.console.users, "user")
    }

    fn users_len(&self) -> usize {
        self.console.users.len()
    }

    // ---- sessions ------------------------------------------------------------------

    fn session_get(&self, digest: &str) -> Result<Option<Session>, StoreError> {
        get(&self.console.sessions, digest.as_bytes(), "session")
    }

    fn session_put(&self, digest: &str, s: &Session) -> Result<(), StoreError> {
        put(&self.console.sessions, digest.as_bytes(), s, "session")
    }

    fn session_update(
        &self,
        digest: &str,
        f: &mut dyn FnMut(&mut Session),
    ) -> Result<Option<Session>, StoreError> {
        update(&self.console.sessions, digest.as_bytes(), "session", f, |_| {})
    }

    fn session_remove(&self, digest: &str) -> Result<bool, StoreError> {
        del(&self.console.sessions, digest.as_bytes())
    }

    /// Ends every session of `user` (logout everywhere, password change, removal).
    fn sessions_remove_user(&self, user: &str) -> Result<usize, StoreError> {
        let user = user.to_lowercase();
        let mut n = 0;
        for kv in self.console.sessions.iter() {
            let (k, v) = kv.map_err(db_err("session scan"))?;
            let s: Session = dec(&v, "session")?;
            if s.user == user {
                self.console.sessions.remove(k).map_err(db_err("session remove"))?;
                n += 1;
            }
        }
        self.console.sessions.flush().map_err(db_err("console flush"))?;
        Ok(n)
    }

    /// Drops sessions that `expired` says are over; returns how many.
    fn sessions_prune(&self, expired: &dyn Fn(&Session) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.console.sessions.iter() {
            let (k, v) = kv.map_err(db_err("session scan"))?;
            // An unreadable session is no session.
            let gone = dec::<Session>(&v, "session").map(|s| expired(&s)).unwrap_or(true);
            if gone {
                self.console.sessions.remove(k).map_err(db_err("session remove"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    // ---- login throttling ------------------------------------------------------------

    fn throttle_get(&self, key: &str) -> Result<Throttle, StoreError> {
        Ok(get(&self.console.throttle, key.as_bytes(), "throttle")?.unwrap_or_default())
    }

    /// Replaces the record under `key` with `f` of it, atomically: a compare-and-swap
    /// that retries when another writer got in between, so concurrent attempts each
    /// count. `f` may run more than once. Returns the records before and after. Not
    /// flushed: losing a few counts in a crash costs nothing.
    fn throttle_update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Throttle) -> Throttle,
    ) -> Result<(Throttle, Throttle), StoreError> {
        let tree = &self.console.throttle;
        loop {
            let old = tree.get(key.as_bytes()).map_err(db_err("throttle get"))?;
            let before = match &old {
                Some(v) => dec(v, "throttle")?,
                None => Throttle::default(),
            };
            let after = f(before);
            let swapped = tree
                .compare_and_swap(key.as_bytes(), old, Some(enc(&after, "throttle")?))
                .map_err(db_err("throttle update"))?;
            if swapped.is_ok() {
                return Ok((before, after));
            }
        }
    }

    fn throttle_clear(&self, key: &str) -> Result<(), StoreError> {
        self.console.throttle.remove(key.as_bytes()).map_err(db_err("throttle clear"))?;
        Ok(())
    }

    // ---- API tokens ------------------------------------------------------------------

    /// Stores a token under its digest and returns its id.
    fn token_add(
        &self,
        digest: &str,
        user: &str,
        label: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let id = self.db.generate_id().map_err(db_err("token id"))?;
        let t = ApiToken {
            id,
            digest: digest.to_string(),
            user: user.to_lowercase(),
            label: label.to_string(),
            created_at: now,
        };
        put(&self.console.tokens, digest.as_bytes(), &t, "token")?;
        Ok(id)
    }

    fn token_get(&self, digest: &str) -> Result<Option<ApiToken>, StoreError> {
        get(&self.console.tokens, digest.as_bytes(), "token")
    }

    fn tokens_all(&self) -> Result<Vec<ApiToken>, StoreError> {
        all(&self.console.tokens, "token")
    }

    /// Removes a token by id; only `user`'s own unless `user` is `None` (an admin).
    fn token_remove(&self, id: u64, user: Option<&str>) -> Result<bool, StoreError> {
        for t in self.tokens_all()? {
            if t.id == id && user.is_none_or(|u| u.eq_ignore_ascii_case(&t.user)) {
                return del(&self.console.tokens, t.digest.as_bytes());
            }
        }
        Ok(false)
    }

    /// Removes every token of a user (user removal, password change).
    fn tokens_remove_user(&self, user: &str) -> Result<(), StoreError> {
        for t in self.tokens_all()? {
            if t.user.eq_ignore_ascii_case(user) {
                del(&self.console.tokens, t.digest.as_bytes())?;
            }
        }
        Ok(())
    }

    // ---- report schedules --------------------------------------------------------------

    fn schedule_put(&self, s: &ReportSchedule) -> Result<u64, StoreError> {
        let mut s = s.clone();
        if s.id == 0 {
            s.id = self.db.generate_id().map_err(db_err("schedule id"))? + 1;
        }
        put(&self.console.schedules, &s.id.to_be_bytes(), &s, "schedule")?;
        Ok(s.id)
    }

    fn schedule_update(
        &self,
        id: u64,
        f: &mut dyn FnMut(&mut ReportSchedule),
    ) -> Result<Option<ReportSchedule>, StoreError> {
        let s = update(&self.console.schedules, &id.to_be_bytes(), "schedule", f, |s| s.id = id)?;
        self.console.schedules.flush().map_err(db_err("console flush"))?;
        Ok(s)
    }

    fn schedules_all(&self) -> Result<Vec<ReportSchedule>, StoreError> {
        all(&self.console.schedules, "schedule")
    }

    fn schedule_remove(&self, id: u64) -> Result<bool, StoreError> {
        del(&self.console.schedules, &id.to_be_bytes())
    }
}
