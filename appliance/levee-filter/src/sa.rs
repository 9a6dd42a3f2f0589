//! SpamAssassin's rules ([`levee_sarules`]) as content findings.
//!
//! Each rule that fires is a finding `SA_<NAME>` whose detail is the rule's description. Its
//! weight is the rule's score times [`SCORE_SCALE`] ([`Loaded::weights`], carried by the policy
//! as [`crate::score::Policy::rule_scores`]) unless `[policy.weights]` names the symbol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use levee_content::Content;
pub use levee_sarules::{LoadReport, RulesError};
use levee_sarules::{RuleSet, SaMessage};

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
/// Local rules: this folder of the data partition (`<data_dir>/rules`), read last. On the data
/// partition so they survive an image update; the console's upload writes it.
pub const LOCAL_SUBDIR: &str = "rules";

/// The local rules folder of a data directory.
pub fn local_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCAL_SUBDIR)
}

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
/// folder [`local_dir`] when it holds `.cf` files. Empty when there are no rules at all.
pub fn default_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(updates) = newest_update(Path::new(UPDATES_DIR)) {
        dirs.push(updates);
    } else if Path::new(STOCK_DIR).is_dir() {
        dirs.push(PathBuf::from(STOCK_DIR));
    }
    let local = local_dir(data_dir);
    if has_cf(&local) {
        dirs.push(local);
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

/// The sets [`load`] read, keyed by their list of folders.
static CACHE: Mutex<Vec<Arc<Loaded>>> = Mutex::new(Vec::new());

/// Loads the rules of `dirs`, once per process for the same list: the set is immutable, costs
/// about a second and 150 MB, and a config reload or a second engine (tests) shares it.
/// A folder whose files changed is read again only after [`forget`].
pub fn load(dirs: &[PathBuf]) -> Result<Arc<Loaded>, RulesError> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(hit) = cache.iter().find(|l| l.dirs == dirs) {
        return Ok(hit.clone());
    }
    let loaded = Arc::new(load_uncached(dirs)?);
    cache.push(loaded.clone());
    Ok(loaded)
}

/// Loads the rules of `dirs` without the cache: a trial of folders not (yet) in use.
pub fn load_uncached(dirs: &[PathBuf]) -> Result<Loaded, RulesError> {
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let (set, report) = levee_sarules::load_dirs(&refs)?;
    let weights = set
        .symbols()
        .map(|(name, score, _)| (format!("{PREFIX}{name}"), score * SCORE_SCALE))
        .collect();
    Ok(Loaded { dirs: dirs.to_vec(), set, report, weights: Arc::new(weights) })
}

/// Caches a trial set as the set of `dirs`, the folders its files were moved to, so the
/// next [`load`] of `dirs` does not read them a second time (a set keeps no paths).
pub fn adopt(mut loaded: Loaded, dirs: Vec<PathBuf>) -> Arc<Loaded> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|l| l.dirs != dirs);
    loaded.dirs = dirs;
    let loaded = Arc::new(loaded);
    cache.push(loaded.clone());
    loaded
}

/// Drops every cached set that read `dir`: its files changed (a local rules upload), so the
/// next [`load`] must read them again, and the old set's memory goes once no engine holds it.
pub fn forget(dir: &Path) {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|l| !l.dirs.iter().any(|d| d == dir));
}

/// The skip reasons of a load, most frequent first: "network 180, eval X not implemented 40"
/// (at most `top` of them, then how many reasons more). Empty when nothing was skipped.
pub fn skip_summary(report: &LoadReport, top: usize) -> String {
    let mut by_count: Vec<(&String, usize)> =
        report.skipped.iter().map(|(reason, names)| (reason, names.len())).collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut shown: Vec<String> =
        by_count.iter().take(top).map(|(reason, n)| format!("{reason} {n}")).collect();
    if by_count.len() > top {
        let rest: usize = by_count[top..].iter().map(|(_, n)| n).sum();
        shown.push(format!("{} other reasons {rest}", by_count.len() - top));
    }
    shown.join(", ")
}

/// SpamAssassin rules that test exactly what one of Levee's own rules tests, under another name.
const SAME_AS_OWN: &[&str] = &["MISSING_MID", "SUBJ_ALL_CAPS"];

/// The findings of one message. A rule named like a symbol Levee emits itself (`GTUBE`,
/// `MISSING_DATE`...) or testing the same thing ([`SAME_AS_OWN`]) is left out: the same
/// evidence would count twice, and the admin's weight for Levee's symbol would no longer
/// decide it. The message is read up to its first bound ([`crate::limits`]).
pub fn findings(rules: &RuleSet, message: &[u8]) -> Vec<Finding> {
    findings_content(rules, &Content::parse(message), "")
}

/// [`findings`] on a message already parsed (and bounded), with `received` (header fields
/// the gateway adds, CRLF-terminated; may be empty) read on top of it.
pub(crate) fn findings_content(
    rules: &RuleSet,
    content: &Content<'_>,
    received: &str,
) -> Vec<Finding> {
    let parsed = SaMessage::from_parsed(content.message(), content.raw(), received);
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

    #[test]
    fn local_rules_count_only_with_cf_files() {
        let data = std::env::temp_dir().join(format!("levee-sa-local-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(local_dir(&data)).unwrap();
        assert!(!default_dirs(&data).contains(&local_dir(&data)));
        std::fs::write(local_dir(&data).join("local.cf"), "header X Subject =~ /x/\n").unwrap();
        assert_eq!(default_dirs(&data).last(), Some(&local_dir(&data)));
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn skip_summary_puts_the_big_reasons_first() {
        let mut report = LoadReport::default();
        let names = |n: usize| (0..n).map(|i| format!("R{i}")).collect::<Vec<_>>();
        report.skipped.insert("network".into(), names(3));
        report.skipped.insert("eval x not implemented".into(), names(5));
        report.skipped.insert("meta dependency loop".into(), names(1));
        assert_eq!(
            skip_summary(&report, 2),
            "eval x not implemented 5, network 3, 1 other reasons 1"
        );
        assert_eq!(skip_summary(&LoadReport::default(), 2), "");
    }
}
