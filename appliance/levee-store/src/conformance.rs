//! Behaviour every [`Backend`](crate::Backend) must have, as checks on an empty store:
//! the sled backend runs them in its tests, and a new backend runs the same with
//!
//! ```ignore
//! levee_store::conformance::run(&mut || Store::new(Arc::new(MyBackend::empty())));
//! ```
//!
//! (with the `conformance` feature). Checks panic with the name of what broke.

use std::sync::{Arc, Barrier};

use levee_types::list::ListEntry;
use levee_types::QueueId;

use crate::*;

/// One check: panics when the store behind the handle misbehaves.
pub type Check = fn(&Store);

/// Every check, by name. Each gets a fresh, empty store.
pub const CHECKS: &[(&str, Check)] = &[
    ("queue_round_trip", queue_round_trip),
    ("queue_update_never_recreates", queue_update_never_recreates),
    ("queue_updates_race", queue_updates_race),
    ("queue_waiting_is_kept", queue_waiting_is_kept),
    ("log_newest_first_and_pages", log_newest_first_and_pages),
    ("log_attempts_append", log_attempts_append),
    ("log_attempts_race", log_attempts_race),
    ("log_non_finite_scores", log_non_finite_scores),
    ("log_unknown_words_survive", log_unknown_words_survive),
    ("counters_follow_writes", counters_follow_writes),
    ("log_prune", log_prune),
    ("quarantine_search_and_expiry", quarantine_search_and_expiry),
    ("quarantine_updates", quarantine_updates),
    ("lists_parallel_adds", lists_parallel_adds),
    ("lists_and_blobs", lists_and_blobs),
    ("users", users),
    ("sessions", sessions),
    ("tokens_schedules_throttle", tokens_schedules_throttle),
    ("throttle_race", throttle_race),
    ("account_updates", account_updates),
    ("learning_records", learning_records),
    ("install_secret", install_secret),
];

/// Runs every check, each on a store from `fresh`.
pub fn run(fresh: &mut dyn FnMut() -> Store) {
    for (name, check) in CHECKS {
        eprintln!("conformance: {name}");
        check(&fresh());
    }
}

fn id(n: u64) -> QueueId {
    QueueId::from_u64(n)
}

fn queue_entry(n: u64) -> QueueEntry {
    QueueEntry {
        id: id(n),
        received_at: 1_700_000_000 + n,
        attempts: 2,
        next_attempt: 1_700_000_600,
        recipients: vec![
            RcptState { rcpt: "a@dest.test".into(), status: RcptStatus::Pending, last_reply: None },
            RcptState {
                rcpt: "b@dest.test".into(),
                status: RcptStatus::Deferred,
                last_reply: Some("451 4.3.0 try later".into()),
            },
        ],
        released: None,
        held: n.is_multiple_of(2),
    }
}

fn log_entry(n: u64) -> LogEntry {
    LogEntry {
        id: id(n),
        received_at: 1_700_000_000 + n,
        client_ip: "192.0.2.1".into(),
        helo: "mx.example.test".into(),
        mail_from: String::new(),
        rcpt_to: vec!["a@dest.test".into()],
        size: 1234,
        action: LogAction::Tag,
        score: 5.5,
        findings: vec![("DNSBL".into(), "listed \"x\"".into(), 3.0)],
        deliveries: vec![],
    }
}

fn attempt(rcpt: &str) -> DeliveryAttempt {
    DeliveryAttempt {
        at: 1_700_000_100,
        rcpt: rcpt.into(),
        host: "mail.dest.test:25".into(),
        reply: "250 2.0.0 ok".into(),
        outcome: DeliveryOutcome::Delivered,
    }
}

fn quarantined(n: u64) -> QuarantineEntry {
    QuarantineEntry {
        id: id(n),
        received_at: 1_700_000_000 + n,
        expires_at: 1_800_000_000,
        client_ip: "192.0.2.1".into(),
        mail_from: String::new(),
        rcpt_to: vec!["a@dest.test".into()],
        from_header: String::new(),
        subject: "s".into(),
        size: 1,
        score: 7.0,
        action: LogAction::Quarantine,
        findings: vec![],
    }
}

