//! What the console and the scheduler do to mail already held: release, delete and
//! report quarantined messages, learn from them, write Levee's own mail, and change
//! the configuration through the one validating path.

use crate::{now_unix, Engine, RelayError, StoreOutcome};
use levee_spool::SpoolMeta;
use levee_store::{QuarantineEntry, Release};
use levee_types::list::{ListEntry, ListKind, ListScope, Matcher};
use levee_types::{Action, Address, Body, Envelope, QueueId};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The store blob holding the Bayes model.
pub const BAYES_BLOB: &str = "bayes";
/// Rule weights fitted by `levee train` (`levee_filter::fit`), over the stock scores.
pub const RULE_WEIGHTS_BLOB: &str = "rule_weights";

/// Held by every writer of the config file from its read to its rename. One for the
/// process rather than one per engine because it guards the file, which a process has
/// one of.
static CONFIG_WRITER: Mutex<()> = Mutex::new(());

/// Replaces `path` with `bytes` so that a reader, or a crash, finds the old file or the
/// new one and never a mix: a temp file of this write's own in the same directory (a
/// shared temp name lets two writers interleave), fsynced, renamed over, then the
/// directory fsynced so the rename itself is durable. Mode 0600: only the engine's user
/// (and root) need to read it.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the config path names no file")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The new file is in place; a failed directory sync only weakens crash safety, and
    // failing the edit now would leave the file and the running config apart.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, "cannot sync the config directory");
    }
    Ok(())
}

/// The voter name of a staff action: `admin:<name>`.
fn admin_voter(by: &str) -> String {
    if by.starts_with("admin:") {
        by.to_owned()
    } else {
        format!("admin:{by}")
    }
}

/// The quarantine index record of a message about to be held.
pub fn quarantine_entry(meta: &SpoolMeta, data: &[u8], days: u64) -> QuarantineEntry {
    let parsed = mail_parser::MessageParser::default().parse_headers(data);
    let subject = parsed.as_ref().and_then(|m| m.subject()).unwrap_or("").to_string();
    let from_header = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|f| f.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .unwrap_or_default();
    let env = &meta.envelope;
    QuarantineEntry {
        id: meta.id.clone(),
        received_at: meta.received_at,
        expires_at: meta.received_at + days * 86_400,
        client_ip: env.client_ip.to_string(),
        mail_from: env.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        rcpt_to: env.rcpt_to.iter().map(|a| a.to_string()).collect(),
        from_header,
        subject,
        size: data.len() as u64,
        score: meta.score,
        action: meta.action.into(),
        findings: meta
            .findings
            .iter()
            .map(|(f, w)| (f.symbol.clone(), f.detail.clone(), *w))
            .collect(),
    }
}

