//! The console's own records: users, sessions, login throttling, API tokens and report
//! schedules. Secrets never reach this module in the clear: the console hands over
//! password hashes (argon2id PHC strings) and SHA-256 digests of session ids and API
//! tokens, so a copy of the database lets no one log in.
//!
//! Trees:
//! - `users`: key = lower-case user name, value [`User`].
//! - `sessions`: key = digest of the session id, value [`Session`].
//! - `throttle`: key = a throttling key chosen by the console, value [`Throttle`].
//! - `tokens`: key = digest of the API token, value [`ApiToken`].
//! - `schedules`: key = u64 id, value [`ReportSchedule`].

use crate::{db_err, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including settings and users.
    Admin,
    /// Every quarantine and the allow/block lists; no settings.
    QuarantineManager,
    /// Reads everything, changes nothing.
    Auditor,
    /// An end user: only mail addressed to their own addresses.
    User,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::QuarantineManager, Role::Auditor, Role::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::QuarantineManager => "quarantine_manager",
            Role::Auditor => "auditor",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// How often an end user gets a quarantine digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Never,
    #[default]
    Daily,
    Weekly,
}

impl Frequency {
    pub const ALL: [Frequency; 3] = [Frequency::Never, Frequency::Daily, Frequency::Weekly];

    pub fn as_str(self) -> &'static str {
        match self {
            Frequency::Never => "never",
            Frequency::Daily => "daily",
            Frequency::Weekly => "weekly",
        }
    }

    pub fn parse(s: &str) -> Option<Frequency> {
        Frequency::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Seconds between two sends; `None` for never.
    pub fn period_secs(self) -> Option<u64> {
        match self {
            Frequency::Never => None,
            Frequency::Daily => Some(86_400),
            Frequency::Weekly => Some(7 * 86_400),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Lower-case; unique.
    pub name: String,
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The mail addresses whose quarantined mail this user may see (end users).
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub digest: Frequency,
    #[serde(default)]
    pub digest_last_sent: u64,
    pub created_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    /// The synchronizer token every POST of this session must carry.
    pub csrf: String,
    pub created_at: u64,
    pub last_seen: u64,
}

/// Failed logins counted for one key within a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub failures: u32,
    pub window_start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: u64,
    /// Hex SHA-256 of the token (also the key).
    pub digest: String,
    pub user: String,
    pub label: String,
    pub created_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSchedule {
    pub id: u64,
    pub frequency: Frequency,
    pub recipients: Vec<String>,
    pub last_sent: u64,
}

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

fn del(t: &sled::Tree, k: &[u8]) -> Result<bool, StoreError> {
    let old = t.remove(k).map_err(db_err("console remove"))?;
    t.flush().map_err(db_err("console flush"))?;
    Ok(old.is_some())
}

impl Store {
    // ---- users ---------------------------------------------------------------------

    pub fn user_get(&self, name: &str) -> Result<Option<User>, StoreError> {
        get(&self.console.users, name.to_lowercase().as_bytes(), "user")
    }

    /// Creates or replaces a user (the name is stored lower-case).
    pub fn user_put(&self, u: &User) -> Result<(), StoreError> {
        let mut u = u.clone();
        u.name = u.name.to_lowercase();
        put(&self.console.users, u.name.as_bytes(), &u, "user")
    }

    /// Creates a user only if the name is free; `false` if it is taken.
    pub fn user_create(&self, u: &User) -> Result<bool, StoreError> {
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

    pub fn user_remove(&self, name: &str) -> Result<bool, StoreError> {
        del(&self.console.users, name.to_lowercase().as_bytes())
    }

    pub fn users_all(&self) -> Result<Vec<User>, StoreError> {
        all(&self.console.users, "user")
    }

    pub fn users_len(&self) -> usize {
        self.console.users.len()
    }

    // ---- sessions ------------------------------------------------------------------

    pub fn session_get(&self, digest: &str) -> Result<Option<Session>, StoreError> {
        get(&self.console.sessions, digest.as_bytes(), "session")
    }

    pub fn session_put(&self, digest: &str, s: &Session) -> Result<(), StoreError> {
        put(&self.console.sessions, digest.as_bytes(), s, "session")
    }

    pub fn session_remove(&self, digest: &str) -> Result<bool, StoreError> {
        del(&self.console.sessions, digest.as_bytes())
    }

    /// Ends every session of `user` (logout everywhere, password change, removal).
    pub fn sessions_remove_user(&self, user: &str) -> Result<usize, StoreError> {
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
    pub fn sessions_prune(&self, expired: impl Fn(&Session) -> bool) -> Result<usize, StoreError> {
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

    pub fn throttle_get(&self, key: &str) -> Result<Throttle, StoreError> {
        Ok(get(&self.console.throttle, key.as_bytes(), "throttle")?.unwrap_or_default())
    }

    /// Replaces the record under `key` with `f` of it, atomically: a compare-and-swap
    /// that retries when another writer got in between, so concurrent attempts each
    /// count. `f` may run more than once. Returns the records before and after. Not
    /// flushed: losing a few counts in a crash costs nothing.
    pub fn throttle_update(
        &self,
        key: &str,
        mut f: impl FnMut(Throttle) -> Throttle,
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

    pub fn throttle_clear(&self, key: &str) -> Result<(), StoreError> {
        self.console.throttle.remove(key.as_bytes()).map_err(db_err("throttle clear"))?;
        Ok(())
    }

    // ---- API tokens ------------------------------------------------------------------

    /// Stores a token under its digest and returns its id.
    pub fn token_add(
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

    pub fn token_get(&self, digest: &str) -> Result<Option<ApiToken>, StoreError> {
        get(&self.console.tokens, digest.as_bytes(), "token")
    }

    pub fn tokens_all(&self) -> Result<Vec<ApiToken>, StoreError> {
        all(&self.console.tokens, "token")
    }

    /// Removes a token by id; only `user`'s own unless `user` is `None` (an admin).
    pub fn token_remove(&self, id: u64, user: Option<&str>) -> Result<bool, StoreError> {
        for t in self.tokens_all()? {
            if t.id == id && user.is_none_or(|u| u.eq_ignore_ascii_case(&t.user)) {
                return del(&self.console.tokens, t.digest.as_bytes());
            }
        }
        Ok(false)
    }

    /// Removes every token of a user (user removal, password change).
    pub fn tokens_remove_user(&self, user: &str) -> Result<(), StoreError> {
        for t in self.tokens_all()? {
            if t.user.eq_ignore_ascii_case(user) {
                del(&self.console.tokens, t.digest.as_bytes())?;
            }
        }
        Ok(())
    }

    // ---- report schedules --------------------------------------------------------------

    pub fn schedule_put(&self, s: &ReportSchedule) -> Result<u64, StoreError> {
        let mut s = s.clone();
        if s.id == 0 {
            s.id = self.db.generate_id().map_err(db_err("schedule id"))? + 1;
        }
        put(&self.console.schedules, &s.id.to_be_bytes(), &s, "schedule")?;
        Ok(s.id)
    }

    pub fn schedules_all(&self) -> Result<Vec<ReportSchedule>, StoreError> {
        all(&self.console.schedules, "schedule")
    }

    pub fn schedule_remove(&self, id: u64) -> Result<bool, StoreError> {
        del(&self.console.schedules, &id.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("levee-store-console-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    fn user(name: &str, role: Role) -> User {
        User {
            name: name.into(),
            role,
            password_hash: "$argon2id$x".into(),
            addresses: vec![format!("{}@example.test", name.to_lowercase())],
            digest: Frequency::Daily,
            digest_last_sent: 0,
            created_at: 1,
        }
    }

    #[test]
    fn users_are_case_insensitive_unique_and_persist() {
        let dir = tmp("users");
        {
            let s = Store::open(&dir).unwrap();
            assert_eq!(s.users_len(), 0);
            assert!(s.user_create(&user("Admin", Role::Admin)).unwrap());
            assert!(!s.user_create(&user("admin", Role::User)).unwrap());
            assert!(s.user_create(&user("bob", Role::User)).unwrap());
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.user_get("ADMIN").unwrap().unwrap().role, Role::Admin);
        assert_eq!(s.users_all().unwrap().len(), 2);
        assert!(s.user_remove("Bob").unwrap());
        assert!(s.user_get("bob").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sessions_end_per_user_and_by_expiry() {
        let dir = tmp("sessions");
        let s = Store::open(&dir).unwrap();
        let sess = |u: &str, t: u64| Session {
            user: u.into(),
            csrf: "c".into(),
            created_at: t,
            last_seen: t,
        };
        s.session_put("d1", &sess("alice", 10)).unwrap();
        s.session_put("d2", &sess("alice", 20)).unwrap();
        s.session_put("d3", &sess("bob", 5)).unwrap();
        assert_eq!(s.sessions_remove_user("Alice").unwrap(), 2);
        assert!(s.session_get("d1").unwrap().is_none());
        assert_eq!(s.sessions_prune(|x| x.last_seen < 6).unwrap(), 1);
        assert!(s.session_get("d3").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_and_schedules_and_throttle() {
        let dir = tmp("tokens");
        let s = Store::open(&dir).unwrap();
        let id = s.token_add("abc", "Bob", "script", 1).unwrap();
        assert_eq!(s.token_get("abc").unwrap().unwrap().user, "bob");
        assert!(!s.token_remove(id, Some("mallory")).unwrap());
        assert!(s.token_remove(id, Some("bob")).unwrap());
        assert!(s.token_get("abc").unwrap().is_none());

        let sid = s
            .schedule_put(&ReportSchedule {
                id: 0,
                frequency: Frequency::Weekly,
                recipients: vec!["a@b.test".into()],
                last_sent: 0,
            })
            .unwrap();
        assert_ne!(sid, 0);
        assert_eq!(s.schedules_all().unwrap()[0].id, sid);
        assert!(s.schedule_remove(sid).unwrap());

        assert_eq!(s.throttle_get("k").unwrap(), Throttle::default());
        let (before, after) = s
            .throttle_update("k", |t| Throttle { failures: t.failures + 3, window_start: 9 })
            .unwrap();
        assert_eq!((before.failures, after.failures), (0, 3));
        assert_eq!(s.throttle_get("k").unwrap(), after);
        s.throttle_clear("k").unwrap();
        assert_eq!(s.throttle_get("k").unwrap().failures, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn throttle_updates_from_parallel_threads_all_count() {
        let dir = tmp("throttle-race");
        let s = Store::open(&dir).unwrap();
        const THREADS: u32 = 8;
        const EACH: u32 = 50;
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for _ in 0..EACH {
                        s.throttle_update("k", |t| Throttle { failures: t.failures + 1, ..t })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(s.throttle_get("k").unwrap().failures, THREADS * EACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