/// Log records with different actions, hours, senders, recipients and reasons.
fn varied(n: u64) -> LogEntry {
    let actions = ["accept", "tag", "quarantine", "reject", "tempfail"];
    LogEntry {
        received_at: 1_700_000_000 + n * 1_000,
        action: actions[(n % 5) as usize].into(),
        mail_from: if n.is_multiple_of(3) { String::new() } else { format!("S{}@x.test", n % 4) },
        rcpt_to: vec![format!("r{}@dest.test", n % 2), "R0@dest.test".into()],
        findings: vec![
            (format!("SYM{}", n % 3), String::new(), 1.0),
            ("NEG".into(), String::new(), -1.0),
            (format!("SYM{}", n % 3), "again".into(), 2.0),
        ],
        ..log_entry(n)
    }
}

pub fn queue_round_trip(s: &Store) {
    s.queue_put(&queue_entry(2)).unwrap();
    s.queue_put(&queue_entry(1)).unwrap();
    assert_eq!(s.queue_get(&id(1)).unwrap(), Some(queue_entry(1)));
    assert_eq!(s.queue_all().unwrap(), [queue_entry(1), queue_entry(2)], "oldest first");
    s.queue_remove(&id(1)).unwrap();
    s.queue_remove(&id(1)).unwrap();
    assert_eq!(s.queue_get(&id(1)).unwrap(), None);
    assert_eq!(s.queue_all().unwrap(), [queue_entry(2)]);
    let mut released = queue_entry(2);
    released.released = Some(Release { by: "admin:root".into(), verdict: LogAction::Reject });
    s.queue_put(&released).unwrap();
    assert_eq!(s.queue_get(&id(2)).unwrap(), Some(released));
}

pub fn queue_update_never_recreates(s: &Store) {
    assert_eq!(s.queue_update(&id(1), |e| e.attempts += 1).unwrap(), None);
    assert_eq!(s.queue_get(&id(1)).unwrap(), None, "an update must not create an entry");
    s.queue_put(&queue_entry(1)).unwrap();
    let got = s.queue_update(&id(1), |e| e.recipients[0].status = RcptStatus::Delivered);
    let got = got.unwrap().unwrap();
    assert_eq!(got.recipients[0].status, RcptStatus::Delivered);
    assert_eq!(s.queue_get(&id(1)).unwrap(), Some(got));
    s.queue_remove(&id(1)).unwrap();
    assert_eq!(s.queue_update(&id(1), |e| e.attempts += 1).unwrap(), None);
    assert_eq!(s.queue_get(&id(1)).unwrap(), None);
}

pub fn queue_updates_race(s: &Store) {
    let mut e = queue_entry(1);
    e.attempts = 0;
    s.queue_put(&e).unwrap();
    let bump = |s: Store| {
        std::thread::spawn(move || {
            for _ in 0..50 {
                s.queue_update(&id(1), |e| e.attempts += 1).unwrap();
            }
        })
    };
    let handles: Vec<_> = (0..4).map(|_| bump(s.clone())).collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.queue_get(&id(1)).unwrap().unwrap().attempts, 200, "no update lost");
    // Updates racing a delete: whichever comes after the delete finds nothing.
    let handles: Vec<_> = (0..4).map(|_| bump(s.clone())).collect();
    s.queue_remove(&id(1)).unwrap();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.queue_get(&id(1)).unwrap(), None, "a delete wins");
}

