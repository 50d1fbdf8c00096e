//! `xtask flash IMAGE DEVICE` (behind `./scripts/flash`): write an image to an SD card
//! without ever touching the wrong disk.
//!
//! Refuses anything that is not a whole, removable block device (`/sys/block/X/removable`
//! = 1) or that has any partition mounted (`/proc/mounts`); asks for confirmation on a
//! TTY (`--yes` skips only the question, never the checks); decompresses `.xz`/`.zst` on
//! the fly; shows progress; then reads the device back and compares BLAKE3 digests.
//! The sysfs and mounts paths are parameters so the checks are tested on temp files.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlashError {
    #[error("{0}: no such image file")]
    NoImage(PathBuf),
    #[error("{0}: the image must be .img, .img.xz or .img.zst")]
    ImageKind(PathBuf),
    #[error("{0}: not a block device under /dev")]
    NotBlockDevice(PathBuf),
    #[error("{0}: is a partition; name the whole card (e.g. /dev/sdX, /dev/mmcblk0)")]
    Partition(PathBuf),
    #[error("{0}: not removable (sysfs removable != 1); refusing to overwrite a fixed disk")]
    NotRemovable(PathBuf),
    #[error("{dev}: mounted ({what}); unmount it first")]
    Mounted { dev: PathBuf, what: String },
    #[error("no confirmation: stdin is not a terminal (use --yes in scripts)")]
    NoTty,
    #[error("not confirmed")]
    NotConfirmed,
    #[error("verification failed: the card reads back differently (digest {got} != {want})")]
    Verify { got: String, want: String },
    #[error("{0}")]
    Io(String),
}

/// Where the kernel's facts are read (real: /sys/block, /proc/mounts).
#[derive(Debug, Clone)]
pub struct SysPaths {
    pub sys_block: PathBuf,
    pub mounts: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        SysPaths { sys_block: "/sys/block".into(), mounts: "/proc/mounts".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Raw,
    Xz,
    Zstd,
}

pub fn image_kind(image: &Path) -> Result<ImageKind, FlashError> {
    if !image.is_file() {
        return Err(FlashError::NoImage(image.into()));
    }
    let n = image.to_string_lossy();
    if n.ends_with(".img") {
        Ok(ImageKind::Raw)
    } else if n.ends_with(".img.xz") {
        Ok(ImageKind::Xz)
    } else if n.ends_with(".img.zst") {
        Ok(ImageKind::Zstd)
    } else {
        Err(FlashError::ImageKind(image.into()))
    }
}

/// The kernel name of `dev` (`/dev/sdb` -> `sdb`, symlinks such as /dev/disk/by-id
/// followed), checked against sysfs: a whole disk, removable, nothing mounted.
/// `check_dev_node`: whether to require a real block special file (off in tests).
pub fn check_device(dev: &Path, sys: &SysPaths, check_dev_node: bool) -> Result<String, FlashError> {
    let real = if check_dev_node {
        dev.canonicalize().map_err(|_| FlashError::NotBlockDevice(dev.into()))?
    } else {
        dev.to_path_buf()
    };
    if check_dev_node {
        use std::os::unix::fs::FileTypeExt;
        let md = std::fs::metadata(&real).map_err(|_| FlashError::NotBlockDevice(dev.into()))?;
        if !md.file_type().is_block_device() {
            return Err(FlashError::NotBlockDevice(dev.into()));
        }
    }
    let name = real
        .strip_prefix("/dev")
        .ok()
        .and_then(|p| p.to_str())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| FlashError::NotBlockDevice(dev.into()))?
        .to_owned();
    let node = sys.sys_block.join(&name);
    if !node.exists() {
        // A partition (sdb1) has no /sys/block entry of its own.
        let is_part = std::fs::read_dir(&sys.sys_block)
            .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().join(&name).join("partition").exists()))
            .unwrap_or(false);
        return Err(if is_part { FlashError::Partition(dev.into()) } else { FlashError::NotBlockDevice(dev.into()) });
    }
    let removable = std::fs::read_to_string(node.join("removable")).unwrap_or_default();
    if removable.trim() != "1" {
        return Err(FlashError::NotRemovable(dev.into()));
    }
    let mounts =
        std::fs::read_to_string(&sys.mounts).map_err(|e| FlashError::Io(format!("{}: {e}", sys.mounts.display())))?;
    let prefix = format!("/dev/{name}");
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else { continue };
        // /dev/sdb, /dev/sdb1, /dev/mmcblk0p2 - but not /dev/sdbc.
        let rest = src.strip_prefix(&prefix);
        let ours = rest.is_some_and(|r| {
            r.is_empty()
                || r.chars().all(|c| c.is_ascii_digit())
                || (r.starts_with('p') && r[1..].chars().all(|c| c.is_ascii_digit()) && r.len() > 1)
        });
        if ours {
            return Err(FlashError::Mounted { dev: dev.into(), what: format!("{src} on {at}") });
        }
    }
    Ok(name)
}

