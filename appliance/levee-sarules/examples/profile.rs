//! Which stock rules cost the most time over a manifest's messages.
//!
//! `cargo run --release -p levee-sarules --example profile -- MANIFEST [N]`
//! With `SLOWEST=K`, only the K slowest messages count (what the p99 is made of).

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
    let slowest: Option<usize> = std::env::var("SLOWEST").ok().and_then(|v| v.parse().ok());
    // (whole time, parse time, each rule's time) per message
    type Timed = (Duration, Duration, Vec<(String, Duration)>);
    let mut per_msg: Vec<Timed> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("path\t")) {
        let Some(p) = line.split('\t').next() else { continue };
        let Ok(raw) = std::fs::read(base.join(p)) else { continue };
        let t = std::time::Instant::now();
        let msg = levee_sarules::SaMessage::parse(&raw);
        let parsed = t.elapsed();
        let prof = set.profile(&msg);
        let sum = prof.iter().map(|t| t.1).sum::<Duration>() + parsed;
        per_msg.push((sum, parsed, prof));
    }
    per_msg.sort_by_key(|m| std::cmp::Reverse(m.0));
    per_msg.truncate(slowest.unwrap_or(usize::MAX));
    let mut total: HashMap<String, Duration> = HashMap::new();
    let mut parse = Duration::ZERO;
    for (_, parsed, prof) in per_msg {
        parse += parsed;
        for (name, d) in prof {
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
