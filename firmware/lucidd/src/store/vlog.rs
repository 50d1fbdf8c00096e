//! The value logs: one append-only file per session, `<data>/vlog/<session id>.vlog`,
//! holding each committed chunk's sealed bytes together with everything its redb rows say
//! (records, client ids and metadata, Merkle nodes, the session row).
//!
//! Owns the entry framing (docs/design.md, "Value log"), appending with one `fdatasync`,
//! scanning a log's tail after a crash, and the file operations behind the small
//! `VlogBackend` trait, so the fault tests can fill the disk or cut the power between two
//! writes exactly as they do for redb. It must not touch redb or decide what is durable in
//! the store: `store.rs` says which entries redb already holds and replays the rest.
//!
//! Why a log: redb stores a large value in a page run rounded up to a power of two and
//! copies B-tree pages on every commit, so a chunk inline in redb cost about twice its size
//! in file space and 1.6–3.6× its size in device writes. An append-only file writes each
//! byte once, frees a deleted session's space at once (unlink), and one `fdatasync` of it
//! is the chunk's whole durable commit; redb commits its rows without a flush and is made
//! durable in batches (see `store.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Entry magic of the framing written now: "LVE2", whose header carries the CRC-32 of the
/// payload.
pub(crate) const MAGIC: [u8; 4] = *b"LVE2";
/// Entry magic of the first framing, whose header carries 16 bytes of BLAKE3(payload):
/// still read, so logs written before keep replaying; never written.
pub(crate) const MAGIC_V1: [u8; 4] = *b"LVE1";
/// Magic, payload length (u32 LE), then 16 check bytes: for "LVE2" the CRC-32 of the
/// payload (u32 LE) and 12 zero bytes; for "LVE1" the first 16 bytes of BLAKE3(payload).
pub(crate) const HEADER: usize = 24;
/// The largest payload an entry may hold: far above the largest multi-part chunk a
/// request can carry, and small enough that a torn length field cannot make recovery read
/// gigabytes.
pub(crate) const MAX_PAYLOAD: u32 = 256 << 20;

/// The files of the value logs, by name (`<session id>.vlog`). The daemon uses `FsVlog`;
/// the fault tests use in-memory disks that fill up or lose unsynced pages.
pub trait VlogBackend: Send + Sync + 'static {
    /// Names of the existing log files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Length of the file, 0 when it does not exist.
    fn len(&self, name: &str) -> io::Result<u64>;
    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// `len` bytes at `offset` in a new buffer. The default zero-fills then reads; a file
    /// backend reads straight into the allocation (export reads every chunk through here,
    /// and zeroing 500 KB before overwriting it cost a tenth of its time).
    fn read_vec(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.read(name, offset, &mut out)?;
        Ok(out)
    }
    /// Writes at `offset`, creating the file (and making its name durable) if needed.
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `fdatasync`: what was written is on the medium when this returns.
    fn sync_data(&self, name: &str) -> io::Result<()>;
    fn set_len(&self, name: &str, len: u64) -> io::Result<()>;
    /// Frees the blocks of `[offset, offset+len)` (they read as zeros), keeping the size.
    fn punch_hole(&self, name: &str, offset: u64, len: u64) -> io::Result<()>;
    /// Removes the file; not an error when it does not exist.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Bytes the file occupies on the medium (allocated blocks), for space accounting.
    fn allocated(&self, name: &str) -> io::Result<u64>;
    /// Reserves blocks for `[offset, offset+len)` without changing the size, so appends
    /// into them leave the file system less to do at each flush. Best effort: a backend
    /// without it does nothing.
    fn reserve(&self, _name: &str, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The value logs as files in one directory, with their handles kept open.
#[derive(Debug)]
pub struct FsVlog {
    dir: PathBuf,
    files: Mutex<HashMap<String, Arc<File>>>,
}

impl FsVlog {
    pub fn new(dir: PathBuf) -> io::Result<FsVlog> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(FsVlog { dir, files: Mutex::new(HashMap::new()) })
    }

    fn file(&self, name: &str, create: bool) -> io::Result<Option<Arc<File>>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(name) {
            return Ok(Some(f.clone()));
        }
        let path = self.dir.join(name);
        use std::os::unix::fs::OpenOptionsExt;
        let f = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
                // The new name must survive a power cut before any entry in it is
                // acknowledged: fsync the directory once, at creation.
                File::open(&self.dir)?.sync_all()?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let f = Arc::new(f);
        // Only the logs being written keep a handle open: readers of old sessions open
        // and close theirs, so thousands of sessions never hold thousands of descriptors.
        if create {
            files.insert(name.to_owned(), f.clone());
        }
        Ok(Some(f))
    }

    fn existing(&self, name: &str) -> io::Result<Arc<File>> {
        self.file(name, false)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no value log {name}")))
    }
}

