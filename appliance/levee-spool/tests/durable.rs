//! The path to `250`, end to end with the real store: write the file, record the index
//! entry, group-commit (directory fsync + store flush), then "restart" and check that
//! every acknowledged message is both in the spool and in the index.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::SystemTime;

use levee_spool::{GroupCommit, Spool, SpoolMeta};
use levee_store::{QueueEntry, RcptState, RcptStatus, Store};
use levee_types::{Action, Address, Body, Envelope, QueueId};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meta(id: QueueId, n: usize) -> SpoolMeta {
    SpoolMeta {
        id,
        envelope: Envelope {
            mail_from: None,
            rcpt_to: vec![Address::parse(&format!("user{n}@dest.test"), false).unwrap()],
            helo: "client.example.test".into(),
            client_ip: "192.0.2.9".parse().unwrap(),
            client_name: None,
            tls: false,
            body: Body::SevenBit,
            smtputf8: false,
            declared_size: None,
        },
        received_at: 1_700_000_000,
        action: Action::Accept,
        score: 0.0,
        findings: vec![],
    }
}

#[test]
fn every_acknowledged_message_survives_a_restart() {
    let dir = TempDir(std::env::temp_dir().join(format!("levee-durable-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let (spool_dir, store_dir) = (dir.0.join("spool"), dir.0.join("db"));
    let mut acknowledged: Vec<QueueId> = Vec::new();
    {
        let (spool, rec) = Spool::open(&spool_dir).unwrap();
        assert!(rec.messages.is_empty());
        let spool = Arc::new(spool);
        let store = Store::open(&store_dir).unwrap();
        let flush_store = store.clone();
        let gc = Arc::new(GroupCommit::new(
            spool.clone(),
            Box::new(move || flush_store.flush().map_err(|e| e.to_string())),
        ));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (spool, store, gc, barrier) =
                    (spool.clone(), store.clone(), gc.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for i in 0..10 {
                        let m = meta(spool.new_id(SystemTime::now()), t * 10 + i);
                        spool.write(&m, format!("body {t} {i}\r\n").as_bytes()).unwrap();
                        store
                            .queue_put(&QueueEntry {
                                id: m.id.clone(),
                                received_at: m.received_at,
                                attempts: 0,
                                next_attempt: m.received_at,
                                recipients: vec![RcptState {
                                    rcpt: m.envelope.rcpt_to[0].to_string(),
                                    status: RcptStatus::Pending,
                                    last_reply: None,
                                }],
                                held: false,
                                released: None,
                            })
                            .unwrap();
                        gc.commit().unwrap(); // the relay sends 250 here
                        mine.push(m.id);
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            acknowledged.extend(h.join().unwrap());
        }
        assert!(gc.rounds() <= 80);
        // Debris of a write interrupted by the "crash".
        std::fs::write(spool_dir.join("tmp").join("FFFFFFFFFFFFFFFF"), b"partial").unwrap();
    }
    acknowledged.sort();

    let (spool, rec) = Spool::open(&spool_dir).unwrap();
    let store = Store::open(&store_dir).unwrap();
    let recovered: Vec<QueueId> = rec.messages.iter().map(|m| m.id.clone()).collect();
    let indexed: Vec<QueueId> = store.queue_all().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(recovered, acknowledged);
    assert_eq!(indexed, acknowledged);
    assert!(rec.corrupt.is_empty());
    assert!(std::fs::read_dir(spool_dir.join("tmp")).unwrap().next().is_none());
    for m in &rec.messages {
        let (again, body) = spool.read(&m.id).unwrap();
        assert_eq!(&again, m);
        assert!(body.starts_with(b"body "));
    }
}
