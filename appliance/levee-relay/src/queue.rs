//! Delivery: a scheduler that wakes each queued message when it is due, and the
//! attempt that hands it to the next hop, records per-recipient status and
//! bounces what failed.

use crate::client::{Client, ClientError, ConnectOptions};
use crate::qmgr::{AttemptReport, Settled};
use crate::{dsn, headers, now_unix, Engine};
use levee_config::{DownstreamHost, TlsPolicy};
use levee_spool::{next_attempt, SpoolMeta};
use levee_store::{DeliveryAttempt, DeliveryOutcome, RcptStatus};
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
    // back, by the queue manager, so a delete or another change made meanwhile is kept.
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
        let msg = Outgoing { meta: &meta, body: &body, released: entry.released.as_ref() };
        let (host_label, result) = to_next_hop(engine, &config, &domain, &msg, &rcpts).await;
        if let Ok(per) = &result {
            // The downstream has the message: say so durably before anything else.
            record_taken(engine, id, &entry, &idx, per).await;
        }
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
    let next = next_or_expire(engine, id, &mut entry, &mut newly_failed);
    // A message deleted during the attempt gets no DSN (the window between this check
    // and the report below is not closed; the report itself is safe).
    if !newly_failed.is_empty() && matches!(engine.store.queue_get(id), Ok(Some(_))) {
        bounce(engine, &meta, &body, &newly_failed).await;
    }
    let changed: Vec<_> = entry
        .recipients
        .iter()
        .filter(|r| !before.contains(r))
        .map(|r| (r.rcpt.clone(), r.status, r.last_reply.clone()))
        .collect();
    let report = AttemptReport { changed, next };
    match engine.qmgr.settle(id, &report).await {
        Ok(Settled::Gone) => {
            info!(%id, "deleted during the delivery attempt; stays deleted");
            None
        }
        Ok(Settled::Finished | Settled::Held) => None,
        Ok(Settled::Retry(at)) => Some(at),
        Err(e) => {
            warn!(%id, error = %e, "cannot record the delivery attempt");
            // Retried later at the latest; a finished message is delivered again at worst.
            Some(next.unwrap_or_else(|| now_unix() + 300))
        }
    }
}

/// When to try the deferred recipients again; past the maximum lifetime, they fail for
/// good instead (and join `newly_failed`).
fn next_or_expire(
    engine: &Engine,
    id: &QueueId,
    entry: &mut levee_store::QueueEntry,
    newly_failed: &mut Vec<(String, Reply, String)>,
) -> Option<u64> {
    if !entry.recipients.iter().any(|r| r.status == RcptStatus::Deferred) {
        return None;
    }
    let next =
        next_attempt(&engine.retry_policy(), entry.attempts + 1, entry.received_at, now_unix());
    if next.is_none() {
        for r in entry.recipients.iter_mut().filter(|r| r.status == RcptStatus::Deferred) {
            r.status = RcptStatus::Failed;
            let why = format!(
                "delivery time expired; last error: {}",
                r.last_reply.clone().unwrap_or_default()
            );
            info!(%id, rcpt = %r.rcpt, "expired");
            newly_failed.push((r.rcpt.clone(), Reply::with(554, 4, 7, why), String::new()));
        }
    }
    next
}

/// One transaction to the next hop of `domain` for `rcpts`, unless it is known dead:
/// the host tried and each recipient's reply (or the one reply for all).
async fn to_next_hop(
    engine: &Arc<Engine>,
    config: &levee_config::Config,
    domain: &Domain,
    msg: &Outgoing<'_>,
    rcpts: &[String],
) -> (String, Result<Vec<Result<Reply, Reply>>, Reply>) {
    let hop = next_hop(config, domain);
    // Never longer than the first retry interval: a next hop that comes back is tried
    // again as soon as the retry policy would try it.
    let dead_window = config
        .delivery
        .dead_destination_secs
        .duration()
        .min(Duration::from_secs(config.delivery.retry_first_secs.max(1)));
    if let Some(reply) = engine.qmgr.dead_reply(&hop.dest, dead_window) {
        // Known dead: defer at once rather than hold a slot for the connect timeout.
        return (hop.dest.clone(), Err(reply));
    }
    let hosts = match &hop.via {
        Some(Ok(ds)) => resolve_downstream(engine, &ds.host, ds.port).await,
        Some(Err(reply)) => Err(reply.clone()),
        None => resolve_mx(engine, domain).await,
    };
    match hosts {
        Ok(hosts) => {
            let tried = deliver_to_first(engine, &hosts, &hop, msg, rcpts).await;
            let down = match &tried.result {
                Err(reply) if !tried.reached && !reply.is_permanent() => Some(reply.clone()),
                _ => None,
            };
            engine.qmgr.mark(&hop.dest, down);
            (tried.label, tried.result)
        }
        Err(reply) => {
            // No address for a configured next hop is as dead as one that refuses; a
            // domain without a downstream is a config matter.
            if matches!(hop.via, Some(Ok(_)) | None) && reply.is_transient() {
                engine.qmgr.mark(&hop.dest, Some(reply.clone()));
            }
            (domain.to_string(), Err(reply))
        }
    }
}

