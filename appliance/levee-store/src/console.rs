//! The console's own records: users, sessions, login throttling, API tokens and report
//! schedules. Secrets never reach the store in the clear: the console hands over
//! password hashes (argon2id PHC strings) and SHA-256 digests of session ids and API
//! tokens, so a copy of the database lets no one log in.

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
