//! `lucidd grow-data`: at boot, the data partition is grown to the end of the card and its
//! mounted ext4 with it, so a card larger than the image is used whole.
//!
//! It owns the IO of that grow, and only that: reading the table's sectors from the whole
//! disk, writing the sectors `lucid_core::mbr::plan_grow` planned (one at a time, each
//! flushed and read back before the next), telling the kernel the partition's new size
//! (`BLKPG_RESIZE_PARTITION`) and the file system its new block count
//! (`EXT4_IOC_RESIZE_FS`, online: no resize2fs on the image). The table arithmetic is in
//! `lucid_core::mbr` and the superblock's in `ext4`, both without IO.
//!
//! Every step is judged from what the disk, the kernel and the superblock say now, so a run
//! after a power cut at any step does what is left, and a run after a complete grow does
//! nothing and says so. It must not shrink or move anything, and must not touch a disk
//! whose table it does not understand: it refuses with the reason instead.
//!
//! Each step is printed on the console with a `lucid-grow:` prefix (there is no journal on
//! the image; the hil tests read these lines).

pub mod ext4;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use lucid_core::mbr::{self, MbrError, SECTOR, Sector, Table};

pub use ext4::{Ext4Error, Superblock};

/// What to grow: `--disk /dev/vda --partition 7 --mount /data`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The whole disk (`/dev/mmcblk0`, `/dev/vda`).
    pub disk: PathBuf,
    /// The partition's number in the MBR (the image's data partition is 7).
    pub partition: u32,
    /// Where that partition's ext4 is mounted.
    pub mount: PathBuf,
    /// The kernel's view of block devices (`/sys/class/block`) and where their nodes are
    /// (`/dev`); a test points both elsewhere.
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