impl Engine {
    /// The raw message as received (for the safe viewer and downloads).
    pub async fn message_bytes(&self, id: &QueueId) -> Result<Vec<u8>, RelayError> {
        let spool = self.spool.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || spool.read(&id).map(|(_, body)| body))
            .await
            .map_err(|e| RelayError::Io(std::io::Error::other(e)))?
            .map_err(RelayError::from)
    }

    /// Lets a quarantined message go for everyone (staff): the release is an admin's vote for
    /// ham (`admin:<by>`), optionally its sender is allow-listed for each of its recipients,
    /// and it is delivered through the normal queue.
    pub async fn quarantine_release(
        &self,
        id: &QueueId,
        allow_sender: bool,
        by: &str,
    ) -> Result<(), RelayError> {
        let body = self.message_bytes(id).await?;
        self.vote_quietly(&admin_voter(by), &body, false).await;
        self.release_whole(id, allow_sender, by).await
    }

    /// A vote that must not stop the action it came with (the release or report happens
    /// whatever learning makes of it).
    async fn vote_quietly(&self, voter: &str, body: &[u8], spam: bool) {
        if let Err(e) = self.learn_vote(voter, body, spam).await {
            warn!(voter, spam, error = %e, "vote not recorded");
        }
    }

    async fn release_whole(
        &self,
        id: &QueueId,
        allow_sender: bool,
        by: &str,
    ) -> Result<(), RelayError> {
        let Some(q) = self.store.quarantine_get(id)? else {
            return Err(RelayError::NotFound(id.clone()));
        };
        if self.store.queue_get(id)?.is_none() {
            return Err(RelayError::NotFound(id.clone()));
        }
        if allow_sender && !q.mail_from.is_empty() {
            for rcpt in &q.rcpt_to {
                let entry = ListEntry {
                    kind: ListKind::Allow,
                    matcher: Matcher::Sender(q.mail_from.to_ascii_lowercase()),
                    scope: ListScope::Recipient(rcpt.to_ascii_lowercase()),
                    // a forged copy of the released sender must not ride on this entry
                    unauthenticated: false,
                };
                self.add_list_entry(&entry, "released from quarantine", by)?;
            }
        }
        // in one step on the entry as stored: a delete meanwhile is not undone
        let release = Release { by: by.to_string(), verdict: q.action.clone() };
        if !self.qmgr.release(id, release, now_unix())? {
            return Err(RelayError::NotFound(id.clone()));
        }
        info!(%id, by, allow_sender, "released from quarantine");
        self.retry_now(id.clone());
        Ok(())
    }

    /// Deletes a held or queued message for good.
    pub async fn quarantine_delete(&self, id: &QueueId, by: &str) -> Result<(), RelayError> {
        if self.store.quarantine_get(id)?.is_none() {
            return Err(RelayError::NotFound(id.clone()));
        }
        self.remove_message(id).await?;
        info!(%id, by, "deleted from quarantine");
        Ok(())
    }

    /// Releases a held message for some of its recipients only (an end user acts for
    /// their own addresses, never for the others on the same message): each of those
    /// recipients votes for ham (their own verdicts follow at once, the global model only
    /// through the validated path), a copy goes to them through the queue, and the rest
    /// stays held.
    pub async fn quarantine_release_for(
        self: &Arc<Self>,
        id: &QueueId,
        only: &[String],
        by: &str,
    ) -> Result<(), RelayError> {
        let (q, mine) = self.split_recipients(id, only)?;
        let body = self.message_bytes(id).await?;
        for rcpt in &mine {
            self.vote_quietly(&rcpt.to_ascii_lowercase(), &body, false).await;
        }
        if mine.len() == q.rcpt_to.len() {
            return self.release_whole(id, false, by).await;
        }
        let meta = {
            let spool = self.spool.clone();
            let rid = id.clone();
            tokio::task::spawn_blocking(move || spool.read_meta(&rid))
                .await
                .map_err(|e| RelayError::Io(std::io::Error::other(e)))??
        };
        let mut envelope = meta.envelope.clone();
        envelope.rcpt_to.retain(|a| mine.iter().any(|m| m.eq_ignore_ascii_case(&a.to_string())));
        let verdict = levee_types::Verdict {
            action: Action::Accept,
            score: meta.score,
            findings: meta.findings,
        };
        let release = Release { by: by.to_string(), verdict: meta.action.into() };
        match self.enqueue_copies(vec![(envelope, verdict)], body, Some(release)).await {
            StoreOutcome::Queued(..) => {}
            StoreOutcome::Refused(r) => {
                return Err(RelayError::Io(std::io::Error::other(r.to_string())))
            }
        }
        self.drop_recipients(id, &mine)?;
        info!(%id, by, rcpts = %mine.join(","), "released from quarantine for some recipients");
        Ok(())
    }

    /// Deletes a held message for some of its recipients; the message goes when
    /// no recipient is left.
    pub async fn quarantine_delete_for(
        &self,
        id: &QueueId,
        only: &[String],
        by: &str,
    ) -> Result<(), RelayError> {
        let (q, mine) = self.split_recipients(id, only)?;
        if mine.len() == q.rcpt_to.len() {
            return self.quarantine_delete(id, by).await;
        }
        self.drop_recipients(id, &mine)?;
        info!(%id, by, rcpts = %mine.join(","), "deleted from quarantine for some recipients");
        Ok(())
    }

    /// The quarantine record and which of its recipients are in `only`.
    fn split_recipients(
        &self,
        id: &QueueId,
        only: &[String],
    ) -> Result<(QuarantineEntry, Vec<String>), RelayError> {
        let q = self.store.quarantine_get(id)?.ok_or_else(|| RelayError::NotFound(id.clone()))?;
        let mine: Vec<String> = q
            .rcpt_to
            .iter()
            .filter(|r| only.iter().any(|o| o.eq_ignore_ascii_case(r)))
            .cloned()
            .collect();
        if mine.is_empty() {
            return Err(RelayError::NotFound(id.clone()));
        }
        Ok((q, mine))
    }

    fn drop_recipients(&self, id: &QueueId, gone: &[String]) -> Result<(), RelayError> {
        if !self.qmgr.drop_recipients(id, gone)? {
            return Err(RelayError::NotFound(id.clone()));
        }
        Ok(())
    }

    /// Deletes a message from the delivery queue (it will not be delivered).
    pub async fn queue_delete(&self, id: &QueueId) -> Result<(), RelayError> {
        if self.store.queue_get(id)?.is_none() {
            return Err(RelayError::NotFound(id.clone()));
        }
        self.remove_message(id).await
    }

    async fn remove_message(&self, id: &QueueId) -> Result<(), RelayError> {
        self.qmgr.remove(id).await
    }

    /// "Report as spam" by staff: an admin's vote for spam (the message stays held).
    pub async fn report_spam(&self, id: &QueueId, by: &str) -> Result<(), RelayError> {
        let body = self.message_bytes(id).await?;
        self.learn_vote(&admin_voter(by), &body, true).await.map(|_| ())
    }

    /// "Report as spam" by an end user: a vote for spam by each of their addresses among the
    /// message's recipients (the message stays held).
    pub async fn report_spam_for(&self, id: &QueueId, only: &[String]) -> Result<(), RelayError> {
        let (_, mine) = self.split_recipients(id, only)?;
        let body = self.message_bytes(id).await?;
        for rcpt in &mine {
            self.learn_vote(&rcpt.to_ascii_lowercase(), &body, true).await?;
        }
        Ok(())
    }

    /// Adds an allow/block entry and makes it effective at once.
    pub fn add_list_entry(
        &self,
        entry: &ListEntry,
        note: &str,
        by: &str,
    ) -> Result<u64, RelayError> {
        let id = self.store.list_add(entry, note, by, now_unix())?;
        if entry.unauthenticated {
            warn!(%entry, by, "allow entry applies to unauthenticated mail: forged senders pass too");
        }
        self.reload_lists()?;
        Ok(id)
    }

    pub fn remove_list_entry(&self, id: u64) -> Result<bool, RelayError> {
        let removed = self.store.list_remove(id)?;
        self.reload_lists()?;
        Ok(removed)
    }

    /// Re-reads the lists from the store.
    pub fn reload_lists(&self) -> Result<(), RelayError> {
        let lists = self.store.list_entries()?;
        let lists = Arc::new(lists);
        self.runtime.update(|s| crate::snapshot::Snapshot { lists, ..s.clone() });
        Ok(())
    }

    /// Queues mail Levee writes itself (reports, digests) from `from` (or `<>`).
    pub async fn send_mail(
        self: &Arc<Self>,
        from: Option<Address>,
        to: Vec<Address>,
        data: Vec<u8>,
    ) -> Result<QueueId, RelayError> {
        let config = self.config();
        let envelope = Envelope {
            mail_from: from,
            rcpt_to: to,
            helo: config.hostname.0.clone(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_name: Some(config.hostname.0.clone()),
            tls: false,
            body: if data.iter().any(|b| *b >= 0x80) { Body::EightBitMime } else { Body::SevenBit },
            smtputf8: false,
            declared_size: None,
        };
        match self.enqueue(envelope, data, Action::Accept, 0.0, Vec::new()).await {
            StoreOutcome::Queued(id, _) => Ok(id),
            StoreOutcome::Refused(reply) => {
                Err(RelayError::Io(std::io::Error::other(reply.to_string())))
            }
        }
    }

    /// Records where the config file lives, for [`Engine::update_config`].
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        let _ = self.config_path.set(path);
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.get().map(|p| p.as_path())
    }

    /// Validates new config text by the same path as start-up, writes it atomically
    /// and switches to it. On any error the running config stays.
    pub fn update_config(&self, text: &str) -> Result<(), RelayError> {
        let path = self.config_path().ok_or(RelayError::NoConfigFile)?;
        let _writer = CONFIG_WRITER.lock().unwrap_or_else(|p| p.into_inner());
        self.install_config(path, text)
    }

    /// Reads the config file, lets `edit` turn its text into new text, and installs
    /// that like [`Engine::update_config`], all under the one writer lock: an edit that
    /// read the file before another edit's write would otherwise undo that edit.
    pub fn edit_config<E: From<RelayError>>(
        &self,
        edit: impl FnOnce(&str) -> Result<String, E>,
    ) -> Result<(), E> {
        let path = self.config_path().ok_or(RelayError::NoConfigFile)?;
        let _writer = CONFIG_WRITER.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(path).map_err(RelayError::from)?;
        let text = edit(&text)?;
        Ok(self.install_config(path, &text)?)
    }

    /// Validates, writes and switches; the caller holds [`CONFIG_WRITER`], so the
    /// order of reloads is the order of writes.
    fn install_config(&self, path: &Path, text: &str) -> Result<(), RelayError> {
        let config = levee_config::Config::parse(text, &path.display().to_string())?;
        write_replacing(path, text.as_bytes())?;
        self.reload(config);
        info!(path = %path.display(), "config updated");
        Ok(())
    }

    /// Deletes quarantined messages whose hold has expired.
    pub async fn expire_quarantine(&self) -> usize {
        let ids = match self.store.quarantine_expired(now_unix()) {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "cannot scan the quarantine");
                return 0;
            }
        };
        let mut n = 0;
        for id in ids {
            match self.remove_message(&id).await {
                Ok(()) => n += 1,
                Err(e) => warn!(%id, error = %e, "cannot expire a quarantined message"),
            }
        }
        if n > 0 {
            info!(expired = n, "quarantine expired");
        }
        n
    }
}
