//! The store holds mail metadata and the install secret: its directory is 0700 and every
//! file in it 0600, set explicitly after creation, so neither the umask nor an older
//! install's modes decide who may read it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it 0700, before sled writes into it.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Makes every directory under `dir` 0700 and every file 0600 (sled creates its files with
/// the umask's modes). Symbolic links are left alone: their targets are not ours.
pub(crate) fn tighten(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
            tighten(&path)?;
        } else if kind.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Issue 12: `db/db` and `db/conf` were 0644 and the directory 0755 under the usual umask.
    #[test]
    fn the_store_is_private_whatever_the_umask() {
        use nix::sys::stat::{umask, Mode};
        let base = std::env::temp_dir().join(format!("levee-store-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("db");
        let old = umask(Mode::from_bits_truncate(0o022));
        let opened = Store::open(&dir);
        umask(old);
        drop(opened.unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let mut files = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    assert_eq!(mode(&p), 0o700, "{}", p.display());
                    stack.push(p);
                } else {
                    assert_eq!(mode(&p), 0o600, "{}", p.display());
                    files += 1;
                }
            }
        }
        assert!(files >= 2, "sled wrote its db and conf files");
        let _ = fs::remove_dir_all(&base);
    }
}