pub fn queue_waiting_is_kept(s: &Store) {
    let scan = |s: &Store| s.queue_all().unwrap().iter().filter(|e| !e.held).count() as u64;
    for n in 1..=5 {
        let mut e = queue_entry(n);
        e.held = n % 2 == 0;
        s.queue_put(&e).unwrap();
    }
    assert_eq!((s.queue_waiting(), scan(s)), (3, 3));
    s.queue_put(&queue_entry(1)).unwrap(); // replaced, still waiting
    s.queue_update(&id(2), |e| e.held = false).unwrap(); // released
    s.queue_update(&id(3), |e| e.held = true).unwrap(); // held
    s.queue_remove(&id(5)).unwrap();
    s.queue_remove(&id(5)).unwrap(); // already gone
    s.queue_remove(&id(4)).unwrap(); // a held one
    assert_eq!((s.queue_waiting(), scan(s)), (2, 2));
}

pub fn log_newest_first_and_pages(s: &Store) {
    // Ids that differ in the high bits (time) and the low bits, inserted out of order.
    let ids = [5u64 << 40, 1, 3 << 40, (3 << 40) + 1, 0xFFFF_0000_0000_0000, 256];
    for n in ids {
        s.log_put(&log_entry(n)).unwrap();
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let got: Vec<QueueId> = s.log_recent(100).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(got, sorted.iter().map(|n| id(*n)).collect::<Vec<_>>());
    let top2: Vec<QueueId> = s.log_recent(2).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(top2, [id(sorted[0]), id(sorted[1])]);
    let next: Vec<QueueId> =
        s.log_page(Some(&top2[1]), 3).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(next, [id(sorted[2]), id(sorted[3]), id(sorted[4])]);
    assert!(s.log_recent(0).unwrap().is_empty());
    assert_eq!(s.log_len().unwrap(), ids.len());
    assert_eq!(s.log_get(&id(1)).unwrap(), Some(log_entry(1)));
    assert_eq!(s.log_get(&id(2)).unwrap(), None);
}

pub fn log_attempts_append(s: &Store) {
    s.log_put(&log_entry(9)).unwrap();
    s.log_add_attempt(&id(9), attempt("a@dest.test")).unwrap();
    let failed = DeliveryAttempt { outcome: DeliveryOutcome::Failed, ..attempt("b@dest.test") };
    s.log_add_attempt(&id(9), failed.clone()).unwrap();
    assert!(matches!(
        s.log_add_attempt(&id(10), attempt("a@dest.test")),
        Err(StoreError::NotFound(_))
    ));
    let e = s.log_get(&id(9)).unwrap().unwrap();
    assert_eq!(e.deliveries, [attempt("a@dest.test"), failed]);
    assert_eq!(e.findings, log_entry(9).findings);
}

pub fn log_attempts_race(s: &Store) {
    s.log_put(&log_entry(1)).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    s.log_add_attempt(&id(1), attempt(&format!("r{t}-{i}@dest.test"))).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.log_get(&id(1)).unwrap().unwrap().deliveries.len(), 100, "no attempt lost");
}

pub fn log_non_finite_scores(s: &Store) {
    let mut e = log_entry(3);
    e.score = f64::NAN;
    e.findings[0].2 = f64::INFINITY;
    s.log_put(&e).unwrap();
    let back = s.log_get(&id(3)).unwrap().unwrap();
    assert!(back.score.is_nan() && back.findings[0].2.is_nan());
    assert_eq!(back.findings[0].0, "DNSBL");
}

/// A word this version does not know (a newer version wrote it) stays as written through
/// a read-modify-write, and is counted under its own text.
pub fn log_unknown_words_survive(s: &Store) {
    let e = LogEntry { action: LogAction::Other("sandboxed".into()), ..log_entry(4) };
    s.log_put(&e).unwrap();
    let odd = DeliveryAttempt { outcome: "bounced".into(), ..attempt("a@dest.test") };
    s.log_add_attempt(&id(4), odd.clone()).unwrap();
    let back = s.log_get(&id(4)).unwrap().unwrap();
    assert_eq!((back.action.as_str(), &back.deliveries[..]), ("sandboxed", &[odd][..]));
    assert_eq!(s.counts(0, false).unwrap().log_by_action["sandboxed"], 1);
    assert_eq!(s.counts(0, true).unwrap(), s.recount().unwrap());
}

