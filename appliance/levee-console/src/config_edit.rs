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
