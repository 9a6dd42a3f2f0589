//! The spool directory: `tmp/` for files being written, `queue/` for messages that are
//! safe, `corrupt/` for files that failed their checks (kept for a person to look at).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
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

impl Spool {
    /// Opens (creating if needed) the spool at `dir`, removes debris of interrupted writes
    /// from `tmp/`, checks every file in `queue/` and moves the ones that fail to
    /// `corrupt/`.
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let tmp = dir.join("tmp");
        let queue = dir.join("queue");
        let corrupt = dir.join("corrupt");
        for d in [dir, &tmp, &queue, &corrupt] {
            fs::create_dir_all(d).map_err(io_err("create directory", d))?;
        }
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
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
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
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