pub fn counters_follow_writes(s: &Store) {
    for n in 1..=20 {
        s.log_put(&varied(n)).unwrap();
    }
    // A message taken back: the same id again with another action.
    s.log_put(&LogEntry { action: LogAction::Tempfail, ..varied(1) }).unwrap();
    // The same record again changes nothing.
    s.log_put(&varied(2)).unwrap();
    for n in [1, 2, 3] {
        s.quarantine_put(&quarantined(n)).unwrap();
    }
    s.quarantine_put(&quarantined(2)).unwrap();
    s.quarantine_remove(&id(3)).unwrap();
    s.quarantine_remove(&id(3)).unwrap();

    let c = s.counts(0, true).unwrap();
    assert_eq!(c, s.recount().unwrap());
    assert_eq!((c.log, c.quarantine), (20, 2));
    assert_eq!((s.log_len().unwrap(), s.quarantine_len().unwrap()), (20, 2));
    assert_eq!(c.log_by_action["tempfail"], 5, "{c:?}");
    assert_eq!(c.log_by_action["tag"], 3);
    // Per record once: R0 is in every record, SYM twice in one record counts once.
    let top = |kind, name: &str| -> u64 {
        c.top_by_hour.iter().filter(|((_, k, n), _)| *k == kind && n == name).map(|(_, v)| v).sum()
    };
    assert_eq!(top(TopKind::Recipient, "r0@dest.test"), 20);
    assert_eq!(top(TopKind::Reason, "SYM0"), 6);
    assert_eq!(top(TopKind::Reason, "NEG"), 0);
    assert_eq!(top(TopKind::Sender, "<>"), 6);
    assert_eq!(top(TopKind::Sender, "s1@x.test"), 4);
    let written = s.log_written().unwrap();
    assert_eq!(written["tag"], 4, "the first write of the taken-back message counts");
    assert_eq!(written["tempfail"], 5);
    // The hour window leaves older hours out.
    let from = varied(15).received_at / 3600;
    let late = s.counts(from, false).unwrap();
    assert!(late.top_by_hour.is_empty());
    let in_window = (1..=20).filter(|n| varied(*n).received_at / 3600 >= from).count();
    assert!(in_window < 20);
    assert_eq!(late.log_by_hour.values().sum::<u64>(), in_window as u64);
}

pub fn log_prune(s: &Store) {
    // 1,500 records one hour apart (more than one sled prune batch), in id order.
    let base = 1_700_000_000;
    for n in 0..1_500u64 {
        s.log_put(&LogEntry { received_at: base + n * 3600, ..varied(n + 1) }).unwrap();
    }
    s.quarantine_put(&quarantined(1)).unwrap();
    let written = s.log_written().unwrap();
    let cutoff = base + 1_200 * 3600;
    assert_eq!(s.log_prune(cutoff).unwrap(), 1_200);
    let left = s.log_page(None, 10_000).unwrap();
    assert_eq!(left.len(), 300);
    assert!(left.iter().all(|e| e.received_at >= cutoff));
    assert_eq!(left.last().unwrap().received_at, cutoff, "the first record kept");
    let c = s.counts(0, true).unwrap();
    assert_eq!(c, s.recount().unwrap());
    assert_eq!((c.log, c.quarantine), (300, 1));
    assert_eq!(c.log_by_hour.keys().next().unwrap().0, cutoff / 3600, "old hours are gone");
    assert_eq!(s.log_written().unwrap(), written, "totals never go down");
    assert_eq!(s.log_prune(cutoff).unwrap(), 0);
    assert_eq!(s.log_prune(u64::MAX).unwrap(), 300);
    assert_eq!(s.counts(0, true).unwrap(), s.recount().unwrap());
    assert_eq!(s.log_len().unwrap(), 0);
}

