//! Delivery: a scheduler that wakes each queued message when it is due, and the
//! attempt that hands it to the next hop, records per-recipient status and
//! bounces what failed.

use crate::client::{Client, ClientError, ConnectOptions};
use crate::{dsn, headers, now_unix, Engine};
use levee_config::{DownstreamHost, TlsPolicy};
use levee_spool::{next_attempt, SpoolMeta};
use levee_store::{DeliveryAttempt, DeliveryOutcome, QueueEntry, RcptStatus};
use levee_types::{Domain, QueueId, Reply};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn};

/// Runs until shutdown: keeps (due time, id) in order, starts attempts within the
/// concurrency limit and re-schedules what was deferred.
pub async fn run(
    engine: Arc<Engine>,
    mut incoming: mpsc::UnboundedReceiver<QueueId>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut due: BTreeSet<(u64, QueueId)> = BTreeSet::new();
    let mut in_flight: std::collections::HashSet<QueueId> = Default::default();
    match engine.store.queue_all() {
        Ok(entries) => {
            for e in entries.into_iter().filter(|e| !e.held) {
                due.insert((e.next_attempt, e.id));
            }
        }
        Err(e) => warn!(error = %e, "cannot read the queue index"),
    }
    let slots = Arc::new(Semaphore::new(engine.config().delivery.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(QueueId, Option<u64>)>();
    loop {
        let now = now_unix();
        while let Some((at, id)) = due.first().cloned() {
            if at > now {
                break;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
            due.pop_first();
            if !in_flight.insert(id.clone()) {
                continue;
            }
            let engine = engine.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let next = attempt(&engine, &id).await;
                drop(permit);
                let _ = done.send((id, next));
            });
        }
        let wake = due.first().map(|(at, _)| Duration::from_secs(at.saturating_sub(now)));
        let sleep = async {
            match wake {
                // A due message waiting only for a free slot wakes on `done` instead.
                Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
                Some(_) => std::future::pending().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(id) = incoming.recv() => { due.insert((0, id)); }
            Some((id, next)) = done_rx.recv() => {
                in_flight.remove(&id);
                if let Some(at) = next {
                    due.insert((at, id));
                }
            }
            _ = sleep => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// One delivery attempt of one message. Returns when to try again, if at all.
async fn attempt(engine: &Arc<Engine>, id: &QueueId) -> Option<u64> {
    // A plan: this copy is changed as the attempt goes, then only what changed is written
    // back (`write_back`), so a delete or another change made meanwhile is kept.
    let mut entry = match engine.store.queue_get(id) {
        Ok(Some(e)) if !e.held => e,
        Ok(_) => return None,
        Err(e) => {
            warn!(%id, error = %e, "queue index unreadable; retrying later");
            return Some(now_unix() + 60);
        }
    };
    let spool = engine.spool.clone();
    let read_id = id.clone();
    let (meta, body) = match tokio::task::spawn_blocking(move || spool.read(&read_id)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(%id, error = %e, "spool file unreadable; retrying later");
            return Some(now_unix() + 300);
        }
        Err(_) => return Some(now_unix() + 60),
    };
    let config = engine.config();
    let before = entry.recipients.clone();

    // Recipients still to do, grouped by domain: one transaction per next hop.
    let mut groups: HashMap<Domain, Vec<usize>> = HashMap::new();
    for (i, r) in entry.recipients.iter_mut().enumerate() {
        if matches!(r.status, RcptStatus::Pending | RcptStatus::Deferred) {
            match r.rcpt.rsplit_once('@').and_then(|(_, d)| Domain::parse(d).ok()) {
                Some(d) => groups.entry(d).or_default().push(i),
                None => {
                    r.status = RcptStatus::Failed;
                    r.last_reply = Some("550 5.1.3 bad recipient address".into());
                }
            }
        }
    }
    let mut newly_failed: Vec<(String, Reply, String)> = Vec::new();
    for (domain, idx) in groups {
        let rcpts: Vec<String> = idx.iter().map(|&i| entry.recipients[i].rcpt.clone()).collect();
        let (hosts, tls, source) = match config.domain(&domain) {
            Some(d) => match &d.downstream {
                Some(ds) => {
                    (resolve_downstream(engine, &ds.host, ds.port).await, d.tls, d.source_address)
                }
                None => (
                    Err(Reply::with(451, 4, 0, "domain has no downstream configured")),
                    d.tls,
                    None,
                ),
            },
            // Mail Levee writes itself (DSNs, reports) to outside domains goes by MX.
            None => (resolve_mx(engine, &domain).await, TlsPolicy::Opportunistic, None),
        };
        let (host_label, result) = match hosts {
            Ok(hosts) => {
                let msg = Outgoing { meta: &meta, body: &body, released: entry.released.as_ref() };
                deliver_to_first(engine, &hosts, tls, source, &msg, &rcpts).await
            }
            Err(reply) => (domain.to_string(), Err(reply)),
        };
        let now = now_unix();
        for (k, &i) in idx.iter().enumerate() {
            let r = &mut entry.recipients[i];
            let reply = match &result {
                Ok(per) => per[k].clone(),
                Err(reply) => Err(reply.clone()),
            };
            let (status, reply, outcome) = match reply {
                Ok(reply) => (RcptStatus::Delivered, reply, DeliveryOutcome::Delivered),
                Err(reply) if reply.is_permanent() => {
                    (RcptStatus::Failed, reply, DeliveryOutcome::Failed)
                }
                Err(reply) => (RcptStatus::Deferred, reply, DeliveryOutcome::Deferred),
            };
            info!(%id, rcpt = %r.rcpt, host = %host_label, reply = %reply, %outcome, "delivery attempt");
            let _ = engine.store.log_add_attempt(
                id,
                DeliveryAttempt {
                    at: now,
                    rcpt: r.rcpt.clone(),
                    host: host_label.clone(),
                    reply: reply.to_string(),
                    outcome,
                },
            );
            if status == RcptStatus::Failed {
                newly_failed.push((r.rcpt.clone(), reply.clone(), host_label.clone()));
            }
            r.status = status;
            r.last_reply = Some(reply.to_string());
        }
    }
    let now = now_unix();
    let mut next = None;
    if entry.recipients.iter().any(|r| r.status == RcptStatus::Deferred) {
        let attempts = entry.attempts + 1;
        next = next_attempt(&engine.retry_policy(), attempts, entry.received_at, now);
        if next.is_none() {
            // Past the maximum lifetime: what is still deferred has failed for good.
            for r in entry.recipients.iter_mut().filter(|r| r.status == RcptStatus::Deferred) {
                r.status = RcptStatus::Failed;
                let why = format!(
                    "delivery time expired; last error: {}",
                    r.last_reply.clone().unwrap_or_default()
                );
                let reply = Reply::with(554, 4, 7, why);
                info!(%id, rcpt = %r.rcpt, "expired");
                newly_failed.push((r.rcpt.clone(), reply, String::new()));
            }
        }
    }
    // A message deleted during the attempt gets no DSN (the window between this check
    // and the write-back below is not closed; the write-back itself is safe).
    if !newly_failed.is_empty() && matches!(engine.store.queue_get(id), Ok(Some(_))) {
        bounce(engine, &meta, &body, &newly_failed).await;
    }
    let changed: Vec<_> = entry
        .recipients
        .iter()
        .filter(|r| !before.contains(r))
        .map(|r| (r.rcpt.clone(), r.status, r.last_reply.clone()))
        .collect();
    let stored = engine.store.queue_update(id, |current| {
        write_back(current, &changed, next);
    });
    match stored {
        Ok(None) => {
            info!(%id, "deleted during the delivery attempt; stays deleted");
            None
        }
        Ok(Some(current)) if current.is_finished() => {
            finish(engine, &current).await;
            None
        }
        Ok(Some(current)) if current.held => None,
        Ok(Some(current)) => Some(current.next_attempt),
        Err(e) => {
            warn!(%id, error = %e, "cannot update the queue index");
            if next.is_none() {
                finish(engine, &entry).await;
            }
            next
        }
    }
}

/// Applies one attempt's results to the entry as it is stored now: the recipients the
/// attempt changed, if they are still waiting for delivery (one removed or settled
/// meanwhile is left as it is), one more attempt, and the next due time.
fn write_back(
    current: &mut QueueEntry,
    changed: &[(String, RcptStatus, Option<String>)],
    next: Option<u64>,
) {
    for (rcpt, status, reply) in changed {
        let waiting = current.recipients.iter_mut().find(|r| {
            r.rcpt == *rcpt && matches!(r.status, RcptStatus::Pending | RcptStatus::Deferred)
        });
        if let Some(r) = waiting {
            r.status = *status;
            r.last_reply = reply.clone();
        }
    }
    current.attempts += 1;
    if let Some(at) = next {
        current.next_attempt = at;
    }
}

/// Every recipient is delivered or bounced: the message leaves the queue.
async fn finish(engine: &Arc<Engine>, entry: &QueueEntry) {
    let _ = engine.store.queue_remove(&entry.id);
    let spool = engine.spool.clone();
    let id = entry.id.clone();
    let _ = tokio::task::spawn_blocking(move || spool.remove(&id)).await;
}

/// Sends a DSN for the failed recipients, unless the message was itself a bounce.
async fn bounce(
    engine: &Arc<Engine>,
    meta: &SpoolMeta,
    body: &[u8],
    failed: &[(String, Reply, String)],
) {
    let Some(sender) = meta.envelope.mail_from.clone() else {
        info!(id = %meta.id, "no DSN: null sender");
        return;
    };
    let config = engine.config();
    let (envelope, data) = dsn::build(&config.hostname.0, meta, body, &sender, failed, now_unix());
    match engine.enqueue(envelope, data, levee_types::Action::Accept, 0.0, Vec::new()).await {
        crate::StoreOutcome::Queued(_, r) => {
            info!(id = %meta.id, to = %sender, dsn = %r, "DSN queued")
        }
        crate::StoreOutcome::Refused(r) => {
            warn!(id = %meta.id, reply = %r, "DSN could not be queued")
        }
    }
}

async fn resolve_downstream(
    engine: &Engine,
    host: &DownstreamHost,
    port: u16,
) -> Result<Vec<(SocketAddr, String)>, Reply> {
    match host {
        DownstreamHost::Ip(ip) => Ok(vec![(SocketAddr::new(*ip, port), ip.to_string())]),
        DownstreamHost::Name(name) => resolve_host(engine, name, port).await,
        DownstreamHost::Mx(name) => match Domain::parse(name) {
            Ok(d) => resolve_mx(engine, &d).await,
            Err(e) => Err(Reply::with(451, 4, 4, format!("bad MX domain {name}: {e}"))),
        },
    }
}

async fn resolve_host(
    _engine: &Engine,
    name: &str,
    port: u16,
) -> Result<Vec<(SocketAddr, String)>, Reply> {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => {
            let v: Vec<_> = addrs.map(|a| (a, name.to_string())).collect();
            if v.is_empty() {
                Err(Reply::with(451, 4, 4, format!("no address for {name}")))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(Reply::with(451, 4, 4, format!("cannot resolve {name}: {e}"))),
    }
}

/// MX hosts of a domain in preference order, each resolved to its addresses.
async fn resolve_mx(engine: &Engine, domain: &Domain) -> Result<Vec<(SocketAddr, String)>, Reply> {
    let Some(resolver) = &engine.resolver else {
        return Err(Reply::with(451, 4, 3, "no DNS resolver available"));
    };
    let mut hosts: Vec<(u16, String)> = match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(mx) => mx
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::MX(mx) => {
                    Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_string()))
                }
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => {
            return Err(Reply::with(451, 4, 4, format!("MX lookup for {domain} failed: {e}")))
        }
    };
    hosts.sort();
    if hosts.is_empty() {
        // RFC 5321 5.1: no MX means the domain itself is the host.
        hosts.push((0, domain.to_string()));
    }
    if hosts.iter().any(|(_, h)| h.is_empty() || h == ".") {
        return Err(Reply::with(556, 1, 10, format!("{domain} accepts no mail (null MX)")));
    }
    let mut out = Vec::new();
    for (_, h) in hosts {
        if let Ok(mut v) = resolve_host(engine, &h, 25).await {
            out.append(&mut v);
        }
    }
    if out.is_empty() {
        return Err(Reply::with(451, 4, 4, format!("no reachable mail host for {domain}")));
    }
    Ok(out)
}

/// A message on its way out: what the spool holds and how it left quarantine, if it did.
struct Outgoing<'a> {
    meta: &'a SpoolMeta,
    body: &'a [u8],
    released: Option<&'a levee_store::Release>,
}

/// Tries the hosts in order until one takes the transaction. A 5xx at connection
/// time (banner, EHLO) is final; anything transient moves on to the next host.
async fn deliver_to_first(
    engine: &Arc<Engine>,
    hosts: &[(SocketAddr, String)],
    tls: TlsPolicy,
    source: Option<IpAddr>,
    msg: &Outgoing<'_>,
    rcpts: &[String],
) -> (String, Result<Vec<Result<Reply, Reply>>, Reply>) {
    let Outgoing { meta, body, released } = *msg;
    let config = engine.config();
    let mut last = Reply::with(451, 4, 4, "no host tried");
    let mut label = String::new();
    for (addr, name) in hosts {
        label = format!("{name}[{addr}]");
        let opts = ConnectOptions {
            source,
            helo: &config.hostname.0,
            tls,
            tls_name: name,
            connect_timeout: config.delivery.connect_timeout(),
            command_timeout: config.delivery.command_timeout(),
            connector: &engine.connector,
        };
        let rcpt_for = (rcpts.len() == 1).then(|| rcpts[0].as_str());
        let trace =
            headers::trace_headers(meta, released, &config.hostname.0, engine.stamp(), rcpt_for);
        let from = meta.envelope.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default();
        let eight_bit = meta.envelope.body != levee_types::Body::SevenBit;
        // A pooled connection may have been closed by the server while idle: if it
        // fails before any reply, try once more on a fresh one.
        let mut pooled = engine.pool.take(*addr, tls);
        loop {
            let reused = pooled.is_some();
            let mut client = match pooled.take() {
                Some(c) => c,
                None => match Client::connect(*addr, &opts).await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(host = %label, error = %e, "connection failed");
                        last = e.reply();
                        if e.is_permanent() {
                            return (label, Err(last));
                        }
                        break;
                    }
                },
            };
            // Set on every use: a pooled client may predate a config change.
            client.set_data_timeout(config.delivery.data_timeout());
            match client
                .send(&from, rcpts, eight_bit, meta.envelope.smtputf8, trace.as_bytes(), body)
                .await
            {
                Ok(outcome) => {
                    engine.pool.put(*addr, tls, client);
                    return (label, Ok(outcome.rcpts));
                }
                Err(e) if reused && !matches!(e, ClientError::Rejected(..)) => continue,
                Err(e) => {
                    warn!(host = %label, error = %e, "transaction failed");
                    last = e.reply();
                    if e.is_permanent() {
                        return (label, Err(last));
                    }
                    break;
                }
            }
        }
    }
    (label, Err(last))
}

