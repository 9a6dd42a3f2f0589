//! Which stock rules cost the most time over a manifest's messages.
//!
//! `cargo run --release -p levee-sarules --example profile -- MANIFEST [N]`

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let manifest = args.first().map_or("/work/shared/corpus/train.tsv", String::as_str);
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(20);
    let (set, _) = levee_sarules::load_dirs(&[Path::new("/usr/share/spamassassin")]).expect("load");
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let base = Path::new(manifest).parent().unwrap_or(Path::new("."));
    let mut total: HashMap<String, Duration> = HashMap::new();
    let mut parse = Duration::ZERO;
    for line in text.lines().filter(|l| !l.starts_with("path\t")) {
        let Some(p) = line.split('\t').next() else { continue };
        let Ok(raw) = std::fs::read(base.join(p)) else { continue };
        let t = std::time::Instant::now();
        let msg = levee_sarules::SaMessage::parse(&raw);
        parse += t.elapsed();
        for (name, d) in set.profile(&msg) {
            *total.entry(name).or_default() += d;
        }
    }
    let mut v: Vec<_> = total.into_iter().collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.1));
    let all: Duration = v.iter().map(|t| t.1).sum();
    println!("parse {parse:?}, rules {all:?}");
    for (name, d) in v.iter().take(n) {
        println!("{d:>12.3?}  {name}");
    }
}