pub fn quarantine_search_and_expiry(s: &Store) {
    for n in 1..=5 {
        let e = QuarantineEntry {
            expires_at: 1_000 * n,
            subject: format!("Offer {n}"),
            rcpt_to: vec![format!("u{}@dest.test", n % 2)],
            score: n as f64,
            ..quarantined(n)
        };
        s.quarantine_put(&e).unwrap();
    }
    let ids = |q: &QuarantineQuery| {
        let (found, total) = s.quarantine_search(q).unwrap();
        (found.into_iter().map(|e| e.id).collect::<Vec<_>>(), total)
    };
    assert_eq!(ids(&QuarantineQuery::default()), (vec![id(5), id(4), id(3), id(2), id(1)], 5));
    let mine =
        QuarantineQuery { recipients: Some(vec!["U1@dest.test".into()]), ..Default::default() };
    assert_eq!(ids(&mine), (vec![id(5), id(3), id(1)], 3));
    let paged = QuarantineQuery { offset: 1, limit: 2, min_score: Some(2.0), ..Default::default() };
    assert_eq!(ids(&paged), (vec![id(4), id(3)], 4));
    let subject = QuarantineQuery { subject: Some("offer 2".into()), ..Default::default() };
    assert_eq!(ids(&subject), (vec![id(2)], 1));
    assert_eq!(s.quarantine_expired(2_000).unwrap(), [id(1), id(2)]);
    assert_eq!(s.quarantine_get(&id(3)).unwrap().unwrap().action, LogAction::Quarantine);
    s.quarantine_remove(&id(3)).unwrap();
    assert_eq!(s.quarantine_get(&id(3)).unwrap(), None);
    assert_eq!(s.quarantine_len().unwrap(), 4);
}

/// Each user drops their own recipient at the same time: no drop is lost, and an entry
/// removed (released) meanwhile is not brought back.
pub fn quarantine_updates(s: &Store) {
    assert_eq!(s.quarantine_update(&id(1), |q| q.subject.clear()).unwrap(), None);
    assert_eq!(s.quarantine_get(&id(1)).unwrap(), None, "an update must not create an entry");
    let rcpts: Vec<String> = (0..8).map(|n| format!("u{n}@dest.test")).collect();
    s.quarantine_put(&QuarantineEntry { rcpt_to: rcpts.clone(), ..quarantined(1) }).unwrap();
    std::thread::scope(|scope| {
        for r in &rcpts[1..] {
            scope.spawn(move || {
                s.quarantine_update(&id(1), |q| q.rcpt_to.retain(|x| x != r)).unwrap().unwrap();
            });
        }
    });
    assert_eq!(s.quarantine_get(&id(1)).unwrap().unwrap().rcpt_to, &rcpts[..1]);
    assert_eq!(s.quarantine_len().unwrap(), 1);
    s.quarantine_remove(&id(1)).unwrap();
    assert_eq!(s.quarantine_update(&id(1), |q| q.rcpt_to.clear()).unwrap(), None);
    assert_eq!((s.quarantine_get(&id(1)).unwrap(), s.quarantine_len().unwrap()), (None, 0));
}