impl VlogBackend for FsVlog {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".vlog") {
                out.push(name);
            }
        }
        Ok(out)
    }
    fn len(&self, name: &str) -> io::Result<u64> {
        match self.file(name, false)? {
            Some(f) => Ok(f.metadata()?.len()),
            None => Ok(0),
        }
    }
    fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.existing(name)?.read_exact_at(out, offset)
    }
    fn read_vec(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let f = self.existing(name)?;
        let mut out = Vec::<u8>::with_capacity(len);
        while out.len() < len {
            let filled = out.len();
            let spare = &mut out.spare_capacity_mut()[..len - filled];
            // SAFETY: pread writes at most `spare.len()` bytes into memory `out` owns and
            // reads nothing from it; the descriptor is open while `f` lives.
            let n = unsafe {
                libc::pread(
                    f.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    (offset + filled as u64) as libc::off_t,
                )
            };
            match n {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "value log ends inside an entry")),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                // SAFETY: the kernel initialised these `n` bytes right after the old length.
                n => unsafe { out.set_len(filled + n as usize) },
            }
        }
        Ok(out)
    }
    fn write(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self.file(name, true)?.expect("created");
        f.write_all_at(data, offset)
    }
    fn sync_data(&self, name: &str) -> io::Result<()> {
        self.existing(name)?.sync_data()
    }
    fn set_len(&self, name: &str, len: u64) -> io::Result<()> {
        self.existing(name)?.set_len(len)
    }
    fn punch_hole(&self, name: &str, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = self.existing(name)?;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
        // as long as `f` lives.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // A file system without hole punching (tmpfs on old kernels, some FUSE):
            // overwrite with zeros so the bytes are gone, even if the space is not freed.
            return f.write_all_at(&vec![0u8; len as usize], offset);
        }
        Err(e)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn reserve(&self, name: &str, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = self.file(name, true)?.expect("created");
        // SAFETY: fallocate only reads its integer arguments; `f` is open.
        let r = unsafe {
            libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t)
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
    fn allocated(&self, name: &str) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        match self.file(name, false)? {
            Some(f) => Ok(f.metadata()?.blocks() * 512),
            None => Ok(0),
        }
    }
}

/// The file name of a session's value log. Session ids are checked by the engine to be
/// short `[A-Za-z0-9._-]` strings; anything else is hex-escaped so no id can name a path
/// outside the directory.
pub(crate) fn file_name(sid: &str) -> String {
    let safe = !sid.is_empty()
        && sid.len() <= 128
        && !sid.starts_with('.')
        && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if safe {
        format!("{sid}.vlog")
    } else {
        let hex: String = sid.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}.vlog")
    }
}

/// The session id a log file belongs to (the inverse of `file_name`).
pub(crate) fn session_of(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".vlog")?;
    match stem.strip_prefix("x-") {
        Some(hex) if hex.len() % 2 == 0 => {
            let bytes: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
            String::from_utf8(bytes?).ok()
        }
        _ => Some(stem.to_owned()),
    }
}

/// The 16 check bytes of a header (see `HEADER`). The check only has to tell a whole,
/// flushed entry from a torn or stale tail: the content's integrity is the AEAD's and the
/// Merkle log's. CRC-32 does that at memory speed, where BLAKE3 cost about 0.6 ms of a
/// 2 MB entry's commit on the benchmark machine.
fn check_bytes(magic: [u8; 4], payload: &[u8]) -> [u8; 16] {
    let mut d = [0u8; 16];
    if magic == MAGIC_V1 {
        d.copy_from_slice(&blake3::hash(payload).as_bytes()[..16]);
    } else {
        d[..4].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    }
    d
}