/// Idle outbound connections kept for reuse, per next hop.
#[derive(Debug, Default)]
pub struct Pool(std::sync::Mutex<HashMap<(SocketAddr, TlsPolicy), Vec<Idle>>>);

/// A pooled connection and when it went idle.
type Idle = (Client, tokio::time::Instant);

/// How long an idle downstream connection is kept; servers drop idle clients after
/// a few minutes, so stay well below that.
const POOL_IDLE: Duration = Duration::from_secs(10);
const POOL_MAX_PER_HOST: usize = 8;

impl Pool {
    fn take(&self, addr: SocketAddr, tls: TlsPolicy) -> Option<Client> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(&(addr, tls))?;
        while let Some((client, since)) = list.pop() {
            if since.elapsed() < POOL_IDLE {
                return Some(client);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, tls: TlsPolicy, client: Client) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry((addr, tls)).or_default();
        list.retain(|(_, since)| since.elapsed() < POOL_IDLE);
        if list.len() < POOL_MAX_PER_HOST {
            list.push((client, tokio::time::Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::{engine, Behaviour, Scratch, Sink, Step};
    use crate::StoreOutcome;
    use tokio::sync::Notify;

    const SENDER: &str = "alice@sender.example.test";

    /// A message from `SENDER` to `rcpts`, in the queue and the spool with `action`.
    async fn enqueued(
        engine: &Arc<Engine>,
        rcpts: &[&str],
        data: String,
        action: levee_types::Action,
        score: f64,
    ) -> QueueId {
        let envelope = crate::tests::incoming_from(SENDER, Vec::new(), rcpts).envelope;
        match engine.enqueue(envelope, data.into_bytes(), action, score, Vec::new()).await {
            StoreOutcome::Queued(id, _) => id,
            StoreOutcome::Refused(r) => panic!("not queued: {r}"),
        }
    }

    /// A message from `SENDER` to bob@example.test, waiting for delivery.
    async fn queued(engine: &Arc<Engine>) -> QueueId {
        let data =
            format!("From: {SENDER}\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n");
        enqueued(engine, &["bob@example.test"], data, levee_types::Action::Accept, 0.0).await
    }

    async fn attempt_in_time(engine: &Arc<Engine>, id: &QueueId) -> Option<u64> {
        tokio::time::timeout(Duration::from_secs(60), attempt(engine, id))
            .await
            .expect("the attempt ends within its deadlines")
    }

    fn entry(engine: &Engine, id: &QueueId) -> Option<QueueEntry> {
        engine.store.queue_get(id).unwrap()
    }

    #[tokio::test]
    async fn a_delivered_message_leaves_the_queue_and_the_spool() {
        let dir = Scratch::new("deliver-ok");
        let sink = Sink::start(Behaviour::Accept).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let id = queued(&engine).await;
        assert_eq!(attempt_in_time(&engine, &id).await, None);
        assert_eq!(entry(&engine, &id), None);
        assert!(engine.spool.read(&id).is_err(), "spool file removed");
        assert_eq!(sink.received(), 1);
        let sent = String::from_utf8(sink.messages.lock().unwrap()[0].clone()).unwrap();
        assert!(sent.contains("X-Levee-Stamp: ") && sent.ends_with("\r\nhello\r\n"), "{sent}");
        let log = engine.store.log_get(&id).unwrap().unwrap();
        assert_eq!(log.deliveries[0].outcome, "delivered");
    }

    /// A message held in quarantine for bob and carol at example.test.
    async fn held(engine: &Arc<Engine>) -> QueueId {
        let rcpts = ["bob@example.test", "carol@example.test"];
        let data = format!("From: {SENDER}\r\nSubject: held\r\n\r\nhello\r\n");
        enqueued(engine, &rcpts, data, levee_types::Action::Quarantine, 7.0).await
    }

    /// Issue 12: a released message still said `X-Levee-Verdict: quarantine`, so a downstream
    /// rule that files by verdict held it again.
    #[tokio::test]
    async fn released_mail_is_delivered_as_released_with_its_verdict_and_releaser() {
        let dir = Scratch::new("deliver-released");
        let sink = Sink::start(Behaviour::Accept).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let id = held(&engine).await;
        assert_eq!(attempt_in_time(&engine, &id).await, None, "held mail is not sent");
        assert_eq!(sink.received(), 0);
        engine.quarantine_release(&id, false, "admin-ann").await.unwrap();
        assert_eq!(attempt_in_time(&engine, &id).await, None);
        let sent = String::from_utf8(sink.messages.lock().unwrap()[0].clone()).unwrap();
        assert!(sent.contains("\r\nX-Levee-Verdict: released\r\n"), "{sent}");
        assert!(
            sent.contains("\r\nX-Levee-Released: verdict=quarantine; by=admin-ann\r\n"),
            "{sent}"
        );
        assert!(!sent.contains("X-Levee-Verdict: quarantine"), "{sent}");

        // An end user's release of their own copy says so too; the rest stays held.
        let id = held(&engine).await;
        let only = ["carol@example.test".to_string()];
        engine.quarantine_release_for(&id, &only, "carol@example.test").await.unwrap();
        let copy = engine.store.queue_all().unwrap().into_iter().find(|e| !e.held).unwrap();
        assert_eq!(attempt_in_time(&engine, &copy.id).await, None);
        let sent = String::from_utf8(sink.messages.lock().unwrap()[1].clone()).unwrap();
        assert!(sent.contains("\r\nX-Levee-Verdict: released\r\n"), "{sent}");
        assert!(
            sent.contains("\r\nX-Levee-Released: verdict=quarantine; by=carol@example.test\r\n"),
            "{sent}"
        );
        assert!(entry(&engine, &id).unwrap().held, "bob's copy stays held");
    }

    #[tokio::test]
    async fn a_4xx_defers_the_recipient_with_growing_backoff() {
        let dir = Scratch::new("deliver-4xx");
        let sink = Sink::start(Behaviour::Refuse(Step::EndOfData, 451)).await;
        let engine = engine(&dir.0, sink.addr, "", "[delivery]\nretry_first_secs = 60");
        let id = queued(&engine).await;
        let mut waits = Vec::new();
        for n in 1..=2 {
            let now = now_unix();
            let at = attempt_in_time(&engine, &id).await.expect("retried later");
            let e = entry(&engine, &id).expect("still queued");
            assert_eq!((e.attempts, e.next_attempt), (n, at));
            assert_eq!(e.recipients[0].status, RcptStatus::Deferred);
            let reply = e.recipients[0].last_reply.clone().unwrap();
            assert!(reply.starts_with("451 4.3.0"), "{reply}");
            waits.push(at - now);
        }
        // 60 s, then 120 s after the attempt began (plus the attempt's own time).
        assert!((60..=70).contains(&waits[0]) && (120..=130).contains(&waits[1]), "{waits:?}");
        assert!(engine.spool.read(&id).is_ok(), "the message is kept for the retry");
    }

    #[tokio::test]
    async fn a_5xx_fails_the_recipient_and_bounces_to_the_sender() {
        let dir = Scratch::new("deliver-5xx");
        for (step, code) in [(Step::Rcpt, 550), (Step::EndOfData, 554)] {
            let sink = Sink::start(Behaviour::Refuse(step, code)).await;
            let engine = engine(&dir.0.join(format!("{step:?}")), sink.addr, "", "");
            let id = queued(&engine).await;
            assert_eq!(attempt_in_time(&engine, &id).await, None);
            assert_eq!(entry(&engine, &id), None, "failed recipients leave the queue");
            assert!(engine.spool.read(&id).is_err(), "spool file removed");
            let log = engine.store.log_get(&id).unwrap().unwrap();
            assert_eq!(log.deliveries[0].outcome, "failed", "{step:?}");
            let reply = &log.deliveries[0].reply;
            assert!(reply.starts_with(&code.to_string()), "{step:?}: {reply}");
            // The only entry left is the DSN, addressed to the sender.
            let left = engine.store.queue_all().unwrap();
            assert_eq!(left.len(), 1, "{left:?}");
            assert_eq!(left[0].recipients[0].rcpt, SENDER);
        }
    }

    #[tokio::test]
    async fn a_stalled_downstream_is_deferred_when_the_deadline_fires() {
        let dir = Scratch::new("deliver-stall");
        let tail = "[delivery]\ncommand_timeout_secs = 1\ndata_timeout_secs = 2";
        for (step, limit) in [(Step::Mail, 1), (Step::EndOfData, 2)] {
            let sink = Sink::start(Behaviour::Stall(step)).await;
            let engine = engine(&dir.0.join(format!("{step:?}")), sink.addr, "", tail);
            let id = queued(&engine).await;
            let start = std::time::Instant::now();
            assert!(attempt_in_time(&engine, &id).await.is_some(), "retried later");
            let took = start.elapsed();
            assert!(took >= Duration::from_secs(limit), "{step:?}: {took:?}");
            assert!(took < Duration::from_secs(limit + 10), "{step:?}: {took:?}");
            let e = entry(&engine, &id).unwrap();
            assert_eq!(e.recipients[0].status, RcptStatus::Deferred, "{step:?}");
            let reply = e.recipients[0].last_reply.clone().unwrap();
            assert!(reply.starts_with("451") && reply.contains("timeout"), "{step:?}: {reply}");
        }
    }

    #[tokio::test]
    async fn a_message_deleted_during_delivery_stays_deleted() {
        let dir = Scratch::new("deliver-delete");
        let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        // The downstream holds its answer to the final dot until the delete is done, then
        // defers: the attempt would write the entry back for a retry.
        let hold =
            Behaviour::Hold { arrived: arrived.clone(), release: release.clone(), code: 451 };
        let sink = Sink::start(hold).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let id = queued(&engine).await;
        let delivery = tokio::spawn({
            let (engine, id) = (engine.clone(), id.clone());
            async move { attempt_in_time(&engine, &id).await }
        });
        tokio::time::timeout(Duration::from_secs(30), arrived.notified())
            .await
            .expect("the message reached the sink");
        engine.queue_delete(&id).await.unwrap();
        release.notify_one();
        assert_eq!(delivery.await.unwrap(), None, "not rescheduled");
        assert_eq!(sink.received(), 1);
        assert_eq!(entry(&engine, &id), None, "the deleted entry did not come back");
        assert!(engine.store.queue_all().unwrap().is_empty());
        assert!(engine.spool.read(&id).is_err());
        // A retry of the same id (a stale timer) finds nothing to do.
        assert_eq!(attempt_in_time(&engine, &id).await, None);
        assert_eq!(entry(&engine, &id), None);
    }
}