/// The race of issue 11: every thread sees "not there yet", then all insert.
pub fn lists_parallel_adds(s: &Store) {
    let e: ListEntry = "block sender spam@example.net".parse().unwrap();
    for round in 0..20 {
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let ids: Vec<u64> = (0..threads)
            .map(|t| {
                let (s, e, barrier) = (s.clone(), e.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.list_add(&e, &format!("thread {t}"), "admin", round).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let all = s.list_all().unwrap();
        assert_eq!(all.len(), 1, "round {round}: {all:?}");
        assert!(ids.iter().all(|id| *id == all[0].id), "round {round}: {ids:?}");
        assert!(s.list_remove(all[0].id).unwrap());
        assert!(s.list_all().unwrap().is_empty());
    }
}

pub fn lists_and_blobs(s: &Store) {
    let e: ListEntry = "allow sender alice@example.com".parse().unwrap();
    let id = s.list_add(&e, "customer", "admin", 1).unwrap();
    assert_eq!(s.list_add(&e, "again", "admin", 2).unwrap(), id);
    s.list_add(&"block country CN".parse().unwrap(), "", "admin", 3).unwrap();
    let all = s.list_all().unwrap();
    assert_eq!(
        (all.len(), all[0].note.as_str(), all[0].created_by.as_str()),
        (2, "customer", "admin")
    );
    assert!(s.list_remove(id).unwrap());
    assert!(!s.list_remove(id).unwrap());
    let entries = s.list_entries().unwrap();
    assert_eq!(entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["block country CN"]);
    assert_eq!(s.blob_get("bayes").unwrap(), None);
    s.blob_put("bayes", b"model").unwrap();
    s.blob_put("bayes", b"model 2").unwrap();
    assert_eq!(s.blob_get("bayes").unwrap().unwrap(), b"model 2");
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

pub fn users(s: &Store) {
    assert_eq!(s.users_len(), 0);
    assert!(s.user_create(&user("Admin", Role::Admin)).unwrap());
    assert!(!s.user_create(&user("admin", Role::User)).unwrap(), "names are case-insensitive");
    assert!(s.user_create(&user("bob", Role::User)).unwrap());
    assert_eq!(s.user_get("ADMIN").unwrap().unwrap().role, Role::Admin);
    assert_eq!(s.user_get("admin").unwrap().unwrap().name, "admin", "stored lower-case");
    s.user_put(&User { role: Role::Auditor, ..user("BOB", Role::User) }).unwrap();
    assert_eq!(s.user_get("bob").unwrap().unwrap().role, Role::Auditor);
    assert_eq!((s.users_all().unwrap().len(), s.users_len()), (2, 2));
    assert!(s.user_remove("Bob").unwrap());
    assert!(!s.user_remove("Bob").unwrap());
    assert!(s.user_get("bob").unwrap().is_none());
}

pub fn sessions(s: &Store) {
    let sess =
        |u: &str, t: u64| Session { user: u.into(), csrf: "c".into(), created_at: t, last_seen: t };
    s.session_put("d1", &sess("alice", 10)).unwrap();
    s.session_put("d2", &sess("alice", 20)).unwrap();
    s.session_put("d3", &sess("bob", 5)).unwrap();
    s.session_put("d4", &sess("carol", 50)).unwrap();
    assert_eq!(s.session_get("d4").unwrap(), Some(sess("carol", 50)));
    assert_eq!(s.sessions_remove_user("Alice").unwrap(), 2);
    assert!(s.session_get("d1").unwrap().is_none());
    assert_eq!(s.sessions_prune(|x| x.last_seen < 6).unwrap(), 1);
    assert!(s.session_get("d3").unwrap().is_none());
    assert!(s.session_remove("d4").unwrap());
    assert!(!s.session_remove("d4").unwrap());
}

pub fn tokens_schedules_throttle(s: &Store) {
    let id = s.token_add("abc", "Bob", "script", 1).unwrap();
    let other = s.token_add("def", "bob", "cron", 1).unwrap();
    assert_ne!(id, other, "token ids are unique");
    assert_eq!(s.token_get("abc").unwrap().unwrap().user, "bob");
    assert!(!s.token_remove(id, Some("mallory")).unwrap());
    assert!(s.token_remove(id, Some("bob")).unwrap());
    assert!(s.token_get("abc").unwrap().is_none());
    s.tokens_remove_user("BOB").unwrap();
    assert!(s.tokens_all().unwrap().is_empty());

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
    assert!(!s.schedule_remove(sid).unwrap());

    assert_eq!(s.throttle_get("k").unwrap(), Throttle::default());
    let (before, after) =
        s.throttle_update("k", |t| Throttle { failures: t.failures + 3, window_start: 9 }).unwrap();
    assert_eq!((before.failures, after.failures), (0, 3));
    assert_eq!(s.throttle_get("k").unwrap(), after);
    s.throttle_clear("k").unwrap();
    assert_eq!(s.throttle_get("k").unwrap().failures, 0);
}

pub fn throttle_race(s: &Store) {
    const THREADS: u32 = 8;
    const EACH: u32 = 50;
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..EACH {
                    s.throttle_update("k", |t| Throttle { failures: t.failures + 1, ..t }).unwrap();
                }
            });
        }
    });
    assert_eq!(s.throttle_get("k").unwrap().failures, THREADS * EACH, "no attempt lost");
}