/// Ask on the terminal; `yes` skips the question (the checks above still ran).
pub fn confirm(image: &Path, dev: &Path, name: &str, sys: &SysPaths, yes: bool) -> Result<(), FlashError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(FlashError::NoTty);
    }
    let size = std::fs::read_to_string(sys.sys_block.join(name).join("size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 512;
    let model = std::fs::read_to_string(sys.sys_block.join(name).join("device/model")).unwrap_or_default();
    eprint!(
        "Write {} to {} ({}, {:.1} GB)? Everything on it is lost. Type 'yes': ",
        image.display(),
        dev.display(),
        model.trim(),
        size as f64 / 1e9
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| FlashError::Io(e.to_string()))?;
    if line.trim() == "yes" { Ok(()) } else { Err(FlashError::NotConfirmed) }
}

/// Stream the (decompressed) image to `dev`, then read back the same number of bytes and
/// compare digests. Returns the bytes written.
pub fn write_and_verify(image: &Path, kind: ImageKind, dev: &Path) -> Result<u64, FlashError> {
    let io = |e: std::io::Error| FlashError::Io(e.to_string());
    let mut child = None;
    let mut input: Box<dyn Read> = match kind {
        ImageKind::Raw => Box::new(std::fs::File::open(image).map_err(io)?),
        ImageKind::Xz | ImageKind::Zstd => {
            let tool = if kind == ImageKind::Xz { "xz" } else { "zstd" };
            let mut c = Command::new(tool).arg("-dc").arg(image).stdout(Stdio::piped()).spawn().map_err(io)?;
            let out = c.stdout.take().unwrap();
            child = Some(c);
            Box::new(out)
        }
    };
    let total_hint = if kind == ImageKind::Raw { std::fs::metadata(image).map(|m| m.len()).unwrap_or(0) } else { 0 };
    let mut out = std::fs::OpenOptions::new().write(true).open(dev).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    let start = std::time::Instant::now();
    loop {
        let n = read_full(&mut input, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io)?;
        hasher.update(&buf[..n]);
        written += n as u64;
        progress("write", written, total_hint, start);
    }
    out.sync_all().map_err(io)?;
    eprintln!();
    if let Some(mut c) = child {
        let st = c.wait().map_err(io)?;
        if !st.success() {
            return Err(FlashError::Io(format!("decompressing {} failed", image.display())));
        }
    }
    drop(out);
    let want = hasher.finalize();
    // Read back through a fresh handle; dropping the page cache needs root, which the
    // write itself needed anyway, so ask for it and ignore a refusal.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let mut back = std::fs::File::open(dev).map_err(io)?;
    let mut h = blake3::Hasher::new();
    let mut left = written;
    let start = std::time::Instant::now();
    while left > 0 {
        let want_n = left.min(buf.len() as u64) as usize;
        let n = read_full(&mut back, &mut buf[..want_n]).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
        progress("verify", written - left, written, start);
    }
    eprintln!();
    let got = h.finalize();
    if got != want || left != 0 {
        return Err(FlashError::Verify { got: got.to_hex().to_string(), want: want.to_hex().to_string() });
    }
    Ok(written)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn progress(what: &str, done: u64, total: u64, start: std::time::Instant) {
    let mb = done as f64 / 1e6;
    let rate = mb / start.elapsed().as_secs_f64().max(0.001);
    if total > 0 {
        eprint!(
            "\r{what}: {mb:.0} / {:.0} MB ({:.0}%), {rate:.1} MB/s   ",
            total as f64 / 1e6,
            100.0 * done as f64 / total as f64
        );
    } else {
        eprint!("\r{what}: {mb:.0} MB, {rate:.1} MB/s   ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(removable: &str, mounts: &str) -> (tempfile::TempDir, SysPaths) {
        let d = tempfile::tempdir().unwrap();
        let sb = d.path().join("block");
        std::fs::create_dir_all(sb.join("sdb/sdb1")).unwrap();
        std::fs::write(sb.join("sdb/sdb1/partition"), "1\n").unwrap();
        std::fs::write(sb.join("sdb/removable"), removable).unwrap();
        std::fs::create_dir_all(sb.join("sda")).unwrap();
        std::fs::write(sb.join("sda/removable"), "0\n").unwrap();
        std::fs::write(d.path().join("mounts"), mounts).unwrap();
        let sys = SysPaths { sys_block: sb, mounts: d.path().join("mounts") };
        (d, sys)
    }

    const ROOT_ONLY: &str = "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n";

    #[test]
    fn a_removable_unmounted_card_is_accepted() {
        let (_d, sys) = fake_sys("1\n", ROOT_ONLY);
        assert_eq!(check_device(Path::new("/dev/sdb"), &sys, false), Ok("sdb".into()));
    }

    #[test]
    fn a_fixed_disk_is_refused() {
        let (_d, sys) = fake_sys("1\n", ROOT_ONLY);
        assert!(matches!(check_device(Path::new("/dev/sda"), &sys, false), Err(FlashError::NotRemovable(_))));
        let (_d, sys) = fake_sys("0\n", "");
        assert!(matches!(check_device(Path::new("/dev/sdb"), &sys, false), Err(FlashError::NotRemovable(_))));
    }

    #[test]
    fn a_mounted_partition_is_refused() {
        let (_d, sys) = fake_sys("1\n", "/dev/sdb1 /media/card vfat rw 0 0\n");
        assert!(matches!(check_device(Path::new("/dev/sdb"), &sys, false), Err(FlashError::Mounted { .. })));
        // A different disk whose name starts the same is not ours.
        let (_d, sys) = fake_sys("1\n", "/dev/sdbc1 /x vfat rw 0 0\n");
        assert!(check_device(Path::new("/dev/sdb"), &sys, false).is_ok());
    }

    #[test]
    fn partitions_files_and_unknown_names_are_refused() {
        let (_d, sys) = fake_sys("1\n", "");
        assert!(matches!(check_device(Path::new("/dev/sdb1"), &sys, false), Err(FlashError::Partition(_))));
        assert!(matches!(check_device(Path::new("/dev/nope"), &sys, false), Err(FlashError::NotBlockDevice(_))));
        // A regular file is not a block device when the real check runs.
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(check_device(f.path(), &sys, true), Err(FlashError::NotBlockDevice(_))));
    }

    #[test]
    fn image_names_are_checked() {
        let d = tempfile::tempdir().unwrap();
        for (n, k) in [
            ("a.img", Some(ImageKind::Raw)),
            ("a.img.xz", Some(ImageKind::Xz)),
            ("a.img.zst", Some(ImageKind::Zstd)),
            ("a.iso", None),
        ] {
            let p = d.path().join(n);
            std::fs::write(&p, b"x").unwrap();
            assert_eq!(image_kind(&p).ok(), k, "{n}");
        }
        assert!(matches!(image_kind(&d.path().join("missing.img")), Err(FlashError::NoImage(_))));
    }

    #[test]
    fn writes_decompresses_and_verifies_into_a_file() {
        // The write path itself, on a plain file standing in for the card.
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("t.img");
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let dev = d.path().join("card");
        std::fs::write(&dev, vec![0u8; 6 << 20]).unwrap();
        assert_eq!(write_and_verify(&img, ImageKind::Raw, &dev).unwrap(), data.len() as u64);
        assert_eq!(&std::fs::read(&dev).unwrap()[..data.len()], &data[..]);
        let st = Command::new("xz").args(["-k", "-1"]).arg(&img).status().unwrap();
        assert!(st.success());
        std::fs::write(&dev, vec![0u8; 6 << 20]).unwrap();
        let xz = d.path().join("t.img.xz");
        assert_eq!(write_and_verify(&xz, image_kind(&xz).unwrap(), &dev).unwrap(), data.len() as u64);
        assert_eq!(&std::fs::read(&dev).unwrap()[..data.len()], &data[..]);
    }
}