/// Tells the queue manager, before anything else, which recipients the downstream took.
async fn record_taken(
    engine: &Arc<Engine>,
    id: &QueueId,
    entry: &levee_store::QueueEntry,
    idx: &[usize],
    per: &[Result<Reply, Reply>],
) {
    let taken: Vec<(String, String)> = idx
        .iter()
        .zip(per)
        .filter_map(|(&i, r)| {
            r.as_ref().ok().map(|ok| (entry.recipients[i].rcpt.clone(), ok.to_string()))
        })
        .collect();
    if taken.is_empty() {
        return;
    }
    let (e, rid) = (engine.clone(), id.clone());
    match tokio::task::spawn_blocking(move || e.qmgr.delivered(&rid, &taken)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(%id, error = %e, "cannot record the delivery yet"),
        Err(e) => warn!(%id, error = %e, "cannot record the delivery yet"),
    }
}

/// Where a recipient domain's mail goes: a configured downstream, or the domain's MX
/// for mail Levee writes itself (DSNs, reports) to outside domains.
struct NextHop {
    /// The key of the dead-destination cache: the downstream as configured, or `mx:DOMAIN`.
    dest: String,
    /// `None`: by MX. `Some(Err)`: a filtered domain with no downstream.
    via: Option<Result<levee_config::Downstream, Reply>>,
    tls: TlsPolicy,
    /// With `tls = "verify"`: the CA file and the pin (see `tls::verifying_connector`).
    verify: (Option<std::path::PathBuf>, Option<levee_config::CertPin>),
    source: Option<IpAddr>,
}

