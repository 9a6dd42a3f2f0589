//! The spool directory: `tmp/` for files being written, `queue/` for messages that are
//! safe, `corrupt/` for files that failed their checks (kept for a person to look at).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use levee_types::QueueId;
use nix::fcntl::{Flock, FlockArg};

use crate::format;
use crate::{SpoolError, SpoolMeta};

/// Bits of a queue id below the millisecond timestamp: room for 4 million ids per
/// millisecond, and 42 bits of milliseconds last until the year 2109.
const SEQ_BITS: u32 = 22;

/// What `Spool::open` found in the queue.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every valid queued message, oldest (lowest id) first.
    pub messages: Vec<SpoolMeta>,
    /// Files that failed their checks and were moved to `corrupt/`.
    pub corrupt: Vec<CorruptFile>,
}

/// A file moved out of the queue because it could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptFile {
    /// Its name in `queue/`.
    pub name: String,
    /// Where it is now.
    pub moved_to: PathBuf,
    pub reason: String,
}

/// The message spool. Every method is blocking std I/O and `&self`, so one `Spool` in an
/// `Arc` serves all threads.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    /// The last id handed out; ids are `max(now_ms << SEQ_BITS, last + 1)`.
    last_id: AtomicU64,
    /// Held for the spool's lifetime: a second process would otherwise empty our `tmp/`.
    _lock: Flock<File>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io { op, path: path.to_path_buf(), source }
}

fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", path))
}