/// Updates change what is stored, keep the key field and never bring back a removed
/// record (a late session touch after "log out everywhere", a digest run after a user's
/// removal).
pub fn account_updates(s: &Store) {
    assert!(s.user_create(&user("Alice", Role::User)).unwrap());
    let u = s.user_update("ALICE", |u| {
        u.password_hash = "new".into();
        u.name = "mallory".into();
    });
    assert_eq!(u.unwrap().unwrap().name, "alice");
    let stored = s.user_get("alice").unwrap().unwrap();
    assert_eq!((stored.name.as_str(), stored.password_hash.as_str()), ("alice", "new"));
    assert!(s.user_get("mallory").unwrap().is_none());
    assert!(s.user_remove("alice").unwrap());
    assert_eq!(s.user_update("alice", |u| u.digest_last_sent = 9).unwrap(), None);
    assert!(s.user_get("alice").unwrap().is_none());

    let sess = Session { user: "alice".into(), csrf: "c".into(), created_at: 1, last_seen: 1 };
    s.session_put("d", &sess).unwrap();
    assert_eq!(s.session_update("d", |x| x.last_seen = 7).unwrap().unwrap().last_seen, 7);
    assert_eq!(s.session_get("d").unwrap().unwrap().last_seen, 7);
    s.sessions_remove_user("alice").unwrap();
    assert_eq!(s.session_update("d", |x| x.last_seen = 8).unwrap(), None);
    assert!(s.session_get("d").unwrap().is_none());

    let sched = ReportSchedule {
        id: 0,
        frequency: Frequency::Daily,
        recipients: vec!["a@b.test".into()],
        last_sent: 0,
    };
    let sid = s.schedule_put(&sched).unwrap();
    let got = s.schedule_update(sid, |x| {
        x.last_sent = 5;
        x.id = 0;
    });
    assert_eq!((got.unwrap().unwrap().id, s.schedules_all().unwrap()[0].last_sent), (sid, 5));
    assert!(s.schedule_remove(sid).unwrap());
    assert_eq!(s.schedule_update(sid, |x| x.last_sent = 6).unwrap(), None);
    assert!(s.schedules_all().unwrap().is_empty());
}

pub fn learning_records(s: &Store) {
    s.learning_put(LEARN_GLOBAL, &vec![1u32, 2, 3]).unwrap();
    s.learning_user_put("b@example.test", &"votes b").unwrap();
    s.learning_user_put("a@example.test", &"votes a").unwrap();
    s.learning_put("user:c@example.test", &7u32).unwrap();
    assert_eq!(s.learning_get::<Vec<u32>>(LEARN_GLOBAL).unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(s.learning_get::<Vec<u32>>(LEARN_HELDBACK).unwrap(), None);
    let (users, bad) = s.learning_users::<String>().unwrap();
    assert_eq!(
        users,
        [("a@example.test".into(), "votes a".into()), ("b@example.test".into(), "votes b".into())]
    );
    assert_eq!(bad, ["c@example.test"]);
}

pub fn install_secret(s: &Store) {
    let first = s.install_secret().unwrap();
    assert_ne!(first, [0u8; 32]);
    assert_eq!(s.install_secret().unwrap(), first);
    let dbg = format!("{s:?}");
    assert!(dbg.starts_with("Store") && !dbg.contains("secret"), "{dbg}");
}
