//! Open file description locks on images, as QEMU takes them: a process
//! that writes to an image holds a write lock on it, one that only reads
//! (a backing file, `readonly=on`) a read lock. A writer therefore refuses
//! an image that another process reads or writes, and a reader refuses one
//! that another process writes. OFD locks belong to the open file, so a
//! second open of the same image in this process conflicts too, and they
//! go away with the file (even when the process is killed).

use std::fs::File;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// The byte the locks cover (any byte works; locks may lie past EOF).
const LOCK_BYTE: i64 = 0;

fn flock(write: bool) -> libc::flock {
    libc::flock {
        l_type: if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: LOCK_BYTE,
        l_len: 1,
        // OFD locks require a zero pid.
        l_pid: 0,
    }
}

/// Locks `file` for writing (`write`) or for reading; the lock lasts as
/// long as the open file. The message says who holds what, when it can.
pub fn lock(file: &File, write: bool) -> Result<(), String> {
    match fcntl(file, FcntlArg::F_OFD_SETLK(&flock(write))) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(if write {
            "the image is in use by another process (or another disk of this one); \
             use readonly=on or --snapshot to share it"
                .into()
        } else {
            "the image is being written by another process (or another disk of this one)".into()
        }),
        // File systems without locks (some network ones): go on unlocked,
        // as QEMU does with locking=auto.
        Err(Errno::ENOLCK | Errno::EINVAL | Errno::EOPNOTSUPP) => {
            tracing::warn!(target: "devices", "cannot lock an image on this file system: it is used unlocked");
            Ok(())
        }
        Err(e) => Err(format!("cannot lock the image: {e}")),
    }
}

/// Whether some open file (of any process, this one's included) holds a
/// lock on `file`'s image: a reader or a writer uses it.
pub fn in_use(file: &File) -> bool {
    let mut probe = flock(true);
    match fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => false,
    }
}