/// Creates `dir` (and its parents) if needed and makes it 0700: the mode is set after
/// creation, so neither the umask nor an older install's 0755 leaves mail readable.
fn private_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", dir))
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir`, removes debris of interrupted writes
    /// from `tmp/`, checks every file in `queue/` and moves the ones that fail to
    /// `corrupt/`.
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let tmp = dir.join("tmp");
        let queue = dir.join("queue");
        let corrupt = dir.join("corrupt");
        for d in [dir, &tmp, &queue, &corrupt] {
            private_dir(d)?;
        }
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            tmp,
            queue,
            corrupt,
            last_id: AtomicU64::new(0),
            _lock: lock,
        };
        spool.clean_tmp()?;
        let recovered = spool.recover()?;
        spool.seed_ids()?;
        Ok((spool, recovered))
    }

    fn clean_tmp(&self) -> Result<(), SpoolError> {
        for entry in fs::read_dir(&self.tmp).map_err(io_err("read directory", &self.tmp))? {
            let entry = entry.map_err(io_err("read directory", &self.tmp))?;
            let path = entry.path();
            // Files in tmp/ were never acknowledged (the 250 comes only after the rename),
            // so removing them loses nothing the client was promised.
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err("remove", &path))?;
            tracing::info!(path = %path.display(), "removed debris of an interrupted spool write");
        }
        Ok(())
    }

    fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut rec = Recovered::default();
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.queue).map_err(io_err("read directory", &self.queue))? {
            let entry = entry.map_err(io_err("read directory", &self.queue))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let shown = name.to_string_lossy().into_owned();
            let checked = match name.to_str().and_then(QueueId::parse) {
                None => Err("file name is not a queue id".to_string()),
                Some(id) => self.check_file(&id, false).map(|(m, _)| m),
            };
            match checked {
                Ok(meta) => rec.messages.push(meta),
                Err(reason) => {
                    let moved_to = self.move_name_to_corrupt(&name, &reason)?;
                    rec.corrupt.push(CorruptFile { name: shown, moved_to, reason });
                }
            }
        }
        if !rec.corrupt.is_empty() {
            sync_dir(&self.queue)?;
            sync_dir(&self.corrupt)?;
        }
        Ok(rec)
    }

    /// Starts the id sequence after every id already on disk, so a clock that went back
    /// across a restart cannot reissue a queued message's id.
    fn seed_ids(&mut self) -> Result<(), SpoolError> {
        let mut max = 0u64;
        for d in [&self.queue, &self.corrupt] {
            for entry in fs::read_dir(d).map_err(io_err("read directory", d))? {
                let entry = entry.map_err(io_err("read directory", d))?;
                if let Some(n) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.get(..16))
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    max = max.max(n);
                }
            }
        }
        *self.last_id.get_mut() = max;
        Ok(())
    }

    /// A new queue id: milliseconds since the epoch in the high bits and a sequence in
    /// the low bits, so ids sort by arrival and never repeat within this spool.
    pub fn new_id(&self, now: SystemTime) -> QueueId {
        let ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let floor = ms << SEQ_BITS;
        let mut prev = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = floor.max(prev + 1);
            match self.last_id.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId::from_u64(next),
                Err(actual) => prev = actual,
            }
        }
    }

    fn tmp_path(&self, id: &QueueId) -> PathBuf {
        self.tmp.join(id.as_str())
    }

    fn queue_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(id.as_str())
    }

    /// Writes the message to `tmp/ID`, fsyncs it and links it into `queue/ID`. The
    /// directory is not fsynced here: [`crate::GroupCommit`] does that once for many
    /// writers. On any failure nothing is left in `tmp/` or `queue/`.
    ///
    /// The move uses link + unlink rather than rename so an existing `queue/ID` is never
    /// replaced: a duplicate id is an error, not a silently lost message.
    pub fn write(&self, meta: &SpoolMeta, body: &[u8]) -> Result<(), SpoolError> {
        let tmp = self.tmp_path(&meta.id);
        // create_new: a tmp file of the same id belongs to someone else; leave it alone.
        // Mail is private: 0600 whatever the umask (it can only take bits away).
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let result = Self::write_tmp(file, &tmp, meta, body).and_then(|()| {
            let dest = self.queue_path(&meta.id);
            fs::hard_link(&tmp, &dest).map_err(io_err("link into queue", &dest))
        });
        // The tmp name is gone either way: on success the queue link holds the data, on
        // failure the message was never acknowledged. A failed removal of an already
        // linked file would only leave debris that the next open cleans.
        let removed = fs::remove_file(&tmp);
        if result.is_ok() {
            if let Err(e) = removed {
                tracing::warn!(path = %tmp.display(), error = %e, "could not remove tmp link");
            }
        }
        result
    }

    fn write_tmp(file: File, tmp: &Path, meta: &SpoolMeta, body: &[u8]) -> Result<(), SpoolError> {
        let writer = BufWriter::with_capacity(64 * 1024, file);
        let mut writer = format::encode(writer, meta, body).map_err(io_err("write", tmp))?;
        writer.flush().map_err(io_err("write", tmp))?;
        let file = writer.into_inner().map_err(|e| io_err("write", tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", tmp))
    }

    /// Makes the renames into `queue/` durable.
    pub fn sync_queue_dir(&self) -> Result<(), SpoolError> {
        sync_dir(&self.queue)
    }

    fn check_file(&self, id: &QueueId, keep_body: bool) -> Result<(SpoolMeta, Vec<u8>), String> {
        let path = self.queue_path(id);
        let file = File::open(&path).map_err(|e| format!("open: {e}"))?;
        let (meta, body) = format::decode(BufReader::with_capacity(64 * 1024, file), keep_body)?;
        if &meta.id != id {
            return Err(format!("file holds id {} under the name {id}", meta.id));
        }
        Ok((meta, body))
    }

    fn read_checked(
        &self,
        id: &QueueId,
        keep_body: bool,
    ) -> Result<(SpoolMeta, Vec<u8>), SpoolError> {
        let path = self.queue_path(id);
        if !path.exists() {
            return Err(SpoolError::NotFound(id.clone()));
        }
        self.check_file(id, keep_body).map_err(|reason| SpoolError::Corrupt { path, reason })
    }

    /// Reads a queued message and verifies its checksum. A [`SpoolError::Corrupt`] file
    /// should be handed to [`Spool::move_to_corrupt`].
    pub fn read(&self, id: &QueueId) -> Result<(SpoolMeta, Vec<u8>), SpoolError> {
        self.read_checked(id, true)
    }

    /// Like [`Spool::read`] without keeping the body (still checksummed).
    pub fn read_meta(&self, id: &QueueId) -> Result<SpoolMeta, SpoolError> {
        self.read_checked(id, false).map(|(m, _)| m)
    }

    /// Size of the queue file (for logs and size limits; includes a few bytes of records).
    pub fn file_size(&self, id: &QueueId) -> Result<u64, SpoolError> {
        let path = self.queue_path(id);
        fs::metadata(&path).map(|m| m.len()).map_err(io_err("stat", &path))
    }

    /// Removes a message after final delivery or bounce. The directory is not fsynced: if
    /// the removal is lost in a crash the message is delivered again (never lost).
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.queue_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SpoolError::NotFound(id.clone()))
            }
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Moves a queued file that failed its checks to `corrupt/` and logs why.
    pub fn move_to_corrupt(&self, id: &QueueId, reason: &str) -> Result<PathBuf, SpoolError> {
        let to = self.move_name_to_corrupt(id.as_str().as_ref(), reason)?;
        sync_dir(&self.queue)?;
        sync_dir(&self.corrupt)?;
        Ok(to)
    }

    fn move_name_to_corrupt(
        &self,
        name: &std::ffi::OsStr,
        reason: &str,
    ) -> Result<PathBuf, SpoolError> {
        let from = self.queue.join(name);
        // Never overwrite an earlier corrupt file of the same name: it is evidence.
        let mut to = self.corrupt.join(name);
        let mut n = 1;
        while to.exists() {
            let mut alt = name.to_os_string();
            alt.push(format!(".{n}"));
            to = self.corrupt.join(alt);
            n += 1;
        }
        fs::rename(&from, &to).map_err(io_err("move to corrupt", &from))?;
        tracing::error!(
            file = %from.display(),
            moved_to = %to.display(),
            reason,
            "queue file failed its checks and was moved to corrupt/; it will not be delivered"
        );
        Ok(to)
    }

    /// Bytes available to an unprivileged writer on the spool's file system.
    pub fn free_bytes(&self) -> Result<u64, SpoolError> {
        let st = nix::sys::statvfs::statvfs(&self.dir).map_err(|errno| SpoolError::Io {
            op: "statvfs",
            path: self.dir.clone(),
            source: errno.into(),
        })?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ids of every file now in `queue/` (unchecked), oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.queue).map_err(io_err("read directory", &self.queue))? {
            let entry = entry.map_err(io_err("read directory", &self.queue))?;
            if let Some(id) = entry.file_name().to_str().and_then(QueueId::parse) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample_meta;
    use crate::testutil::TempDir;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Issue 12: spool files were 0644 and directories 0755 under the usual umask.
    #[test]
    fn the_spool_is_private_whatever_the_umask() {
        use nix::sys::stat::{umask, Mode};
        let d = TempDir::new("private");
        let old = umask(Mode::from_bits_truncate(0o022));
        let dir = d.path().join("spool");
        // An older install's spool directory, as the umask made it.
        fs::create_dir_all(dir.join("queue")).unwrap();
        fs::set_permissions(dir.join("queue"), fs::Permissions::from_mode(0o755)).unwrap();
        let (spool, _) = Spool::open(&dir).unwrap();
        let m = write_one(&spool, 1_700_000_000, b"private");
        umask(old);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for sub in ["", "tmp", "queue", "corrupt"] {
            assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/");
        }
        assert_eq!(mode(&dir.join("lock")), 0o600);
        assert_eq!(mode(&spool.queue_path(&m.id)), 0o600);
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn write_one(spool: &Spool, now: u64, body: &[u8]) -> SpoolMeta {
        let meta = sample_meta(spool.new_id(t(now)));
        spool.write(&meta, body).unwrap();
        meta
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_tmp() {
        let d = TempDir::new("rt");
        let (spool, rec) = Spool::open(d.path()).unwrap();
        assert!(rec.messages.is_empty() && rec.corrupt.is_empty());
        let body = b"Subject: x\r\n\r\n\0\xff body\r\n".to_vec();
        let meta = write_one(&spool, 1_700_000_000, &body);
        spool.sync_queue_dir().unwrap();
        assert_eq!(files_in(&d.path().join("queue")), [meta.id.to_string()]);
        assert!(files_in(&d.path().join("tmp")).is_empty());
        let (m, b) = spool.read(&meta.id).unwrap();
        assert_eq!((m.envelope, b), (meta.envelope.clone(), body));
        assert_eq!(spool.read_meta(&meta.id).unwrap().id, meta.id);
        assert_eq!(spool.list().unwrap(), std::slice::from_ref(&meta.id));
        spool.remove(&meta.id).unwrap();
        assert!(matches!(spool.read(&meta.id), Err(SpoolError::NotFound(_))));
        assert!(matches!(spool.remove(&meta.id), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn reopen_recovers_every_message_in_id_order() {
        let d = TempDir::new("recover");
        let mut ids = Vec::new();
        {
            let (spool, _) = Spool::open(d.path()).unwrap();
            for i in 0..5 {
                ids.push(write_one(&spool, 1_700_000_000 + i, format!("m{i}").as_bytes()).id);
            }
            spool.sync_queue_dir().unwrap();
        }
        let (spool, rec) = Spool::open(d.path()).unwrap();
        assert!(rec.corrupt.is_empty());
        let got: Vec<QueueId> = rec.messages.iter().map(|m| m.id.clone()).collect();
        assert_eq!(got, ids);
        assert_eq!(spool.read(&ids[3]).unwrap().1, b"m3");
    }

    #[test]
    fn tmp_debris_is_removed_at_open() {
        let d = TempDir::new("debris");
        fs::create_dir_all(d.path().join("tmp/leftover-dir")).unwrap();
        fs::write(d.path().join("tmp/0000000000000001"), b"half a message").unwrap();
        let (_spool, rec) = Spool::open(d.path()).unwrap();
        assert!(files_in(&d.path().join("tmp")).is_empty());
        assert!(rec.messages.is_empty() && rec.corrupt.is_empty());
    }

    #[test]
    fn a_file_truncated_at_any_length_is_moved_to_corrupt() {
        let d = TempDir::new("torn");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let meta = write_one(&spool, 1_700_000_000, b"a body that will be torn\r\n");
        let path = d.path().join("queue").join(meta.id.as_str());
        let full = fs::read(&path).unwrap();
        drop(spool);
        let mut tried = 0;
        for len in 0..full.len() {
            fs::write(&path, &full[..len]).unwrap();
            let (spool, rec) = Spool::open(d.path()).unwrap();
            assert!(rec.messages.is_empty(), "truncated at {len} was recovered");
            assert_eq!(rec.corrupt.len(), 1);
            assert_eq!(rec.corrupt[0].name, meta.id.as_str());
            assert!(rec.corrupt[0].moved_to.exists());
            assert!(!path.exists());
            assert!(matches!(spool.read(&meta.id), Err(SpoolError::NotFound(_))));
            tried += 1;
        }
        assert_eq!(tried, full.len());
        // Earlier corrupt files are kept, never overwritten.
        assert_eq!(files_in(&d.path().join("corrupt")).len(), full.len());
        fs::write(&path, &full).unwrap();
        let (_, rec) = Spool::open(d.path()).unwrap();
        assert_eq!(rec.messages.len(), 1);
    }

    #[test]
    fn a_flipped_byte_makes_read_fail_and_open_move_it() {
        let d = TempDir::new("flip");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let meta = write_one(&spool, 1_700_000_000, b"body");
        let good = write_one(&spool, 1_700_000_001, b"good");
        let path = d.path().join("queue").join(meta.id.as_str());
        let mut bytes = fs::read(&path).unwrap();
        let i = bytes.len() - 13 - 2; // inside the body, before the 13-byte end record
        bytes[i] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        match spool.read(&meta.id) {
            Err(SpoolError::Corrupt { reason, .. }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
        assert!(spool.read_meta(&meta.id).is_err());
        drop(spool);
        let (_, rec) = Spool::open(d.path()).unwrap();
        assert_eq!(rec.messages.iter().map(|m| &m.id).collect::<Vec<_>>(), [&good.id]);
        assert_eq!(rec.corrupt.len(), 1);
        assert!(rec.corrupt[0].reason.contains("checksum"));
    }

    #[test]
    fn misnamed_files_are_not_trusted() {
        let d = TempDir::new("name");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let meta = write_one(&spool, 1_700_000_000, b"body");
        let queue = d.path().join("queue");
        fs::rename(queue.join(meta.id.as_str()), queue.join("00000000000000AA")).unwrap();
        fs::write(queue.join("notes.txt"), b"x").unwrap();
        drop(spool);
        let (_, rec) = Spool::open(d.path()).unwrap();
        assert!(rec.messages.is_empty());
        let mut reasons: Vec<&str> = rec.corrupt.iter().map(|c| c.reason.as_str()).collect();
        reasons.sort();
        assert!(reasons[0].contains("under the name"), "{reasons:?}");
        assert!(reasons[1].contains("not a queue id"), "{reasons:?}");
    }

    #[test]
    fn move_to_corrupt_takes_a_file_out_of_the_queue() {
        let d = TempDir::new("mv");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let meta = write_one(&spool, 1_700_000_000, b"body");
        let to = spool.move_to_corrupt(&meta.id, "failed at delivery").unwrap();
        assert!(to.starts_with(d.path().join("corrupt")));
        assert!(spool.list().unwrap().is_empty());
    }

    #[test]
    fn ids_are_unique_ordered_and_survive_a_clock_going_back() {
        let d = TempDir::new("ids");
        let last;
        {
            let (spool, _) = Spool::open(d.path()).unwrap();
            let mut prev = spool.new_id(t(1_700_000_000));
            for i in 0..10_000u64 {
                // Same instant many times, then later instants: strictly increasing.
                let id = spool.new_id(t(1_700_000_000 + i / 1000));
                assert!(id > prev, "{id} after {prev}");
                prev = id;
            }
            let later = spool.new_id(t(1_800_000_000));
            assert!(later > prev);
            let meta = sample_meta(later.clone());
            spool.write(&meta, b"x").unwrap();
            last = later;
        }
        let (spool, _) = Spool::open(d.path()).unwrap();
        let after_restart = spool.new_id(t(1_600_000_000));
        assert!(after_restart > last, "clock went back but the id did not repeat");
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let d = TempDir::new("idthreads");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let spool = std::sync::Arc::new(spool);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = spool.clone();
                std::thread::spawn(move || {
                    (0..2000).map(|_| s.new_id(t(1_700_000_000))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<QueueId> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_duplicate_id_never_replaces_a_queued_message() {
        let d = TempDir::new("dup");
        let (spool, _) = Spool::open(d.path()).unwrap();
        let meta = write_one(&spool, 1_700_000_000, b"first");
        assert!(spool.write(&meta, b"second").is_err());
        assert_eq!(spool.read(&meta.id).unwrap().1, b"first");
        assert!(files_in(&d.path().join("tmp")).is_empty());
    }

    #[test]
    fn a_second_open_of_the_same_spool_is_refused() {
        let d = TempDir::new("lock");
        let (_spool, _) = Spool::open(d.path()).unwrap();
        assert!(matches!(Spool::open(d.path()), Err(SpoolError::Locked(_))));
    }

    #[test]
    fn free_bytes_reports_the_file_system() {
        let d = TempDir::new("free");
        let (spool, _) = Spool::open(d.path()).unwrap();
        assert!(spool.free_bytes().unwrap() > 0);
        assert_eq!(spool.dir(), d.path());
    }

    /// A full file system: write must fail cleanly (no panic, nothing left behind) and
    /// say so with `is_full`. Needs root to mount a 1 MiB tmpfs; skipped otherwise.
    #[test]
    fn a_full_disk_fails_the_write_and_leaves_nothing() {
        let d = TempDir::new("full");
        let mnt = d.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _guard = Unmount(&mnt);

        let (spool, _) = Spool::open(&mnt).unwrap();
        let small = write_one(&spool, 1_700_000_000, b"fits");
        let big = vec![b'x'; 2 << 20];
        let meta = sample_meta(spool.new_id(t(1_700_000_001)));
        let err = spool.write(&meta, &big).expect_err("2 MiB cannot fit in 1 MiB");
        assert!(err.is_full(), "{err}");
        assert_eq!(files_in(&mnt.join("queue")), [small.id.to_string()]);
        assert!(files_in(&mnt.join("tmp")).is_empty());
        // Space came back with the tmp file: the spool still works.
        let again = write_one(&spool, 1_700_000_002, b"fits too");
        spool.sync_queue_dir().unwrap();
        assert_eq!(spool.read(&again.id).unwrap().1, b"fits too");
    }
}
