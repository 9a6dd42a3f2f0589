//! SpamAssassin's rules ([`levee_sarules`]) as content findings.
//!
//! Each rule that fires is a finding `SA_<NAME>` whose detail is the rule's description. Its
//! weight is the rule's score times [`SCORE_SCALE`] ([`Loaded::weights`], carried by the policy
//! as [`crate::score::Policy::rule_scores`]) unless `[policy.weights]` names the symbol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use levee_sarules::{LoadReport, RuleSet, RulesError, SaMessage};

use crate::score::DEFAULT_WEIGHTS;
use crate::Finding;

/// The prefix of every SpamAssassin finding.
pub const PREFIX: &str = "SA_";

/// SpamAssassin's scores are tuned for its `required_score` of 5; Levee quarantines at 6, so
/// they are scaled by 6/5 to keep the balance between rules and threshold they were fitted for.
/// (Measured: with the Bayes weights of the default policy, the same catch and false positives
/// on every split of `examples/splits` as SpamAssassin's own scores with a threshold of 5.)
pub const SCORE_SCALE: f64 = 1.2;

/// The stock rules' home (Debian's `spamassassin` package).
pub const STOCK_DIR: &str = "/usr/share/spamassassin";
/// Where `sa-update` writes newer sets, one folder per SpamAssassin version.
pub const UPDATES_DIR: &str = "/var/lib/spamassassin";
/// Local rules, read last.
pub const LOCAL_DIR: &str = "/etc/levee/rules";

/// A loaded rule set with what loading said and the weights of its symbols.
#[derive(Debug)]
pub struct Loaded {
    pub dirs: Vec<PathBuf>,
    pub set: RuleSet,
    pub report: LoadReport,
    /// `SA_<NAME>` -> scaled score, for every scored rule.
    pub weights: Arc<HashMap<String, f64>>,
}

/// The directories read when the config names none: `sa-update`'s newest set if there is one
/// (as SpamAssassin itself does, instead of the stock set), else the stock set; then the local
/// folder when it exists. Empty when neither set is installed.
pub fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(updates) = newest_update(Path::new(UPDATES_DIR)) {
        dirs.push(updates);
    } else if Path::new(STOCK_DIR).is_dir() {
        dirs.push(PathBuf::from(STOCK_DIR));
    }
    if !dirs.is_empty() && Path::new(LOCAL_DIR).is_dir() {
        dirs.push(PathBuf::from(LOCAL_DIR));
    }
    dirs
}

/// `/var/lib/spamassassin/<version>/<channel>` of the highest version that holds `.cf` files.
fn newest_update(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(f64, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<f64>().ok()?, e.path())))
        .collect();
    versions.sort_by(|a, b| b.0.total_cmp(&a.0));
    versions.into_iter().find_map(|(_, dir)| {
        let channels = std::fs::read_dir(&dir).ok()?;
        channels.filter_map(Result::ok).map(|e| e.path()).find(|p| has_cf(p))
    })
}

fn has_cf(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "cf"))
    })
}

/// Loads the rules of `dirs`, once per process for the same list: the set is immutable, costs
/// about a second and 150 MB, and a config reload or a second engine (tests) shares it.
pub fn load(dirs: &[PathBuf]) -> Result<Arc<Loaded>, RulesError> {
    static CACHE: Mutex<Vec<Arc<Loaded>>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hit) = cache.iter().find(|l| l.dirs == dirs) {
        return Ok(hit.clone());
    }
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let (set, report) = levee_sarules::load_dirs(&refs)?;
    let weights = set
        .symbols()
        .map(|(name, score, _)| (format!("{PREFIX}{name}"), score * SCORE_SCALE))
        .collect();
    let loaded = Arc::new(Loaded { dirs: dirs.to_vec(), set, report, weights: Arc::new(weights) });
    cache.push(loaded.clone());
    Ok(loaded)
}

/// SpamAssassin rules that test exactly what one of Levee's own rules tests, under another name.
const SAME_AS_OWN: &[&str] = &["MISSING_MID", "SUBJ_ALL_CAPS"];

/// The findings of one message. A rule named like a symbol Levee emits itself (`GTUBE`,
/// `MISSING_DATE`...) or testing the same thing ([`SAME_AS_OWN`]) is left out: the same
/// evidence would count twice, and the admin's weight for Levee's symbol would no longer
/// decide it.
pub fn findings(rules: &RuleSet, message: &[u8]) -> Vec<Finding> {
    let parsed = SaMessage::parse(message);
    rules
        .check(&parsed)
        .into_iter()
        .filter(|h| {
            !DEFAULT_WEIGHTS.iter().any(|(own, _)| *own == h.name)
                && !SAME_AS_OWN.contains(&h.name.as_str())
        })
        .map(|h| Finding::new(format!("{PREFIX}{}", h.name), h.describe))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_update_with_rules_wins() {
        let root = std::env::temp_dir().join(format!("levee-sa-updates-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (v, cf) in [("3.004006", true), ("4.000001", true), ("4.000002", false)] {
            let channel = root.join(v).join("updates_spamassassin_org");
            std::fs::create_dir_all(&channel).unwrap();
            if cf {
                std::fs::write(channel.join("20_head.cf"), "header X Subject =~ /x/\n").unwrap();
            }
        }
        assert_eq!(
            newest_update(&root),
            Some(root.join("4.000001").join("updates_spamassassin_org"))
        );
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(newest_update(&root), None);
    }
}
