//! Console edits to the config file, made on the TOML document so comments and layout
//! survive. The result is validated by the engine (`update_config`) like any file.

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

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

/// Replaces a value, keeping the comment and spacing around the old one.
fn set_keep(item: &mut Item, new: impl Into<toml_edit::Value>) {
    let mut new: toml_edit::Value = new.into();
    if let Some(old) = item.as_value() {
        *new.decor_mut() = old.decor().clone();
    }
    *item = Item::Value(new);
}

pub fn set_hostname(doc: &mut DocumentMut, hostname: &str) {
    set_keep(&mut doc["hostname"], hostname);
}

fn domains(doc: &mut DocumentMut) -> &mut ArrayOfTables {
    if !doc.contains_key("domain") || doc["domain"].as_array_of_tables().is_none() {
        doc["domain"] = Item::ArrayOfTables(ArrayOfTables::new());
    }
    doc["domain"].as_array_of_tables_mut().expect("just made")
}

/// Adds a domain, or changes the one with this name.
pub fn upsert_domain(doc: &mut DocumentMut, d: &DomainEdit) {
    let list = domains(doc);
    let idx = list.iter().position(|t| {
        t.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.eq_ignore_ascii_case(&d.name))
    });
    let table = match idx {
        Some(i) => list.get_mut(i).expect("index from position"),
        None => {
            let mut t = Table::new();
            t["name"] = value(d.name.to_lowercase());
            list.push(t);
            list.get_mut(list.len() - 1).expect("just pushed")
        }
    };
    if d.downstream.trim().is_empty() {
        table.remove("downstream");
    } else {
        table["downstream"] = value(d.downstream.trim());
    }
    table["tls"] = value(d.tls.as_str());
    table["enabled"] = value(d.enabled);
}

pub fn remove_domain(doc: &mut DocumentMut, name: &str) -> bool {
    let list = domains(doc);
    let before = list.len();
    list.retain(|t| {
        !t.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.eq_ignore_ascii_case(name))
    });
    list.len() != before
}

fn policy(doc: &mut DocumentMut) -> &mut Table {
    if doc.get("policy").and_then(|p| p.as_table()).is_none() {
        doc["policy"] = Item::Table(Table::new());
    }
    doc["policy"].as_table_mut().expect("just made")
}

pub fn set_thresholds(doc: &mut DocumentMut, tag: f64, quarantine: f64, reject: f64, days: i64) {
    let p = policy(doc);
    set_keep(&mut p["tag_at"], tag);
    set_keep(&mut p["quarantine_at"], quarantine);
    set_keep(&mut p["reject_at"], reject);
    set_keep(&mut p["quarantine_days"], days);
}

/// Points `checks.geoip_db` at a country database file.
pub fn set_geoip_db(doc: &mut DocumentMut, path: &str) {
    if doc.get("checks").and_then(|c| c.as_table()).is_none() {
        doc["checks"] = Item::Table(Table::new());
    }
    doc["checks"]["geoip_db"] = value(path);
}

/// Sets (or, with `None`, removes) one symbol's weight override.
pub fn set_weight(doc: &mut DocumentMut, symbol: &str, weight: Option<f64>) {
    let p = policy(doc);
    if p.get("weights").and_then(|w| w.as_table()).is_none() {
        let mut t = Table::new();
        t.set_implicit(false);
        p["weights"] = Item::Table(t);
    }
    let w = p["weights"].as_table_mut().expect("just made");
    match weight {
        Some(v) => w[symbol] = value(v),
        None => {
            w.remove(symbol);
        }
    }
}

/// The `[domain.policy]` table of one `[[domain]]` in the document, made on demand;
/// `None` when no domain has that name.
fn domain_policy_table<'a>(doc: &'a mut DocumentMut, name: &str) -> Option<&'a mut Table> {
    let list = doc.get_mut("domain")?.as_array_of_tables_mut()?;
    let domain = list.iter_mut().find(|t| {
        t.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.eq_ignore_ascii_case(name))
    })?;
    if domain.get("policy").and_then(|p| p.as_table()).is_none() {
        let mut t = Table::new();
        t.set_implicit(true);
        domain["policy"] = Item::Table(t);
    }
    domain["policy"].as_table_mut()
}

/// Drops a domain's `[domain.policy]` (and its weights) when nothing is left in it.
fn prune_domain_policy(doc: &mut DocumentMut, name: &str) {
    let Some(list) = doc.get_mut("domain").and_then(|d| d.as_array_of_tables_mut()) else {
        return;
    };
    for domain in list.iter_mut() {
        if !domain
            .get("name")
            .and_then(|n| n.as_str())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let Some(policy) = domain.get_mut("policy").and_then(|p| p.as_table_mut()) else {
            return;
        };
        if policy.get("weights").and_then(|w| w.as_table()).is_some_and(|w| w.is_empty()) {
            policy.remove("weights");
        }
        // A table holding only sub-tables is written without its own header.
        let keys = policy.iter().filter(|(_, v)| !v.is_table()).count();
        policy.set_implicit(keys == 0);
        if policy.is_empty() {
            domain.remove("policy");
        }
    }
}

/// Sets a domain's own thresholds (`[tag_at, quarantine_at, reject_at]`, `None` = follow
/// `[policy]`), or with `None` drops every override of the domain, weights included.
pub fn set_domain_thresholds(
    doc: &mut DocumentMut,
    name: &str,
    thresholds: Option<[Option<f64>; 3]>,
) {
    if let Some(policy) = domain_policy_table(doc, name) {
        match thresholds {
            None => policy.clear(),
            Some(values) => {
                for (key, v) in ["tag_at", "quarantine_at", "reject_at"].into_iter().zip(values) {
                    match v {
                        Some(v) => policy[key] = value(v),
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

/// Sets (or with `None` removes) one weight in a domain's `[domain.policy.weights]`.
pub fn set_domain_weight(doc: &mut DocumentMut, name: &str, symbol: &str, weight: Option<f64>) {
    if let Some(policy) = domain_policy_table(doc, name) {
        if policy.get("weights").and_then(|w| w.as_table()).is_none() {
            let mut t = Table::new();
            t.set_implicit(false);
            policy["weights"] = Item::Table(t);
        }
        if let Some(weights) = policy["weights"].as_table_mut() {
            match weight {
                Some(v) => weights[symbol] = value(v),
                None => {
                    weights.remove(symbol);
                }
            }
        }
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