/// Reads the entry at `offset` of a log `len` bytes long. `Ok(None)` when no whole, intact
/// entry starts there: the end of the log, or a torn tail (a short header, a wrong magic,
/// a length past the end, a digest that does not match).
pub(crate) fn read_entry(b: &dyn VlogBackend, name: &str, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
    if offset + HEADER as u64 > len {
        return Ok(None);
    }
    let mut h = [0u8; HEADER];
    b.read(name, offset, &mut h)?;
    let magic: [u8; 4] = h[..4].try_into().expect("4 bytes");
    if magic != MAGIC && magic != MAGIC_V1 {
        return Ok(None);
    }
    let n = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    if n > MAX_PAYLOAD || offset + (HEADER as u64) + n as u64 > len {
        return Ok(None);
    }
    let mut payload = vec![0u8; n as usize];
    b.read(name, offset + HEADER as u64, &mut payload)?;
    if check_bytes(magic, &payload) != h[8..24] {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// The payload codec: one committed chunk, little-endian, lengths before bytes
/// (docs/design.md gives the layout byte by byte).
pub(crate) mod codec {
    /// Marks an absent optional field in a u32 length slot.
    pub(crate) const NONE: u32 = u32::MAX;

    pub(crate) struct Writer(pub Vec<u8>);

    impl Writer {
        pub(crate) fn u8(&mut self, v: u8) {
            self.0.push(v);
        }
        pub(crate) fn u32(&mut self, v: u32) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(crate) fn u64(&mut self, v: u64) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(crate) fn bytes(&mut self, b: &[u8]) {
            self.u32(b.len() as u32);
            self.0.extend_from_slice(b);
        }
        pub(crate) fn opt(&mut self, b: Option<&[u8]>) {
            match b {
                Some(b) => self.bytes(b),
                None => self.u32(NONE),
            }
        }
    }

    /// A cursor over a payload; every read fails cleanly on a short or malformed one.
    pub(crate) struct Reader<'a> {
        pub(crate) buf: &'a [u8],
        pub(crate) pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
            self.pos += n;
            Some(s)
        }
        pub(crate) fn u8(&mut self) -> Option<u8> {
            Some(self.take(1)?[0])
        }
        pub(crate) fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        pub(crate) fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        pub(crate) fn array32(&mut self) -> Option<[u8; 32]> {
            self.take(32)?.try_into().ok()
        }
        pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
            let n = self.u32()?;
            self.take(n as usize)
        }
        /// An optional field, with the offset of its bytes within the payload.
        pub(crate) fn opt(&mut self) -> Option<Option<(usize, &'a [u8])>> {
            let n = self.u32()?;
            if n == NONE {
                return Some(None);
            }
            let at = self.pos;
            Some(Some((at, self.take(n as usize)?)))
        }
    }
}

/// Fills the 24-byte header reserved at the start of `entry` for the payload after it.
pub(crate) fn seal_header(entry: &mut [u8]) {
    let n = (entry.len() - HEADER) as u32;
    let d = check_bytes(MAGIC, &entry[HEADER..]);
    entry[..4].copy_from_slice(&MAGIC);
    entry[4..8].copy_from_slice(&n.to_le_bytes());
    entry[8..24].copy_from_slice(&d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_vec_reads_what_read_reads_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsVlog::new(dir.path().join("vlog")).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        fs.write("s.vlog", 0, &data).unwrap();
        let mut want = vec![0u8; 200_000];
        fs.read("s.vlog", 50_000, &mut want).unwrap();
        assert_eq!(fs.read_vec("s.vlog", 50_000, 200_000).unwrap(), want);
        assert_eq!(&want[..], &data[50_000..250_000]);
        let e = fs.read_vec("s.vlog", 250_000, 50_001).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(fs.read_vec("missing.vlog", 0, 1).is_err());
    }
}