impl Options {
    /// The device's own paths for `--disk`, `--partition` and `--mount`.
    pub fn new(disk: PathBuf, partition: u32, mount: PathBuf) -> Options {
        Options { disk, partition, mount, sysfs: "/sys/class/block".into(), dev: "/dev".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", disk.display())]
    Table { disk: PathBuf, source: MbrError },
    #[error("{}: {source}", dev.display())]
    Ext4 { dev: PathBuf, source: Ext4Error },
    #[error("{}: {what} is {value}, expected {want}", path.display())]
    Unexpected { path: PathBuf, what: &'static str, value: u64, want: u64 },
    #[error("{}: sector {lba} reads back other bytes than were written", disk.display())]
    ReadBack { disk: PathBuf, lba: u64 },
    #[error("{}: no partition {number} known to the kernel", disk.display())]
    NoPartition { disk: PathBuf, number: u32 },
    #[error("{} is not the mount point of {}", mount.display(), dev.display())]
    NotMounted { mount: PathBuf, dev: PathBuf },
}

/// What a run did, for the caller and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub table_writes: usize,
    pub kernel_resized: bool,
    /// (old, new) block counts when the file system was grown.
    pub fs_grown: Option<(u64, u64)>,
    /// The file system's size afterwards.
    pub fs_bytes: u64,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GrowError {
    let path = path.to_owned();
    move |source| GrowError::Io { what, path, source }
}

fn sysfs_u64(path: &Path) -> Result<u64, GrowError> {
    let s = std::fs::read_to_string(path).map_err(io("reading", path))?;
    s.trim().parse().map_err(|_| GrowError::Io {
        what: "parsing",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, s.trim().to_owned()),
    })
}

/// The kernel's name of partition `number` of `disk` (`vda7`, `mmcblk0p7`), from sysfs:
/// no naming convention to guess.
fn partition_name(sys_disk: &Path, disk: &Path, number: u32) -> Result<String, GrowError> {
    for e in std::fs::read_dir(sys_disk).map_err(io("listing", sys_disk))? {
        let e = e.map_err(io("listing", sys_disk))?;
        let f = e.path().join("partition");
        if f.exists() && sysfs_u64(&f)? == u64::from(number) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(GrowError::NoPartition { disk: disk.to_owned(), number })
}

fn read_sector(f: &File, disk: &Path, lba: u64) -> Result<Sector, GrowError> {
    let mut s = [0u8; SECTOR as usize];
    f.read_exact_at(&mut s, lba * SECTOR).map_err(io("reading", disk))?;
    Ok(s)
}

/// Grows partition `o.partition` of `o.disk` and the ext4 on `o.mount`; `log` gets one
/// line per step (without the prefix).
pub fn grow_data(o: &Options, log: &mut dyn FnMut(String)) -> Result<Outcome, GrowError> {
    let disk_name = o.disk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sys_disk = o.sysfs.join(&disk_name);
    let lbs = sysfs_u64(&sys_disk.join("queue/logical_block_size"))?;
    if lbs != SECTOR {
        let path = sys_disk.join("queue/logical_block_size");
        return Err(GrowError::Unexpected { path, what: "the logical block size", value: lbs, want: SECTOR });
    }
    // sysfs counts 512-byte sectors whatever the device's block size.
    let disk_sectors = sysfs_u64(&sys_disk.join("size"))?;
    let part_name = partition_name(&sys_disk, &o.disk, o.partition)?;
    let sys_part = sys_disk.join(&part_name);
    let dev = o.dev.join(&part_name);

    let f = OpenOptions::new().read(true).write(true).open(&o.disk).map_err(io("opening", &o.disk))?;
    let table_err = |source| GrowError::Table { disk: o.disk.clone(), source };
    let read_table = || Table::read(|lba| read_sector(&f, &o.disk, lba)).map_err(table_err);
    let table = read_table()?;
    let plan = mbr::plan_grow(&table, o.partition, disk_sectors).map_err(table_err)?;
    let mib = |sectors: u64| (sectors * SECTOR) >> 20;
    log(format!(
        "{}: {} MiB; partition {} ({}) spans sectors {}..{} ({} MiB), can end at {}",
        o.disk.display(),
        mib(disk_sectors),
        o.partition,
        dev.display(),
        plan.start,
        plan.old_end,
        mib(plan.old_end - plan.start),
        plan.new_end
    ));

    // 1. The table on the disk, container first (see lucid_core::mbr for the order).
    for w in &plan.writes {
        log(format!("write {}", w.what));
        f.write_all_at(&w.bytes, w.lba * SECTOR).map_err(io("writing", &o.disk))?;
        f.sync_all().map_err(io("flushing", &o.disk))?;
        if read_sector(&f, &o.disk, w.lba)? != w.bytes {
            return Err(GrowError::ReadBack { disk: o.disk.clone(), lba: w.lba });
        }
    }
    if !plan.writes.is_empty() {
        let now = read_table()?.partition(o.partition).map(|p| p.end()).unwrap_or(0);
        if now != plan.new_end {
            let (path, what) = (o.disk.clone(), "the partition's end read back");
            return Err(GrowError::Unexpected { path, what, value: now, want: plan.new_end });
        }
    }

    // 2. The kernel's idea of the partition: it read the table at boot, before step 1.
    let kernel_start = sysfs_u64(&sys_part.join("start"))?;
    let kernel_size = sysfs_u64(&sys_part.join("size"))?;
    let want = plan.new_end - plan.start;
    if kernel_start != plan.start {
        let path = sys_part.join("start");
        return Err(GrowError::Unexpected {
            path,
            what: "the kernel's partition start",
            value: kernel_start,
            want: plan.start,
        });
    }
    let kernel_resized = kernel_size < want;
    if kernel_resized {
        blkpg_resize(&f, o.partition, plan.start * SECTOR, want * SECTOR)
            .map_err(io("BLKPG_RESIZE_PARTITION on", &o.disk))?;
        let now = sysfs_u64(&sys_part.join("size"))?;
        if now != want {
            let path = sys_part.join("size");
            return Err(GrowError::Unexpected { path, what: "the kernel's partition size", value: now, want });
        }
        log(format!("kernel: {} is now {} MiB (BLKPG_RESIZE_PARTITION)", dev.display(), mib(want)));
    }

    // 3. The file system, online, on the mounted partition.
    let part = File::open(&dev).map_err(io("opening", &dev))?;
    let mount_dev = std::fs::metadata(&o.mount).map_err(io("stat", &o.mount))?.dev();
    if mount_dev != part.metadata().map_err(io("stat", &dev))?.rdev() {
        return Err(GrowError::NotMounted { mount: o.mount.clone(), dev });
    }
    let read_sb = || -> Result<Superblock, GrowError> {
        let mut b = [0u8; ext4::SUPERBLOCK_LEN];
        part.read_exact_at(&mut b, ext4::SUPERBLOCK_OFFSET).map_err(io("reading", &dev))?;
        Superblock::parse(&b).map_err(|source| GrowError::Ext4 { dev: dev.clone(), source })
    };
    let sb = read_sb()?;
    let mut fs_grown = None;
    let mut fs_bytes = sb.bytes();
    if let Some(target) = sb.grow_target(want * SECTOR) {
        log(format!(
            "ext4 on {}: {} -> {} blocks of {} bytes (EXT4_IOC_RESIZE_FS)",
            o.mount.display(),
            sb.blocks,
            target,
            sb.block_size
        ));
        let m = File::open(&o.mount).map_err(io("opening", &o.mount))?;
        ext4_resize(&m, target).map_err(io("EXT4_IOC_RESIZE_FS on", &o.mount))?;
        let after = read_sb()?;
        fs_grown = Some((sb.blocks, after.blocks));
        fs_bytes = after.bytes();
    }

    let outcome = Outcome { table_writes: plan.writes.len(), kernel_resized, fs_grown, fs_bytes };
    if plan.writes.is_empty() && !kernel_resized && fs_grown.is_none() {
        log(format!(
            "nothing to grow: partition {} ends at sector {} of {} and its ext4 fills it ({} MiB)",
            o.partition,
            plan.old_end,
            disk_sectors,
            fs_bytes >> 20
        ));
    } else {
        log(format!("done: {} is {} MiB", o.mount.display(), fs_bytes >> 20));
    }
    Ok(outcome)
}

// From <linux/blkpg.h>: `BLKPG` is _IO(0x12, 105); the partition's start and length are in
// bytes. The libc crate does not carry these.
const BLKPG: u64 = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// Tells the kernel partition `pno` of the disk `f` now spans `length` bytes from `start`
/// (which must be where it starts). The extended container needs no such call: the kernel
/// registers it as two sectors only, so it never overlaps the logical partitions.
fn blkpg_resize(f: &File, pno: u32, start: u64, length: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: pno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: BLKPG reads `arg` and the `BlkpgPartition` it points to, both alive and laid
    // out as <linux/blkpg.h> declares them, for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as libc::Ioctl, &raw mut arg) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

// From <linux/ext4.h> (fs/ext4/ext4.h): _IOW('f', 16, __u64).
const EXT4_IOC_RESIZE_FS: u64 = 0x4008_6610;

/// Grows the ext4 mounted at the directory `mount` to `blocks` (online resize; the kernel
/// journals each step, so a power cut leaves a file system of the old or a larger size).
fn ext4_resize(mount: &File, blocks: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let n: u64 = blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 from the pointer, which is alive for the call.
    let r = unsafe { libc::ioctl(mount.as_raw_fd(), EXT4_IOC_RESIZE_FS as libc::Ioctl, &raw const n) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The QEMU image's table, written by sfdisk (an independent writer) on a sparse file of
    /// `size` bytes, with a fake sysfs that says what the kernel read at boot.
    fn disk(dir: &Path, size: u64) -> Options {
        let img = dir.join("vda");
        File::create(&img).unwrap().set_len(size).unwrap();
        let script = "label: dos\nunit: sectors\n2048,16384,c,*\n18432,131072,c\n149504,131072,c\n\
                      280576,595968,f\n282624,131072,83\n415744,131072,83\n548864,327680,83\n";
        let mut c =
            Command::new("sfdisk").arg("-q").arg(&img).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
        let sys = dir.join("sys");
        for (f, v) in [
            ("vda/queue/logical_block_size", "512".to_owned()),
            ("vda/size", (size / 512).to_string()),
            ("vda/vda7/partition", "7".into()),
            ("vda/vda7/start", "548864".into()),
            ("vda/vda7/size", "327680".into()),
            ("vda/vda6/partition", "6".into()),
        ] {
            std::fs::create_dir_all(sys.join(f).parent().unwrap()).unwrap();
            std::fs::write(sys.join(f), format!("{v}\n")).unwrap();
        }
        std::fs::write(dir.join("vda7"), b"").unwrap();
        let mut o = Options::new(img, 7, dir.to_owned());
        (o.sysfs, o.dev) = (sys, dir.to_owned());
        o
    }

    /// `sfdisk -d` of the disk: what another tool reads from the bytes written here.
    fn dump(o: &Options) -> String {
        String::from_utf8(Command::new("sfdisk").arg("-d").arg(&o.disk).output().unwrap().stdout).unwrap()
    }

    #[test]
    fn writes_the_table_in_order_then_asks_the_kernel() {
        if Command::new("sfdisk").arg("--version").output().is_err() {
            eprintln!("skipped: no sfdisk (scripts/setup installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = disk(dir.path(), 4 << 30);
        let mut lines = Vec::new();
        // A plain file takes no BLKPG: the run stops there, after the table is written.
        let e = grow_data(&o, &mut |l| lines.push(l)).unwrap_err();
        assert!(matches!(e, GrowError::Io { what: "BLKPG_RESIZE_PARTITION on", .. }), "{e}");
        let writes: Vec<&String> = lines.iter().filter(|l| l.starts_with("write ")).collect();
        assert_eq!(writes.len(), 3, "{lines:#?}");
        assert!(writes[0].starts_with("write MBR: extended partition 4 -> sectors 280576..8388608"), "{lines:#?}");
        assert!(writes[1].contains("link to partition 7"), "{lines:#?}");
        assert!(writes[2].ends_with("partition 7 -> sectors 548864..8388608"), "{lines:#?}");
        let d = dump(&o);
        assert!(d.contains("vda4 : start=      280576, size=     8108032, type=f"), "{d}");
        assert!(d.contains("vda7 : start=      548864, size=     7839744, type=83"), "{d}");
        assert!(d.contains("vda6 : start=      415744, size=      131072, type=83"), "{d}");

        // The kernel now knows (as BLKPG would have told it): the table is not written
        // again, and the run goes on to the file system, which this file is not.
        std::fs::write(o.sysfs.join("vda/vda7/size"), "7839744\n").unwrap();
        lines.clear();
        let e = grow_data(&o, &mut |l| lines.push(l)).unwrap_err();
        assert!(matches!(e, GrowError::NotMounted { .. }), "{e}");
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(dump(&o), d);
    }

    #[test]
    fn refuses_a_disk_that_is_not_512_byte_sectors() {
        if Command::new("sfdisk").arg("--version").output().is_err() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = disk(dir.path(), 1 << 30);
        std::fs::write(o.sysfs.join("vda/queue/logical_block_size"), "4096\n").unwrap();
        assert!(matches!(grow_data(&o, &mut |_| {}), Err(GrowError::Unexpected { value: 4096, .. })));
        let o = Options { partition: 9, ..disk(dir.path(), 1 << 30) };
        assert!(matches!(grow_data(&o, &mut |_| {}), Err(GrowError::NoPartition { number: 9, .. })));
    }
}