fn next_hop(config: &levee_config::Config, domain: &Domain) -> NextHop {
    match config.domain(domain) {
        Some(d) => match &d.downstream {
            Some(ds) => NextHop {
                dest: ds.to_string(),
                via: Some(Ok(ds.clone())),
                tls: d.tls,
                verify: (d.tls_ca.clone(), d.tls_pin),
                source: d.source_address,
            },
            None => NextHop {
                dest: domain.to_string(),
                via: Some(Err(Reply::with(451, 4, 0, "domain has no downstream configured"))),
                tls: d.tls,
                verify: (None, None),
                source: None,
            },
        },
        None => NextHop {
            dest: format!("mx:{domain}"),
            via: None,
            tls: TlsPolicy::Opportunistic,
            verify: (None, None),
            source: None,
        },
    }
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
    let kept: Vec<_>;
    let failed = if backscatter(&config, meta, &sender.to_string()) {
        // A downstream's refusal of mail from a sender that did not authenticate: the
        // sender is most likely forged, and a DSN would land on an innocent (backscatter).
        // Expiry (no host) is this gateway's own failure and is still reported.
        kept = failed.iter().filter(|(_, _, host)| host.is_empty()).cloned().collect();
        let dropped = failed.len() - kept.len();
        info!(id = %meta.id, to = %sender, dropped, "no DSN: outside sender not authenticated (backscatter)");
        if kept.is_empty() {
            return;
        }
        &kept[..]
    } else {
        failed
    };
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

/// Whether a DSN for a downstream's refusal would be backscatter: the sender is outside
/// this gateway's domains, the client was not this host, and neither SPF nor an aligned
/// DKIM signature authenticated the sender's domain.
fn findings(meta: &SpoolMeta) -> Vec<levee_types::Finding> {
    meta.findings.iter().map(|(f, _)| f.clone()).collect()
}

fn backscatter(config: &levee_config::Config, meta: &SpoolMeta, sender: &str) -> bool {
    let Some((_, domain)) = sender.rsplit_once('@') else { return false };
    let ours = Domain::parse(domain).is_ok_and(|d| config.domain(&d).is_some());
    let local = meta.envelope.client_ip.is_loopback();
    !ours && !local && !crate::report::domain_authenticated(domain, Some(domain), &findings(meta))
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
    let Some(resolver) = &engine.outbound.resolver else {
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
        // The domain does not exist: no host will ever take its mail (a DSN to a made-up
        // sender domain fails at once instead of waiting out the maximum lifetime).
        Err(e) if e.is_nx_domain() => {
            return Err(Reply::with(550, 1, 2, format!("{domain} does not exist (NXDOMAIN)")))
        }
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

/// What trying a next hop's hosts came to.
struct Tried {
    /// The last host tried, as `name[addr]`.
    label: String,
    /// Each recipient's reply, or the reply that ended the transaction for all.
    result: Result<Vec<Result<Reply, Reply>>, Reply>,
    /// Some host got as far as a session; `false` means the next hop is down.
    reached: bool,
}

/// Tries the hosts in order until one takes the transaction. A 5xx at connection
/// time (banner, EHLO) is final; anything transient moves on to the next host.
async fn deliver_to_first(
    engine: &Arc<Engine>,
    hosts: &[(SocketAddr, String)],
    hop: &NextHop,
    msg: &Outgoing<'_>,
    rcpts: &[String],
) -> Tried {
    let Outgoing { meta, body, released } = *msg;
    let (tls, source) = (hop.tls, hop.source);
    let verifying = match tls {
        TlsPolicy::Verify => {
            match crate::tls::verifying_connector(hop.verify.0.as_deref(), hop.verify.1) {
                Ok(c) => Some(c),
                Err(e) => {
                    // The next hop is not at fault; the admin's CA file is.
                    let reply = Reply::with(451, 7, 5, format!("cannot verify {}: {e}", hop.dest));
                    return Tried { label: hop.dest.clone(), result: Err(reply), reached: true };
                }
            }
        }
        _ => None,
    };
    let connector = verifying.as_ref().unwrap_or(&engine.outbound.connector);
    let config = engine.config();
    let mut last = Reply::with(451, 4, 4, "no host tried");
    let mut label = String::new();
    let mut reached = false;
    for (addr, name) in hosts {
        label = format!("{name}[{addr}]");
        let opts = ConnectOptions {
            source,
            helo: &config.hostname.0,
            tls,
            tls_name: name,
            connect_timeout: config.delivery.connect_timeout(),
            command_timeout: config.delivery.command_timeout(),
            connector,
        };
        let rcpt_for = (rcpts.len() == 1).then(|| rcpts[0].as_str());
        let trace =
            headers::trace_headers(meta, released, &config.hostname.0, &engine.stamp(), rcpt_for);
        let from = meta.envelope.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default();
        let eight_bit = meta.envelope.body != levee_types::Body::SevenBit;
        // A pooled connection may have been closed by the server while idle: if it
        // fails before any reply, try once more on a fresh one.
        // A verified session is not pooled: another domain on the same host may pin
        // another certificate.
        let poolable = tls != TlsPolicy::Verify;
        let mut pooled = if poolable { engine.outbound.pool.take(*addr, tls) } else { None };
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
                            return Tried { label, result: Err(last), reached: true };
                        }
                        break;
                    }
                },
            };
            reached = true;
            // Set on every use: a pooled client may predate a config change.
            client.set_data_timeout(config.delivery.data_timeout());
            match client
                .send(&from, rcpts, eight_bit, meta.envelope.smtputf8, trace.as_bytes(), body)
                .await
            {
                Ok(outcome) => {
                    if poolable {
                        engine.outbound.pool.put(*addr, tls, client);
                    }
                    return Tried { label, result: Ok(outcome.rcpts), reached };
                }
                Err(e) if reused && !matches!(e, ClientError::Rejected(..)) => continue,
                Err(e) => {
                    warn!(host = %label, error = %e, "transaction failed");
                    last = e.reply();
                    if e.is_permanent() {
                        return Tried { label, result: Err(last), reached };
                    }
                    break;
                }
            }
        }
    }
    Tried { label, result: Err(last), reached }
}

