//! Local rules (`<data_dir>/rules`) changed while the engine runs: a folder staged by the
//! console is tried with the other rule folders first, so a file that does not load is refused
//! and nothing changes; only then does it replace the local folder and the engine's set.

use crate::{Engine, RelayError};
use levee_filter::sa;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use tracing::{info, warn};

/// Where the local folder is moved while a new one takes its place.
const OLD: &str = "rules.old";
/// The prefix of folders staged for an upload (removed at start-up if a crash left one).
pub const STAGED_PREFIX: &str = "rules.upload-";

/// Puts the data directory's local rules back in order after a crash mid-swap: the old
/// folder returns if the new one never arrived, and staged leftovers go.
pub(crate) fn recover(data_dir: &Path) {
    let (local, old) = (sa::local_dir(data_dir), data_dir.join(OLD));
    if old.is_dir() && !local.exists() {
        match std::fs::rename(&old, &local) {
            Ok(()) => {
                warn!(dir = %local.display(), "local rules restored after an interrupted change")
            }
            Err(e) => warn!(dir = %old.display(), error = %e, "cannot restore local rules"),
        }
    }
    let _ = std::fs::remove_dir_all(&old);
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for e in entries.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().starts_with(STAGED_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Engine {
    /// The local rules folder, `<data_dir>/rules`.
    pub fn local_rules_dir(&self) -> PathBuf {
        sa::local_dir(&self.config().data_dir)
    }

    pub(crate) fn rules_lock(&self) -> MutexGuard<'_, ()> {
        self.rules_change.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the rules again, the local folder from disk (not from the per-process cache),
    /// and swaps them in with the policies that carry their scores. A set that does not load
    /// leaves the running one in place.
    pub fn reload_rules(&self) -> Result<(), RelayError> {
        let _g = self.rules_lock();
        self.reload_rules_locked()
    }

    fn reload_rules_locked(&self) -> Result<(), RelayError> {
        sa::forget(&self.local_rules_dir());
        self.apply_rules_locked()
    }

    /// Loads the rules the config says (through the cache) and swaps them in.
    fn apply_rules_locked(&self) -> Result<(), RelayError> {
        let config = self.config();
        let rules = crate::sa_rules(&config.rules, &config.data_dir)?;
        self.set_rules(&config, rules);
        Ok(())
    }

    /// Makes `staged` (a folder of `.cf` files under the data directory) the local rules:
    /// loads it with the other folders first and refuses it (`RelayError::Rules`, with
    /// `FILE:LINE` of the uploaded file) if that fails, changing nothing; else it replaces the
    /// local folder and the running set. `staged` is consumed either way.
    pub fn install_local_rules(&self, staged: &Path) -> Result<Arc<sa::Loaded>, RelayError> {
        let r = self.install_inner(staged);
        let _ = std::fs::remove_dir_all(staged);
        r
    }

    fn install_inner(&self, staged: &Path) -> Result<Arc<sa::Loaded>, RelayError> {
        let _g = self.rules_lock();
        let config = self.config();
        let local = sa::local_dir(&config.data_dir);
        let trial = trial_dirs(&config, &local, staged)?;
        let loaded = sa::load_uncached(&trial).map_err(|e| match e {
            sa::RulesError::Parse { file, line, reason } if file.starts_with(staged) => {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                RelayError::Rules(format!("{}:{line}: {reason}", name.unwrap_or_default()))
            }
            e => RelayError::Rules(e.to_string()),
        })?;
        swap_in(&config.data_dir, staged, &local)?;
        let dirs = trial.into_iter().map(|d| if d == staged { local.clone() } else { d }).collect();
        sa::forget(&local);
        // The trial set becomes the cached set of the final folders: not read a second time.
        let loaded = sa::adopt(loaded, dirs);
        self.apply_rules_locked()?;
        let r = &loaded.report;
        info!(
            dir = %local.display(), loaded = r.loaded,
            skipped = r.skipped.values().map(Vec::len).sum::<usize>(),
            "local rules installed"
        );
        Ok(loaded)
    }

    /// Empties the local rules folder and reloads the rules without it.
    pub fn remove_local_rules(&self) -> Result<(), RelayError> {
        let _g = self.rules_lock();
        let data_dir = self.config().data_dir.clone();
        let local = sa::local_dir(&data_dir);
        // An empty folder rather than none: `[rules] dirs` may name it, and must still load.
        let empty = data_dir.join(format!("{STAGED_PREFIX}empty"));
        let _ = std::fs::remove_dir_all(&empty);
        private_dir(&empty)?;
        swap_in(&data_dir, &empty, &local)?;
        info!(dir = %local.display(), "local rules removed");
        self.reload_rules_locked()
    }
}

/// The folders an upload is tried with: those in use, the staged folder in place of the local one.
fn trial_dirs(
    config: &levee_config::Config,
    local: &Path,
    staged: &Path,
) -> Result<Vec<PathBuf>, RelayError> {
    if !config.rules.spamassassin {
        return Err(RelayError::Rules(
            "SpamAssassin-language rules are off ([rules] spamassassin = false)".into(),
        ));
    }
    match &config.rules.dirs {
        None => {
            let mut dirs = sa::default_dirs(&config.data_dir);
            dirs.retain(|d| d != local);
            dirs.push(staged.to_path_buf());
            Ok(dirs)
        }
        Some(named) if named.iter().any(|d| d == local) => {
            Ok(named.iter().map(|d| if d == local { staged.to_path_buf() } else { d.clone() }).collect())
        }
        Some(_) => Err(RelayError::Rules(format!(
            "[rules] dirs in the configuration does not name {}, so uploaded rules would not be read",
            local.display()
        ))),
    }
}

/// Creates a folder only the engine's user can read.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Replaces `local` by `staged`: two renames, each atomic; a crash between them is undone by
/// [`recover`] at the next start.
fn swap_in(data_dir: &Path, staged: &Path, local: &Path) -> std::io::Result<()> {
    let old = data_dir.join(OLD);
    let _ = std::fs::remove_dir_all(&old);
    if local.exists() {
        std::fs::rename(local, &old)?;
    }
    std::fs::rename(staged, local)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_cut_short_is_undone_at_start() {
        let data = std::env::temp_dir().join(format!("levee-rules-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let (old, staged) = (data.join(OLD), data.join(format!("{STAGED_PREFIX}x")));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(old.join("local.cf"), "body X /x/\n").unwrap();
        // Crashed after the old folder moved aside and before the new one arrived.
        recover(&data);
        assert!(sa::local_dir(&data).join("local.cf").is_file());
        assert!(!old.exists() && !staged.exists());
        // Crashed after the new folder arrived: the old one just goes.
        std::fs::create_dir_all(&old).unwrap();
        recover(&data);
        assert!(sa::local_dir(&data).join("local.cf").is_file() && !old.exists());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
