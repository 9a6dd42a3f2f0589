//! Console edits to the config file, made on the TOML document so comments and layout
//! survive. The result is validated by the engine (`Engine::edit_config`) like any file.

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct DomainEdit {
    pub name: String,
    /// Empty: no downstream yet (set-up pending).
    pub downstream: String,
    pub tls: String,
    pub enabled: bool,
}

pub fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| e.to_string())
}

// Every edit below reaches tables through `TableLike`, because the file may write any
// of them inline (`policy = { … }`, `domain = [{ … }]`) or with a header; an edit
// keeps whichever form it finds, and a table it has to make takes its parent's form.

/// Sets `key` in a standard or inline table, keeping the comment and spacing around
/// the value it replaces.
fn set_value(table: &mut dyn TableLike, key: &str, new: impl Into<Value>) {
    let mut new: Value = new.into();
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            *new.decor_mut() = old.decor().clone();
            *old = new;
        }
        _ => insert_last(table, key, new),
    }
}

/// Adds `key` after the table's last entry. In an inline table that entry carries the
/// space before `}`; it moves to the new last entry so the text reads `a = 1, b = 2 }`.
fn insert_last(table: &mut dyn TableLike, key: &str, mut new: Value) {
    if let Some((_, Item::Value(last))) = table.iter_mut().last() {
        let space = last.decor().suffix().and_then(|s| s.as_str()).map(str::to_owned);
        if let Some(space) = space.filter(|s| !s.is_empty() && s.trim().is_empty()) {
            last.decor_mut().set_suffix("");
            new.decor_mut().set_suffix(space);
        }
    }
    table.insert(key, Item::Value(new));
}

/// The table under `key` in `parent`, made empty when missing: inline when `inline`
/// (an inline parent can hold nothing else), else a standard table with `implicit`.
fn child_table<'a>(
    parent: &'a mut dyn TableLike,
    key: &str,
    inline: bool,
    implicit: bool,
) -> (&'a mut dyn TableLike, bool) {
    if !parent.get(key).is_some_and(Item::is_table_like) {
        if inline {
            insert_last(parent, key, Value::InlineTable(InlineTable::new()));
        } else {
            let mut t = Table::new();
            t.set_implicit(implicit);
            parent.insert(key, Item::Table(t));
        }
    }
    let item = parent.get_mut(key).expect("present or just made");
    let inline = item.is_inline_table();
    (item.as_table_like_mut().expect("checked or just made"), inline)
}

/// A top-level table (`[policy]`, `[checks]`) in whichever form the file has it.
fn top_table<'a>(doc: &'a mut DocumentMut, key: &str) -> (&'a mut dyn TableLike, bool) {
    child_table(doc.as_table_mut(), key, false, false)
}

fn has_name(t: &dyn TableLike, name: &str) -> bool {
    t.get("name").and_then(Item::as_str).is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// The `domain` entries, as `[[domain]]` tables or as an inline `domain = [{ … }]`.
enum Domains<'a> {
    Tables(&'a mut ArrayOfTables),
    Inline(&'a mut toml_edit::Array),
}

impl<'a> Domains<'a> {
    /// The entry with this name, with whether it is inline.
    fn find(self, name: &str) -> Option<(&'a mut dyn TableLike, bool)> {
        match self {
            Domains::Tables(list) => list
                .iter_mut()
                .find(|t| has_name(&**t, name))
                .map(|t| (t as &mut dyn TableLike, false)),
            Domains::Inline(list) => list
                .iter_mut()
                .filter_map(Value::as_inline_table_mut)
                .find(|t| has_name(&**t, name))
                .map(|t| (t as &mut dyn TableLike, true)),
        }
    }
}

/// The domain list; `None` when the file has none or `domain` is not a list of tables.
fn domains(doc: &mut DocumentMut) -> Option<Domains<'_>> {
    match doc.get_mut("domain")? {
        Item::ArrayOfTables(list) => Some(Domains::Tables(list)),
        Item::Value(Value::Array(list)) => Some(Domains::Inline(list)),
        _ => None,
    }
}

fn find_domain<'a>(doc: &'a mut DocumentMut, name: &str) -> Option<(&'a mut dyn TableLike, bool)> {
    domains(doc)?.find(name)
}

pub fn set_hostname(doc: &mut DocumentMut, hostname: &str) {
    set_value(doc.as_table_mut(), "hostname", hostname);
}