/// What delivery alone uses to reach next hops.
pub(crate) struct Outbound {
    /// The unverified connector (`verify` domains build their own per attempt).
    pub connector: tokio_rustls::TlsConnector,
    pub resolver: Option<hickory_resolver::TokioResolver>,
    pub pool: Pool,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("pool", &self.pool).finish_non_exhaustive()
    }
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
    use levee_store::QueueEntry;
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

    /// A message from `SENDER` to bob@example.test, waiting for delivery; SPF passed for
    /// the sender's domain, so a refusal is bounced to it.
    async fn queued(engine: &Arc<Engine>) -> QueueId {
        queued_with(engine, false, spf_pass()).await
    }

    fn spf_pass() -> Vec<(levee_types::Finding, f64)> {
        let spf = levee_types::Finding::new("SPF_PASS", "spf=pass for sender.example.test");
        vec![(spf, 0.0)]
    }

    async fn queued_with(
        engine: &Arc<Engine>,
        smtputf8: bool,
        findings: Vec<(levee_types::Finding, f64)>,
    ) -> QueueId {
        let data =
            format!("From: {SENDER}\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n");
        let mut envelope =
            crate::tests::incoming_from(SENDER, Vec::new(), &["bob@example.test"]).envelope;
        envelope.smtputf8 = smtputf8;
        let action = levee_types::Action::Accept;
        match engine.enqueue(envelope, data.into_bytes(), action, 0.0, findings).await {
            StoreOutcome::Queued(id, _) => id,
            StoreOutcome::Refused(r) => panic!("not queued: {r}"),
        }
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

    /// One next hop that answers nobody must not hold a delivery slot per message for the
    /// whole connect deadline: after one attempt finds it dead, the others for it are
    /// deferred at once, without a connection, until `dead_destination_secs` have passed.
    #[tokio::test]
    async fn a_dead_next_hop_defers_the_others_at_once_until_its_window_passes() {
        let dir = Scratch::new("deliver-dead");
        let sink = Sink::start(Behaviour::Stall(Step::Banner)).await;
        let tail = "[delivery]\ncommand_timeout_secs = 1\ndead_destination_secs = 3";
        let engine = engine(&dir.0, sink.addr, "", tail);
        let ids = [queued(&engine).await, queued(&engine).await, queued(&engine).await];
        assert!(attempt_in_time(&engine, &ids[0]).await.is_some(), "deferred");
        assert_eq!(sink.connections(), 1);
        for id in &ids[1..] {
            let start = std::time::Instant::now();
            assert!(attempt_in_time(&engine, id).await.is_some(), "deferred");
            assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
            let reply = entry(&engine, id).unwrap().recipients[0].last_reply.clone().unwrap();
            assert!(reply.starts_with("451 4.4.4") && reply.contains("not reachable"), "{reply}");
        }
        assert_eq!(sink.connections(), 1, "no connection while the next hop is dead");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(attempt_in_time(&engine, &ids[1]).await.is_some());
        assert_eq!(sink.connections(), 2, "tried again once the window passed");
    }

    /// A next hop that answers is never cached as dead, whatever it answers.
    #[tokio::test]
    async fn a_next_hop_that_refuses_mail_is_not_dead() {
        let dir = Scratch::new("deliver-not-dead");
        let sink = Sink::start(Behaviour::Refuse(Step::Mail, 451)).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let (a, b) = (queued(&engine).await, queued(&engine).await);
        assert!(attempt_in_time(&engine, &a).await.is_some());
        assert!(attempt_in_time(&engine, &b).await.is_some());
        let reply = entry(&engine, &b).unwrap().recipients[0].last_reply.clone().unwrap();
        assert!(reply.starts_with("451") && !reply.contains("not reachable"), "{reply}");
    }

    /// Issue 12: a downstream 5xx at RCPT for mail from an outside sender that did not
    /// authenticate bounced to that (likely forged) sender: backscatter.
    #[tokio::test]
    async fn a_refusal_of_unauthenticated_outside_mail_is_not_bounced() {
        let dir = Scratch::new("deliver-backscatter");
        let sink = Sink::start(Behaviour::Refuse(Step::Rcpt, 550)).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let spf_fail = levee_types::Finding::new("SPF_FAIL", "spf=fail for sender.example.test");
        let id = queued_with(&engine, false, vec![(spf_fail, 2.0)]).await;
        assert_eq!(attempt_in_time(&engine, &id).await, None);
        assert_eq!(entry(&engine, &id), None, "the failed recipient leaves the queue");
        assert!(engine.store.queue_all().unwrap().is_empty(), "and no DSN was queued");
    }

    /// Issue 12: a UTF-8 envelope went to a next hop that does not offer SMTPUTF8.
    #[tokio::test]
    async fn a_utf8_envelope_is_bounced_rather_than_sent_without_smtputf8() {
        let dir = Scratch::new("deliver-utf8");
        let sink = Sink::start(Behaviour::Accept).await;
        let engine = engine(&dir.0, sink.addr, "", "");
        let id = queued_with(&engine, true, spf_pass()).await;
        assert_eq!(attempt_in_time(&engine, &id).await, None);
        assert_eq!(sink.received(), 0, "nothing sent without SMTPUTF8");
        let log = engine.store.log_get(&id).unwrap().unwrap();
        let reply = &log.deliveries[0].reply;
        assert!(reply.starts_with("553 5.6.7") && reply.contains("SMTPUTF8"), "{reply}");
        let left = engine.store.queue_all().unwrap();
        assert_eq!(left.len(), 1, "a DSN to the sender: {left:?}");
        assert_eq!(left[0].recipients[0].rcpt, SENDER);
    }
}