/// Adds a domain, or changes the one with this name.
pub fn upsert_domain(doc: &mut DocumentMut, d: &DomainEdit) {
    if domains(doc).is_none() {
        doc.insert("domain", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    if find_domain(doc, &d.name).is_none() {
        match domains(doc).expect("present or just made") {
            Domains::Tables(list) => {
                let mut t = Table::new();
                t.insert("name", toml_edit::value(d.name.to_lowercase()));
                list.push(t);
            }
            Domains::Inline(list) => {
                let mut t = InlineTable::new();
                t.insert("name", d.name.to_lowercase().into());
                list.push(t);
            }
        }
    }
    let (table, _) = find_domain(doc, &d.name).expect("present or just added");
    if d.downstream.trim().is_empty() {
        table.remove("downstream");
    } else {
        set_value(table, "downstream", d.downstream.trim());
    }
    set_value(table, "tls", d.tls.as_str());
    set_value(table, "enabled", d.enabled);
}

pub fn remove_domain(doc: &mut DocumentMut, name: &str) -> bool {
    match domains(doc) {
        Some(Domains::Tables(list)) => {
            let before = list.len();
            list.retain(|t| !has_name(t, name));
            list.len() != before
        }
        Some(Domains::Inline(list)) => {
            let before = list.len();
            list.retain(|v| !v.as_inline_table().is_some_and(|t| has_name(t, name)));
            list.len() != before
        }
        None => false,
    }
}

pub fn set_thresholds(doc: &mut DocumentMut, tag: f64, quarantine: f64, reject: f64, days: i64) {
    let (p, _) = top_table(doc, "policy");
    set_value(p, "tag_at", tag);
    set_value(p, "quarantine_at", quarantine);
    set_value(p, "reject_at", reject);
    set_value(p, "quarantine_days", days);
}

/// Points `checks.geoip_db` at a country database file.
pub fn set_geoip_db(doc: &mut DocumentMut, path: &str) {
    let (checks, _) = top_table(doc, "checks");
    set_value(checks, "geoip_db", path);
}

/// Sets (or with `None` removes) one weight in a `weights` table under `policy`.
fn set_weight_in(policy: &mut dyn TableLike, inline: bool, symbol: &str, weight: Option<f64>) {
    match weight {
        Some(v) => {
            let (weights, _) = child_table(policy, "weights", inline, false);
            set_value(weights, symbol, v);
        }
        None => {
            if let Some(weights) = policy.get_mut("weights").and_then(Item::as_table_like_mut) {
                weights.remove(symbol);
            }
        }
    }
}

/// Sets (or, with `None`, removes) one symbol's weight override.
pub fn set_weight(doc: &mut DocumentMut, symbol: &str, weight: Option<f64>) {
    let (p, inline) = top_table(doc, "policy");
    set_weight_in(p, inline, symbol, weight);
}

/// The `policy` table of one domain, made on demand in the domain's own form; `None`
/// when no domain has that name.
fn domain_policy_table<'a>(
    doc: &'a mut DocumentMut,
    name: &str,
) -> Option<(&'a mut dyn TableLike, bool)> {
    let (domain, inline) = find_domain(doc, name)?;
    // Implicit: a new `[domain.policy]` gets its header only once it holds a value.
    Some(child_table(domain, "policy", inline, true))
}

/// Drops a domain's `policy` (and its weights) when nothing is left in it.
fn prune_domain_policy(doc: &mut DocumentMut, name: &str) {
    let Some((domain, _)) = find_domain(doc, name) else {
        return;
    };
    let Some(policy) = domain.get_mut("policy") else {
        return;
    };
    if let Some(p) = policy.as_table_like_mut() {
        if p.get("weights").and_then(Item::as_table_like).is_some_and(|w| w.is_empty()) {
            p.remove("weights");
        }
    }
    let empty = policy.as_table_like().is_some_and(|p| p.is_empty());
    if let Some(t) = policy.as_table_mut() {
        // A table holding only sub-tables is written without its own header.
        let keys = t.iter().filter(|(_, v)| !v.is_table()).count();
        t.set_implicit(keys == 0);
    }
    if empty {
        domain.remove("policy");
    }
}

/// Sets a domain's own thresholds (`[tag_at, quarantine_at, reject_at]`, `None` = follow
/// `[policy]`), or with `None` drops every override of the domain, weights included.
pub fn set_domain_thresholds(
    doc: &mut DocumentMut,
    name: &str,
    thresholds: Option<[Option<f64>; 3]>,
) {
    if let Some((policy, _)) = domain_policy_table(doc, name) {
        match thresholds {
            None => policy.clear(),
            Some(values) => {
                for (key, v) in ["tag_at", "quarantine_at", "reject_at"].into_iter().zip(values) {
                    match v {
                        Some(v) => set_value(policy, key, v),
                        None => {
                            policy.remove(key);
                        }
                    }
                }
            }
        }
    }
    prune_domain_policy(doc, name);
}

/// Sets (or with `None` removes) one weight in a domain's `policy.weights`.
pub fn set_domain_weight(doc: &mut DocumentMut, name: &str, symbol: &str, weight: Option<f64>) {
    if let Some((policy, inline)) = domain_policy_table(doc, name) {
        set_weight_in(policy, inline, symbol, weight);
    }
    prune_domain_policy(doc, name);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# the appliance\nhostname = \"mx.example.test\" # ours\ndata_dir = \"/tmp/x\"\n\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n\n# first customer\n[[domain]]\nname = \"example.test\"\ndownstream = \"127.0.0.1:2626\"\n";

    #[test]
    fn edits_keep_comments_and_validate() {
        let mut doc = parse(BASE).unwrap();
        set_hostname(&mut doc, "gw.example.test");
        upsert_domain(
            &mut doc,
            &DomainEdit {
                name: "Other.TEST".into(),
                downstream: "10.0.0.5:25".into(),
                tls: "required".into(),
                enabled: true,
            },
        );
        upsert_domain(
            &mut doc,
            &DomainEdit {
                name: "example.test".into(),
                downstream: "".into(),
                tls: "none".into(),
                enabled: false,
            },
        );
        set_thresholds(&mut doc, 4.0, 7.0, 12.0, 14);
        set_weight(&mut doc, "BAYES_SPAM", Some(3.5));
        let text = doc.to_string();
        assert!(
            text.contains("# the appliance")
                && text.contains("# first customer")
                && text.contains("# ours"),
            "{text}"
        );
        let c = levee_config::Config::parse(&text, "edited").unwrap();
        assert_eq!(c.hostname.0, "gw.example.test");
        assert_eq!(c.domains.len(), 2);
        assert!(!c.domains[0].ready() && c.domains[1].ready());
        assert_eq!(c.domains[1].domain().as_str(), "other.test");
        assert_eq!(c.policy.quarantine_at, 7.0);
        assert_eq!(c.policy.weights.get("BAYES_SPAM"), Some(&3.5));

        let mut doc = parse(&text).unwrap();
        assert!(remove_domain(&mut doc, "OTHER.test"));
        assert!(!remove_domain(&mut doc, "nope.test"));
        set_weight(&mut doc, "BAYES_SPAM", None);
        let c = levee_config::Config::parse(&doc.to_string(), "edited").unwrap();
        assert_eq!(c.domains.len(), 1);
        assert!(c.policy.weights.is_empty());
    }

    #[test]
    fn domain_policy_is_set_merged_and_cleared() {
        let mut doc = parse(BASE).unwrap();
        set_domain_thresholds(&mut doc, "EXAMPLE.test", Some([None, Some(4.0), Some(10.0)]));
        set_domain_weight(&mut doc, "example.test", "SPF_FAIL", Some(6.0));
        // An unknown domain is left alone (the handler refuses it first).
        set_domain_weight(&mut doc, "nope.test", "SPF_FAIL", Some(1.0));
        let c = levee_config::Config::parse(&doc.to_string(), "edited").unwrap();
        let p = c.policy_for(c.domains[0].domain());
        assert_eq!((p.tag_at, p.quarantine_at, p.reject_at), (c.policy.tag_at, 4.0, 10.0));
        assert_eq!(p.weights.get("SPF_FAIL"), Some(&6.0));

        set_domain_weight(&mut doc, "example.test", "SPF_FAIL", None);
        set_domain_thresholds(&mut doc, "example.test", Some([None, None, None]));
        assert!(!doc.to_string().contains("policy"), "{doc}");
        set_domain_thresholds(&mut doc, "example.test", Some([Some(1.0), None, None]));
        set_domain_weight(&mut doc, "example.test", "X", Some(2.0));
        set_domain_thresholds(&mut doc, "example.test", None);
        assert!(!doc.to_string().contains("policy"), "{doc}");
    }

    const HEAD: &str = "hostname = \"mx.example.test\"\ndata_dir = \"/tmp/x\"\nsmtp = { listen = [\"127.0.0.1:2525\"] }\n";

    fn edit(name: &str, downstream: &str) -> DomainEdit {
        DomainEdit {
            name: name.into(),
            downstream: downstream.into(),
            tls: "required".into(),
            enabled: true,
        }
    }

    #[test]
    fn inline_domain_list_is_edited_in_place() {
        let text = format!(
            "{HEAD}domain = [{{ name = \"a.test\", downstream = \"10.0.0.1:25\" }}, {{ name = \"b.test\", downstream = \"10.0.0.2:25\", policy = {{ reject_at = 20.0 }} }}]\n"
        );
        let mut doc = parse(&text).unwrap();
        upsert_domain(&mut doc, &edit("A.test", "10.0.0.9:25"));
        upsert_domain(&mut doc, &edit("c.test", "10.0.0.3:25"));
        set_domain_thresholds(&mut doc, "a.test", Some([None, Some(4.0), None]));
        set_domain_weight(&mut doc, "b.test", "SPF_FAIL", Some(6.0));
        let out = doc.to_string();
        assert!(!out.contains("[[domain]]") && !out.contains("[domain"), "{out}");
        let c = levee_config::Config::parse(&out, "edited").unwrap();
        let names: Vec<_> = c.domains.iter().map(|d| d.domain().as_str().to_string()).collect();
        assert_eq!(names, ["a.test", "b.test", "c.test"]);
        let a = c.policy_for(c.domains[0].domain());
        assert_eq!(a.quarantine_at, 4.0);
        let b = c.policy_for(c.domains[1].domain());
        assert_eq!((b.reject_at, b.weights.get("SPF_FAIL")), (20.0, Some(&6.0)));
        assert!(out.contains("10.0.0.9:25") && out.contains("10.0.0.2:25"), "{out}");

        // Clearing a domain's policy and removing a domain leave the others whole.
        set_domain_thresholds(&mut doc, "a.test", None);
        assert!(remove_domain(&mut doc, "c.test"));
        let c = levee_config::Config::parse(&doc.to_string(), "edited").unwrap();
        assert_eq!(c.domains.len(), 2);
        assert!(c.domains[0].policy.is_none());
        assert_eq!(c.policy_for(c.domains[1].domain()).reject_at, 20.0);
    }

    #[test]
    fn inline_policy_and_checks_keep_their_values() {
        let text = format!(
            "{HEAD}policy = {{ tag_at = 3.0, quarantine_at = 6.0, reject_at = 15.0, weights = {{ BAYES_SPAM = 2.5 }} }} # ours\nchecks = {{ rdns = false, dns_timeout_ms = 700 }}\n\n[[domain]]\nname = \"a.test\"\ndownstream = \"10.0.0.1:25\"\npolicy = {{ tag_at = 1.0 }}\n"
        );
        let mut doc = parse(&text).unwrap();
        set_thresholds(&mut doc, 4.0, 7.0, 12.0, 14);
        set_weight(&mut doc, "SPF_FAIL", Some(5.0));
        set_geoip_db(&mut doc, "/var/lib/levee/country.mmdb");
        set_domain_weight(&mut doc, "a.test", "X_SYM", Some(1.5));
        let out = doc.to_string();
        assert!(
            out.contains("policy = {") && out.contains("checks = {") && out.contains("# ours"),
            "{out}"
        );
        assert!(
            !out.contains("[policy") && !out.contains("[checks") && !out.contains("[domain.policy"),
            "{out}"
        );
        let c = levee_config::Config::parse(&out, "edited").unwrap();
        let p = &c.policy;
        assert_eq!(
            (p.tag_at, p.quarantine_at, p.reject_at, p.quarantine_days),
            (4.0, 7.0, 12.0, 14)
        );
        assert_eq!(p.weights.get("BAYES_SPAM"), Some(&2.5));
        assert_eq!(p.weights.get("SPF_FAIL"), Some(&5.0));
        assert!(!c.checks.rdns);
        assert_eq!(c.checks.dns_timeout_ms, 700);
        assert_eq!(
            c.checks.geoip_db.as_deref(),
            Some(std::path::Path::new("/var/lib/levee/country.mmdb"))
        );
        let d = c.policy_for(c.domains[0].domain());
        assert_eq!((d.tag_at, d.weights.get("X_SYM")), (1.0, Some(&1.5)));

        set_weight(&mut doc, "BAYES_SPAM", None);
        let c = levee_config::Config::parse(&doc.to_string(), "edited").unwrap();
        assert_eq!(c.policy.weights.len(), 1);
        assert_eq!(c.checks.dns_timeout_ms, 700);
    }

    #[test]
    fn inline_weights_under_a_policy_header_are_kept() {
        let text = format!("{HEAD}\n[policy]\nweights = {{ BAYES_SPAM = 2.5 }}\n");
        let mut doc = parse(&text).unwrap();
        set_weight(&mut doc, "SPF_FAIL", Some(5.0));
        let out = doc.to_string();
        assert!(out.contains("weights = {"), "{out}");
        let c = levee_config::Config::parse(&out, "edited").unwrap();
        assert_eq!(c.policy.weights.get("BAYES_SPAM"), Some(&2.5));
        assert_eq!(c.policy.weights.get("SPF_FAIL"), Some(&5.0));
    }

    #[test]
    fn bad_values_are_caught_by_the_config_parser() {
        let mut doc = parse(BASE).unwrap();
        upsert_domain(
            &mut doc,
            &DomainEdit {
                name: "x.test".into(),
                downstream: "bad host!:99999".into(),
                tls: "opportunistic".into(),
                enabled: true,
            },
        );
        assert!(levee_config::Config::parse(&doc.to_string(), "edited").is_err());
        let mut doc = parse(BASE).unwrap();
        set_thresholds(&mut doc, 9.0, 5.0, 12.0, 14);
        assert!(levee_config::Config::parse(&doc.to_string(), "edited").is_err());
    }
}
