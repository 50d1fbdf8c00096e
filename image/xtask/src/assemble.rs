//! Image assembly (`xtask image BOARD`): Debian arm64 packages + the static `lucidd` +
//! `image/` files -> partition images -> `genimage` -> `out/BOARD/BOARD.img`, a
//! compressed copy and (when the daemon has `lucidd bundle`) the OTA bundle.
//!
//! Without root: file systems are made from directories (`mksquashfs`, `mkfs.vfat` +
//! `mcopy`, `mke2fs -d`), never mounted. Every per-board fact comes from the manifest
//! (board.rs); this module only knows the fixed layout shared with the daemon:
//! p1 bootctl, p2/p3 boot A/B, p5/p6 root A/B, p7 data.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::board::{Board, BootMethod, KernelImage};
use crate::deb::{DebCache, kernel_version};
use crate::kmod::{self, Built};
use crate::{copy_tree, run, run_output};

/// The data partition: the last logical one (genimage_config), so the only one that can
/// grow to the end of a larger card at boot (rcS, `lucidd grow-data`).
pub const DATA_PARTITION: u32 = 7;

pub struct Options {
    pub repo: PathBuf,
    pub board: String,
    pub variant: Option<String>,
    pub build: u64,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub lucidd: PathBuf,
    pub compress: Compress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    Xz,
    Zstd,
    None,
}

/// What a build produced, for printing and for the tests.
#[derive(Debug)]
pub struct Outputs {
    pub image: PathBuf,
    pub compressed: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub boot: PathBuf,
    pub sizes: Vec<(String, u64)>,
}

/// Output directory name: the board, or `board-variant` (stacked variants joined with
/// `-`: `rpi3-raspi3b-broken-daemon`), then `-buildN` for N != 1.
pub fn out_name(board: &str, variant: Option<&str>, build: u64) -> String {
    let mut s = board.to_owned();
    if let Some(v) = variant {
        s.push('-');
        s.push_str(&v.replace(',', "-"));
    }
    if build != 1 {
        write!(s, "-build{build}").unwrap();
    }
    s
}

pub fn build(o: &Options) -> Result<Outputs> {
    let board = crate::board::load(&o.repo, &o.board, o.variant.as_deref())?;
    let out_dir = o.out.join(out_name(&o.board, o.variant.as_deref(), o.build));
    let work = out_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    if !o.lucidd.exists() {
        bail!(
            "no static lucidd at {}: cargo build --release --target aarch64-unknown-linux-musl -p lucidd",
            o.lucidd.display()
        );
    }
    let cache = DebCache::new(o.cache.clone())?;

    // Packages.
    let kroot = cache.unpack(&board.kernel.package)?;
    let kver = kernel_version(&kroot)?;
    let kdir = kroot.join("lib/modules").join(&kver);
    let bbroot = cache.unpack(&board.rootfs.busybox_package)?;
    let busybox = bbroot.join("bin/busybox");
    let dtb_root = kroot.join("usr/lib").join(format!("linux-image-{kver}"));
    for dt in &board.boot.device_trees {
        if !dtb_root.join(dt).exists() {
            bail!(
                "board {}: the kernel package {} has no device tree {dt}; this board needs the Raspberry Pi kernel: build it with Buildroot (buildroot/, docs/image.md)",
                board.name,
                board.kernel.package
            );
        }
    }
    if !kdir.join("modules.dep").exists() {
        // Debian ships no modules.dep (depmod runs at install); busybox's depmod under
        // qemu-user writes one, once per unpacked kernel.
        eprintln!("xtask: depmod for {kver} (once, about 20 s under qemu-user)");
        run(Command::new("qemu-aarch64-static").arg(&busybox).args(["depmod", "-b"]).arg(&kroot).arg(&kver))?;
    }
    // Modules the kernel package lacks, built for exactly this kernel (cached).
    let out_of_tree = if board.kernel.out_of_tree.is_empty() {
        Vec::new()
    } else {
        let id = kmod::KernelId::of(&cache.deb(&board.kernel.package)?, &kver)?;
        kmod::build_all(&cache, &id, &board.kernel.out_of_tree)?
    };
    let fwroot = match &board.boot.firmware_package {
        Some(p) => Some(cache.unpack(p)?),
        None => None,
    };
    let uboot = match (&board.boot.uboot_package, &board.boot.uboot_file) {
        (Some(p), Some(f)) => Some(cache.unpack(p)?.join(f)),
        _ => None,
    };

    // Config and release facts, checked by the daemon itself.
    let (lucid_toml, with_update) = check_config(&o.lucidd, None, &work, &board, &lucidd_config(&board)?)?;
    let release = release_text(&board, o.build);

    // OTA keys: the production key from the environment, else development keys made once.
    let keys = ota_keys(&o.out.join("keys"), &o.lucidd, None)?;

    // Initramfs: busybox, the modules, /init.
    let initramfs = work.join("initramfs");
    build_initramfs(&o.repo, &board, &kdir, &kver, &busybox, &initramfs, &out_of_tree)?;
    let initrd = work.join("initrd.img");
    cpio_gz(&initramfs, &initrd)?;

    // Root file system.
    let rootdir = work.join("rootfs");
    build_rootfs(o, &board, &busybox, &rootdir, &lucid_toml, &release, keys.as_ref().map(|k| k.1.as_path()))?;
    install_rootfs_modules(&board, &kdir, &kver, &rootdir, &out_of_tree)?;
    let added = crate::dynlink::install(&cache, &board.rootfs, &rootdir)?;
    if !added.files.is_empty() {
        eprintln!(
            "xtask: rootfs: {} from packages, {} shared objects ({}), {} KiB in all",
            added.files.join(", "),
            added.libraries.len(),
            added.libraries.join(", "),
            added.bytes / 1024
        );
    }
    let rootfs = work.join("rootfs.squashfs");
    run(Command::new("mksquashfs").arg(&rootdir).arg(&rootfs).args([
        "-noappend",
        "-all-root",
        "-no-progress",
        "-quiet",
        "-comp",
        &board.rootfs.compression,
    ]))?;

    // Boot partitions, p1, data, the disk image, payloads, compressed copy, bundle.
    let files = BootFiles {
        kernel: kroot.join("boot").join(format!("vmlinuz-{kver}")),
        dtbs: board.boot.device_trees.iter().map(|dt| (dtb_root.join(dt), dt.clone())).collect(),
        firmware_dir: fwroot.as_ref().map(|f| f.join("usr/lib/raspi-firmware")),
        uboot,
        initrd: initrd.clone(),
    };
    let img_name = format!("{}.img", out_name(&o.board, o.variant.as_deref(), o.build));
    let t = Tail {
        repo: &o.repo,
        board: &board,
        work: &work,
        out_dir: &out_dir,
        img_name: &img_name,
        files: &files,
        rootfs: &rootfs,
        release: &release,
        lucidd: &o.lucidd,
        sysroot: None,
        build: o.build,
        key: keys.as_ref().map(|k| k.0.as_path()),
        compress: o.compress,
    };
    let (image, compressed, bundle) = finish(&t)?;
    if !with_update {
        eprintln!("xtask: NOTE: the daemon does not accept an [update] table yet; lucidd.toml was written without it");
    }

    let mut sizes = vec![
        ("image".to_owned(), std::fs::metadata(&image)?.len()),
        ("rootfs.squashfs".to_owned(), std::fs::metadata(&rootfs)?.len()),
        ("initrd.img".to_owned(), std::fs::metadata(&initrd)?.len()),
        ("lucidd".to_owned(), std::fs::metadata(&o.lucidd)?.len()),
    ];
    if let Some(c) = &compressed {
        sizes.push((c.file_name().unwrap().to_string_lossy().into_owned(), std::fs::metadata(c)?.len()));
    }
    if let Some(b) = &bundle {
        sizes.push((b.file_name().unwrap().to_string_lossy().into_owned(), std::fs::metadata(b)?.len()));
    }
    Ok(Outputs {
        image,
        compressed,
        bundle,
        rootfs: out_dir.join("rootfs.squashfs"),
        boot: out_dir.join("boot.vfat"),
        sizes,
    })
}

/// `/etc/lucid/release`.
pub fn release_text(board: &Board, build: u64) -> String {
    format!("board={}\nversion={}\nbuild={}\n", board.name, board.full_version(), build)
}

/// What the boot partitions and p1 are made of: from Debian packages (`build`) or from
/// Buildroot's `BINARIES_DIR` (`crate::buildroot_image`).
pub struct BootFiles {
    /// The kernel, installed as `Image` or `vmlinuz` (board.kernel.image).
    pub kernel: PathBuf,
    /// Device trees: (file, name). The name may have a directory (`broadcom/x.dtb`):
    /// U-Boot boot partitions keep it under `dtbs/`, the Pi firmware gets the file name.
    pub dtbs: Vec<(PathBuf, String)>,
    /// Where the manifest's `firmware_files` are (Pi boards).
    pub firmware_dir: Option<PathBuf>,
    /// U-Boot loaded by the Pi firmware from p1 (Pi 3).
    pub uboot: Option<PathBuf>,
    pub initrd: PathBuf,
}

/// The inputs of the steps both builds share.
pub(crate) struct Tail<'a> {
    pub repo: &'a Path,
    pub board: &'a Board,
    pub work: &'a Path,
    pub out_dir: &'a Path,
    pub img_name: &'a str,
    pub files: &'a BootFiles,
    pub rootfs: &'a Path,
    pub release: &'a str,
    /// The aarch64 lucidd that makes the bundle (run under qemu-user).
    pub lucidd: &'a Path,
    /// `-L` for qemu-user when `lucidd` is dynamically linked (Buildroot's TARGET_DIR).
    pub sysroot: Option<&'a Path>,
    pub build: u64,
    pub key: Option<&'a Path>,
    pub compress: Compress,
}

/// Boot A/B, p1, data, `genimage`, the slot payloads beside the image, the compressed
/// copy and the OTA bundle. Returns (image, compressed, bundle).
pub(crate) fn finish(t: &Tail<'_>) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let (board, work, out_dir) = (t.board, t.work, t.out_dir);
    let mib = 1024 * 1024;
    let rootfs_size = std::fs::metadata(t.rootfs)?.len();
    if rootfs_size > board.partitions.root_mib as u64 * mib {
        bail!("rootfs.squashfs is {rootfs_size} bytes, more than root_mib = {}", board.partitions.root_mib);
    }
    // genimage reads its inputs from `work` by name.
    let rootfs_in = work.join("rootfs.squashfs");
    if t.rootfs != rootfs_in {
        std::fs::copy(t.rootfs, &rootfs_in)?;
    }

    // Boot partitions A and B, and p1.
    let boot_a = work.join("boot-a.vfat");
    let boot_b = work.join("boot-b.vfat");
    for (slot, path) in [('a', &boot_a), ('b', &boot_b)] {
        let dir = work.join(format!("boot-{slot}"));
        std::fs::create_dir_all(&dir)?;
        fill_boot(board, slot, t.files, &dir)?;
        // Sized to its contents, not to the partition: this file is also the OTA
        // bundle's `boot` payload, written from the start of the boot partition. The FAT
        // header records its own size, so the kernel, U-Boot and the Pi firmware read it
        // the same in a larger partition, and the bundle does not carry empty space.
        let size_mib = fat_size_mib(&dir, board.partitions.boot_mib)?;
        make_vfat(&dir, path, size_mib, &format!("BOOT-{}", slot.to_ascii_uppercase()))?;
    }
    let ctl_dir = work.join("bootctl");
    std::fs::create_dir_all(&ctl_dir)?;
    fill_bootctl(t.repo, board, t.files, work, &ctl_dir)?;
    let bootctl = work.join("bootctl.vfat");
    make_vfat(&ctl_dir, &bootctl, board.partitions.bootctl_mib, "BOOTCTL")?;

    // Data: an empty ext4, made at build time.
    let data = work.join("data.ext4");
    let empty = work.join("data-root");
    std::fs::create_dir_all(&empty)?;
    run(Command::new("mke2fs")
        // 4 KiB blocks whatever the size: mke2fs picks 1 KiB for a file system this small,
        // which caps how far the online grow at first boot can go (its reserved group
        // descriptor blocks run out: 160 MiB grew to 3,580 of 3,828 MiB) and costs more
        // metadata per byte on the card.
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "data", "-E", "root_owner=0:0", "-d"])
        .arg(&empty)
        .arg(&data)
        .arg(format!("{}M", board.partitions.data_mib)))?;

    // The disk image.
    let cfg = genimage_config(board, t.img_name);
    std::fs::write(work.join("genimage.cfg"), &cfg)?;
    let tmp = work.join("genimage-tmp");
    run(Command::new("genimage")
        .arg("--config")
        .arg(work.join("genimage.cfg"))
        .arg("--inputpath")
        .arg(work)
        .arg("--outputpath")
        .arg(out_dir)
        .arg("--rootpath")
        .arg(&empty)
        .arg("--tmppath")
        .arg(&tmp))?;
    let image = out_dir.join(t.img_name);

    // Slot payloads kept beside the image (the OTA bundle's inputs, the hil tests' too).
    let boot_payload = out_dir.join("boot.vfat");
    let root_payload = out_dir.join("rootfs.squashfs");
    std::fs::copy(&boot_a, &boot_payload)?;
    std::fs::copy(&rootfs_in, &root_payload)?;
    std::fs::write(out_dir.join("release"), t.release)?;

    let compressed = compress(&image, t.compress)?;
    let bundle = bundle(t.lucidd, t.sysroot, board, t.build, out_dir, &boot_payload, &root_payload, t.key)?;
    std::fs::remove_dir_all(&tmp).ok();
    Ok((image, compressed, bundle))
}

/// /etc/lucid/lucidd.toml: the manifest's `[lucidd.config]` plus the `[update]` table.
pub fn lucidd_config(board: &Board) -> Result<String> {
    let mut t = board.lucidd.config.clone();
    t.insert("update".into(), toml::Value::Table(update_table(board)));
    Ok(toml::to_string(&t)?)
}

/// The `[update]` table the daemon's OTA code reads (the interface fixed in issue 3).
pub fn update_table(board: &Board) -> toml::Table {
    let mut slots = toml::Table::new();
    for (s, boot, root) in [("a", 2, 5), ("b", 3, 6)] {
        let mut e = toml::Table::new();
        e.insert("boot".into(), board.part(boot).into());
        e.insert("root".into(), board.part(root).into());
        slots.insert(s.into(), e.into());
    }
    let mut u = toml::Table::new();
    u.insert("boot_control".into(), board.boot.method.daemon_name().into());
    u.insert("board".into(), board.name.clone().into());
    u.insert("release_file".into(), "/etc/lucid/release".into());
    u.insert("trusted_keys_dir".into(), "/etc/lucid/ota-keys".into());
    u.insert("bootctl_dir".into(), "/boot/ctl".into());
    u.insert("cmdline_path".into(), "/proc/cmdline".into());
    u.insert("slots".into(), slots.into());
    u.insert("reboot_after_install".into(), true.into());
    u
}

/// Run `lucidd config --config FILE` under qemu-user. Returns the config to install and
/// whether it has the `[update]` table: it is left out when only that table is refused
/// (the daemon's OTA code not landed yet). Fails the build on any other rejection, or
/// when a variant expects a rejection and the daemon accepts.
pub(crate) fn check_config(
    lucidd: &Path,
    sysroot: Option<&Path>,
    work: &Path,
    board: &Board,
    text: &str,
) -> Result<(String, bool)> {
    let path = work.join("lucidd.toml");
    let try_it = |body: &str| -> Result<(bool, String)> {
        std::fs::write(&path, body)?;
        let out = aarch64(lucidd, sysroot)
            .args(["config", "--config"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .context("running lucidd config under qemu-aarch64-static")?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let (ok, err) = try_it(text)?;
    if board.expect_config_rejected {
        if ok {
            bail!("variant expects the daemon to reject its config, but `lucidd config` accepted it");
        }
        eprintln!("xtask: the daemon rejects this variant's config, as intended: {}", err.trim());
        // Installed as generated; with [update] only if the daemon knows the table.
        return Ok((text.to_owned(), true));
    }
    if ok {
        return Ok((text.to_owned(), true));
    }
    if err.contains("update") {
        let mut t: toml::Table = toml::from_str(text)?;
        t.remove("update");
        let without = toml::to_string(&t)?;
        let (ok2, err2) = try_it(&without)?;
        if ok2 {
            return Ok((without, false));
        }
        bail!("lucidd rejects the generated config: {}", err2.trim());
    }
    bail!("lucidd rejects the generated config: {}", err.trim())
}

/// `lucidd` (aarch64) under qemu-user; `sysroot` (`-L`) for a dynamically linked one.
fn aarch64(lucidd: &Path, sysroot: Option<&Path>) -> Command {
    let mut c = Command::new("qemu-aarch64-static");
    if let Some(s) = sysroot {
        c.arg("-L").arg(s);
    }
    c.arg(lucidd);
    c
}

/// (pk8, vkey): LUCID_OTA_KEY/LUCID_OTA_VKEY, else `dir`/dev.* (out/keys) made once by
/// `lucidd bundle keygen`. None when the daemon has no bundle subcommand yet.
pub(crate) fn ota_keys(dir: &Path, lucidd: &Path, sysroot: Option<&Path>) -> Result<Option<(PathBuf, PathBuf)>> {
    if let (Some(k), Some(v)) = (std::env::var_os("LUCID_OTA_KEY"), std::env::var_os("LUCID_OTA_VKEY")) {
        let (k, v) = (PathBuf::from(k), PathBuf::from(v));
        if !k.exists() || !v.exists() {
            bail!("LUCID_OTA_KEY / LUCID_OTA_VKEY name files that do not exist");
        }
        return Ok(Some((k, v)));
    }
    let (k, v) = (dir.join("dev.pk8"), dir.join("dev.vkey"));
    if k.exists() && v.exists() {
        return Ok(Some((k, v)));
    }
    if !has_bundle_command(lucidd, sysroot) {
        eprintln!("xtask: NOTE: this lucidd has no `bundle` subcommand yet: no OTA keys, no bundle");
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    run(aarch64(lucidd, sysroot).args(["bundle", "keygen", "--name", "dev", "--out"]).arg(dir))?;
    eprintln!(
        "xtask: made DEVELOPMENT OTA keys in {} (set LUCID_OTA_KEY/LUCID_OTA_VKEY for production)",
        dir.display()
    );
    Ok(Some((k, v)))
}

fn has_bundle_command(lucidd: &Path, sysroot: Option<&Path>) -> bool {
    aarch64(lucidd, sysroot).args(["bundle", "--help"]).output().is_ok_and(|o| o.status.success())
}

#[allow(clippy::too_many_arguments)]
fn bundle(
    lucidd: &Path,
    sysroot: Option<&Path>,
    board: &Board,
    build: u64,
    out_dir: &Path,
    boot: &Path,
    rootfs: &Path,
    key: Option<&Path>,
) -> Result<Option<PathBuf>> {
    let Some(key) = key else { return Ok(None) };
    if !has_bundle_command(lucidd, sysroot) {
        return Ok(None);
    }
    let path = out_dir.join(format!("{}-{}-{}.lucidota", board.name, board.full_version(), build));
    run(aarch64(lucidd, sysroot)
        .args([
            "bundle",
            "create",
            "--board",
            &board.name,
            "--version",
            &board.full_version(),
            "--build",
            &build.to_string(),
            "--key",
        ])
        .arg(key)
        .arg("--boot")
        .arg(boot)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("-o")
        .arg(&path))?;
    Ok(Some(path))
}

/// Modules named by the board (`modules`, `extra_modules`, the watchdog's), with their
/// dependencies, in load order, and the `modules.dep` of that subset. Built-in modules
/// are skipped; unknown ones fail the build. `extra` are the out-of-tree modules built
/// for this kernel (kmod.rs): they resolve like the kernel's own, their lines made here.
pub fn resolve_modules(board: &Board, kdir: &Path, extra: &[Built]) -> Result<ModuleSet> {
    resolve_module_list(board, &board.load_list(), kdir, extra)
}

/// [`resolve_modules`] for any list of the board's modules (the root's `rootfs_modules`).
pub fn resolve_module_list(board: &Board, list: &[String], kdir: &Path, extra: &[Built]) -> Result<ModuleSet> {
    let dep = std::fs::read_to_string(kdir.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(kdir.join("modules.builtin")).unwrap_or_default();
    let norm = |s: &str| s.replace('-', "_");
    let stem = |p: &str| norm(Path::new(p).file_stem().unwrap().to_str().unwrap().trim_end_matches(".ko"));
    let mut table = std::collections::HashMap::new();
    let mut lines = std::collections::HashMap::new();
    for line in dep.lines() {
        if let Some((m, deps)) = line.split_once(':') {
            table.insert(stem(m), (m.to_owned(), deps.split_whitespace().map(str::to_owned).collect::<Vec<_>>()));
            lines.insert(m.to_owned(), line.to_owned());
        }
    }
    let mut sources = std::collections::HashMap::new();
    for b in extra {
        let (line, deps) = kmod::dep_line(b, &table)?;
        let file = kmod::install_path(&b.name);
        // An out-of-tree module of the same name as the kernel's wins, as under updates/
        // with depmod's default search order.
        table.insert(norm(&b.name), (file.clone(), deps));
        lines.insert(file.clone(), line);
        sources.insert(file, b.ko.clone());
    }
    let builtins: std::collections::HashSet<String> = builtin.lines().map(stem).collect();
    let mut load = Vec::new();
    let mut files = Vec::new();
    for m in list {
        let n = norm(m);
        if let Some((file, deps)) = table.get(&n) {
            load.push(m.clone());
            for f in deps.iter().chain(std::iter::once(file)) {
                if !files.contains(f) {
                    files.push(f.clone());
                }
            }
        } else if !builtins.contains(&n) {
            bail!("board {}: kernel module {m} is neither a module nor built into {}", board.name, kdir.display());
        }
    }
    // modules.dep for the subset, in the kernel's own format (paths relative to mdir).
    let dep = files.iter().filter_map(|f| lines.get(f)).map(|l| format!("{l}\n")).collect();
    Ok(ModuleSet { load, files, sources, dep })
}

/// What the initramfs gets of the kernel's modules.
#[derive(Debug)]
pub struct ModuleSet {
    /// /etc/modules: what /init loads, in order.
    pub load: Vec<String>,
    /// Files under lib/modules/KVER, dependencies first.
    pub files: Vec<String>,
    /// Files that are not the kernel package's: install path -> built `.ko`.
    pub sources: std::collections::HashMap<String, PathBuf>,
    /// modules.dep of exactly `files`.
    pub dep: String,
}

pub(crate) fn build_initramfs(
    repo: &Path,
    board: &Board,
    kdir: &Path,
    kver: &str,
    busybox: &Path,
    dir: &Path,
    extra: &[Built],
) -> Result<()> {
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "newroot", "usr/bin", "usr/sbin"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    std::fs::copy(repo.join("image/initramfs/init"), dir.join("init"))?;
    set_mode(&dir.join("init"), 0o755)?;
    let set = resolve_modules(board, kdir, extra)?;
    install_modules(board, &set, kdir, kver, dir)?;
    std::fs::write(dir.join("etc/modules"), set.load.join("\n") + "\n")?;
    // Each slot's root device, for /init when the command line names none (Pi tryboot:
    // the slot comes from the partition the firmware booted, see image/initramfs/init).
    std::fs::write(dir.join("etc/lucid-roots"), format!("a={}\nb={}\n", board.part(5), board.part(6)))?;
    Ok(())
}

/// Copies a module set under `dir`/lib/modules/`kver` with its `modules.dep`, and the
/// board's module options to `dir`/etc/modprobe.d (initramfs and root alike).
fn install_modules(board: &Board, set: &ModuleSet, kdir: &Path, kver: &str, dir: &Path) -> Result<()> {
    let mdir = dir.join("lib/modules").join(kver);
    for f in &set.files {
        let dest = mdir.join(f);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let src = set.sources.get(f).cloned().unwrap_or_else(|| kdir.join(f));
        std::fs::copy(&src, &dest).with_context(|| format!("module {}", src.display()))?;
    }
    std::fs::create_dir_all(&mdir)?;
    for f in ["modules.builtin", "modules.order"] {
        if kdir.join(f).exists() {
            std::fs::copy(kdir.join(f), mdir.join(f))?;
        }
    }
    std::fs::write(mdir.join("modules.dep"), &set.dep)?;
    if !board.kernel.module_options.is_empty() {
        std::fs::create_dir_all(dir.join("etc/modprobe.d"))?;
        std::fs::write(dir.join("etc/modprobe.d/lucid.conf"), modprobe_conf(board))?;
    }
    Ok(())
}

/// The root's `[kernel] rootfs_modules` (board.rs): their files and `modules.dep` under
/// its /lib/modules/KVER, and /etc/lucid/modules, the list rcS loads in order once the
/// root (and the firmware in it) is mounted. Nothing when the board names none.
pub(crate) fn install_rootfs_modules(
    board: &Board,
    kdir: &Path,
    kver: &str,
    root: &Path,
    extra: &[Built],
) -> Result<()> {
    if board.kernel.rootfs_modules.is_empty() {
        return Ok(());
    }
    let set = resolve_module_list(board, &board.kernel.rootfs_modules, kdir, extra)?;
    install_modules(board, &set, kdir, kver, root)?;
    std::fs::create_dir_all(root.join("etc/lucid"))?;
    std::fs::write(root.join("etc/lucid/modules"), set.load.join("\n") + "\n")?;
    Ok(())
}

/// /etc/modprobe.d/lucid.conf of the initramfs: one `options` line per module in the
/// manifest's `[kernel.module_options]` (busybox modprobe reads /etc/modprobe.d).
pub fn modprobe_conf(board: &Board) -> String {
    let mut s = format!("# Generated from board/{}.toml [kernel.module_options] by the image tool.\n", board.name);
    for (m, o) in &board.kernel.module_options {
        writeln!(s, "options {m} {}", o.trim()).unwrap();
    }
    s
}

pub(crate) fn cpio_gz(dir: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd '{}' && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -9n > '{}'",
        dir.display(),
        out.display()
    );
    run(Command::new("sh").args(["-c", &script]))
}

fn build_rootfs(
    o: &Options,
    board: &Board,
    busybox: &Path,
    dir: &Path,
    toml: &str,
    release: &str,
    vkey: Option<&Path>,
) -> Result<()> {
    copy_tree(&o.repo.join("image/rootfs"), dir)?;
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "data",
        "boot/ctl",
        "root",
        "etc/lucid/ota-keys",
        "var",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    // One symlink per applet, where busybox itself says it belongs.
    let list = run_output(Command::new("qemu-aarch64-static").arg(busybox).arg("--list-full"))?;
    for applet in list.lines().filter(|l| !l.is_empty()) {
        let link = dir.join(applet);
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir_all(link.parent().unwrap())?;
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link)?;
    }
    std::fs::copy(&o.lucidd, dir.join("usr/bin/lucidd"))?;
    set_mode(&dir.join("usr/bin/lucidd"), 0o755)?;
    for (path, text) in &board.rootfs.files {
        let dest = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::write(&dest, text)?;
        if path.trim_start_matches('/').starts_with("etc/lucid/rc.d/") {
            set_mode(&dest, 0o755)?;
        }
    }
    if board.console_shell {
        // Test variant: busybox init runs a shell on the console (respawned on exit).
        let inittab = dir.join("etc/inittab");
        let mut t = std::fs::read_to_string(&inittab)?;
        t.push_str("# Test variant (console_shell = true): a root shell on the console for the hil harness.\n::respawn:-/bin/sh\n");
        std::fs::write(&inittab, t)?;
    }
    install_generated(board, dir, toml, release, vkey)
}

/// What the build generates into a root file system from the manifest, on top of the
/// shared overlay (image/rootfs) and a busybox: mount points, `/var` links,
/// `/etc/lucid/{lucidd.toml,release,board.env}`, the OTA key, `/etc/hostname`,
/// `/etc/fstab`. The Debian build and `xtask rootfs-files` (Buildroot's post-build) both
/// call it, so the two roots agree. Existing `/var` links (Buildroot's skeleton) are kept.
pub(crate) fn install_generated(
    board: &Board,
    dir: &Path,
    toml: &str,
    release: &str,
    vkey: Option<&Path>,
) -> Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "data",
        "boot/ctl",
        "root",
        "etc/lucid/ota-keys",
        "var",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    for (l, t) in [("var/tmp", "/tmp"), ("var/run", "/run"), ("var/log", "/tmp")] {
        if dir.join(l).symlink_metadata().is_err() {
            std::os::unix::fs::symlink(t, dir.join(l))?;
        }
    }
    std::fs::write(dir.join("etc/lucid/lucidd.toml"), toml)?;
    std::fs::write(dir.join("etc/lucid/release"), release)?;
    if let Some(v) = vkey {
        std::fs::copy(v, dir.join("etc/lucid/ota-keys").join(v.file_name().unwrap()))?;
    }
    std::fs::write(dir.join("etc/hostname"), format!("{}\n", board.rootfs.hostname))?;
    // Empty: rcS does not arm it (no watchdog, or a test variant whose emulator models it wrong).
    let wd = board.hardware.watchdog.as_ref().filter(|w| w.arm).map(|w| w.timeout_secs.to_string()).unwrap_or_default();
    // An emulated board's NIC is known; a real one's is whichever of these the Pi has.
    let ifaces = board.qemu.as_ref().map_or("eth0 end0 usb0", |q| q.nic.guest_ifaces());
    let net_wait = board.qemu.as_ref().map_or(0, |q| q.nic.guest_wait_secs());
    std::fs::write(
        dir.join("etc/lucid/board.env"),
        format!(
            "# Generated from board/{}.toml by the image tool.\nLUCID_BOARD={}\nLUCID_BOOTCTL_DEV={}\nLUCID_DATA_DEV={}\nLUCID_DATA_DISK={}\nLUCID_DATA_PART={}\nLUCID_WATCHDOG_TIMEOUT={}\nLUCID_NET_IFACES=\"{}\"\nLUCID_NET_WAIT_SECS={}\n",
            board.name,
            board.name,
            board.part(1),
            board.part(DATA_PARTITION),
            // `lucidd grow-data` grows the data partition to the end of this disk at boot.
            board.boot.disk,
            DATA_PARTITION,
            wd,
            ifaces,
            net_wait
        ),
    )?;
    std::fs::write(
        dir.join("etc/fstab"),
        format!(
            "# Mounted by /etc/init.d/rcS; listed for reference and for `mount /data`.\n{} /boot/ctl vfat rw,noatime,sync 0 0\n{} /data ext4 noatime 0 0\n",
            board.part(1),
            board.part(DATA_PARTITION)
        ),
    )?;
    Ok(())
}

/// The files of a boot partition. They are the same for both slots on every board (the
/// slot is told at boot time), so one OTA `boot` payload fits either; `_slot` is kept for
/// callers' clarity only.
fn fill_boot(board: &Board, _slot: char, f: &BootFiles, dir: &Path) -> Result<()> {
    let kernel = f.kernel.as_path();
    std::fs::copy(&f.initrd, dir.join("initrd.img"))?;
    let base_args = format!("console={} {}", board.boot.console, board.kernel.cmdline).trim().to_owned();
    match board.kernel.image {
        KernelImage::Image => {
            // Debian's arm64 "vmlinuz" is in fact an uncompressed Image (EFI stub); older
            // or other kernels may be gzip'd, which booti cannot start.
            let mut magic = [0u8; 2];
            std::io::Read::read_exact(&mut std::fs::File::open(kernel)?, &mut magic)?;
            if magic == [0x1f, 0x8b] {
                let f = std::fs::File::create(dir.join("Image"))?;
                let st = Command::new("gzip").arg("-dc").arg(kernel).stdout(f).status()?;
                if !st.success() {
                    bail!("gzip -dc {} failed", kernel.display());
                }
            } else {
                std::fs::copy(kernel, dir.join("Image"))?;
            }
        }
        KernelImage::Vmlinuz => {
            std::fs::copy(kernel, dir.join("vmlinuz"))?;
        }
    }
    match board.boot.method {
        BootMethod::UbootEnv => {
            // Slot-independent: boot.scr adds root= and lucid.slot=, so one boot.vfat
            // serves either slot (the OTA bundle carries just one).
            std::fs::write(dir.join("bootargs.env"), format!("lucid_args={base_args}\n"))?;
            for (src, dt) in &f.dtbs {
                let dest = dir.join("dtbs").join(dt);
                std::fs::create_dir_all(dest.parent().unwrap())?;
                std::fs::copy(src, dest)?;
            }
        }
        BootMethod::RpiTryboot => {
            // Slot-independent too: no root= or lucid.slot=. The initramfs and lucidd take
            // the slot from the partition the firmware booted (device tree
            // chosen/bootloader/partition: 2 = a, 3 = b), so one boot.vfat fits p2 or p3.
            std::fs::write(dir.join("cmdline.txt"), format!("{base_args}\n"))?;
            std::fs::write(dir.join("config.txt"), board.boot.config_txt.join("\n") + "\n")?;
            for (src, dt) in &f.dtbs {
                let name = Path::new(dt).file_name().unwrap();
                std::fs::copy(src, dir.join(name))?;
            }
            copy_firmware(board, f.firmware_dir.as_deref(), dir)?;
        }
    }
    Ok(())
}

fn copy_firmware(board: &Board, fw: Option<&Path>, dir: &Path) -> Result<()> {
    if let Some(fw) = fw {
        for f in &board.boot.firmware_files {
            let src = fw.join(f);
            std::fs::copy(&src, dir.join(f)).with_context(|| format!("firmware file {}", src.display()))?;
        }
    }
    Ok(())
}

/// p1: which slot boots.
fn fill_bootctl(repo: &Path, board: &Board, f: &BootFiles, work: &Path, dir: &Path) -> Result<()> {
    // The partition a PC shows: where an owner finds what they may write (lucidd's
    // `settings` module; docs/image.md, "First boot").
    std::fs::copy(repo.join("image/bootctl/lucid.toml.example"), dir.join("lucid.toml.example"))?;
    match board.boot.method {
        BootMethod::RpiTryboot => {
            std::fs::write(dir.join("autoboot.txt"), AUTOBOOT_TXT)?;
        }
        BootMethod::UbootEnv => {
            let src = std::fs::read_to_string(repo.join("image/uboot/boot.cmd"))?
                .replace("@ROOT_A@", &board.part(5))
                .replace("@ROOT_B@", &board.part(6));
            let cmd = work.join("boot.cmd");
            std::fs::write(&cmd, src)?;
            run(Command::new("mkimage")
                .args(["-q", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "lucid A/B", "-d"])
                .arg(&cmd)
                .arg(dir.join("boot.scr")))?;
            std::fs::write(dir.join("lucid.env"), env_file('a', None))?;
            std::fs::write(dir.join("lucid-a.env"), env_file('a', None))?;
            std::fs::write(dir.join("lucid-b.env"), env_file('b', None))?;
            if let Some(u) = &f.uboot {
                // A Pi with U-Boot: its boot ROM reads firmware, config.txt and the device
                // tree from p1, then starts U-Boot, which runs boot.scr.
                std::fs::copy(u, dir.join("u-boot.bin"))?;
                std::fs::write(dir.join("config.txt"), board.boot.config_txt.join("\n") + "\n")?;
                for (src, dt) in &f.dtbs {
                    std::fs::copy(src, dir.join(Path::new(dt).file_name().unwrap()))?;
                }
                copy_firmware(board, f.firmware_dir.as_deref(), dir)?;
            }
        }
    }
    Ok(())
}

/// The Pi 4/5 tryboot_a_b file on p1 (fixed by the daemon interface).
pub const AUTOBOOT_TXT: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

/// `lucid.env` in `env export -t` text form, exactly what lucidd writes.
pub fn env_file(active: char, try_slot: Option<char>) -> String {
    format!("lucid_active={active}\nlucid_try={}\n", try_slot.map(String::from).unwrap_or_default())
}

/// A FAT size for the files under `dir`: their total plus 10 % and 4 MiB (cluster
/// slack, the FATs and root directory), in whole MiB, refused above `max_mib`.
pub fn fat_size_mib(dir: &Path, max_mib: u32) -> Result<u32> {
    fn total(p: &Path) -> Result<u64> {
        let mut n = 0;
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let m = e.metadata()?;
            n += if m.is_dir() { total(&e.path())? } else { m.len() };
        }
        Ok(n)
    }
    let bytes = total(dir)?;
    let mib = (bytes + bytes / 10 + (4 << 20)).div_ceil(1 << 20);
    if mib > max_mib as u64 {
        bail!(
            "{} holds {bytes} bytes: a FAT for it needs {mib} MiB, more than the {max_mib} MiB partition",
            dir.display()
        );
    }
    Ok(mib as u32)
}

fn make_vfat(dir: &Path, out: &Path, size_mib: u32, label: &str) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", label])
        .arg(out)
        .arg((size_mib as u64 * 1024).to_string())
        .stdout(std::process::Stdio::null()))?;
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut c = Command::new("mcopy");
    c.arg("-s").arg("-p").arg("-i").arg(out);
    c.args(&entries);
    c.arg("::/");
    c.env("MTOOLS_SKIP_CHECK", "1");
    run(&mut c)
}

/// genimage layout: MBR, p1-p3 primary FAT, p4 extended, p5-p7 logical.
pub fn genimage_config(board: &Board, img_name: &str) -> String {
    let p = &board.partitions;
    format!(
        r#"# Generated by image/xtask from board/{board}.toml. Layout shared with lucidd's OTA code.
image {img} {{
  hdimage {{
    partition-table-type = "mbr"
    extended-partition = 4
    align = 1M
  }}
  partition bootctl {{
    partition-type = 0xC
    bootable = true
    image = "bootctl.vfat"
    size = {ctl}M
  }}
  partition boot-a {{
    partition-type = 0xC
    image = "boot-a.vfat"
    size = {boot}M
  }}
  partition boot-b {{
    partition-type = 0xC
    image = "boot-b.vfat"
    size = {boot}M
  }}
  partition root-a {{
    partition-type = 0x83
    image = "rootfs.squashfs"
    size = {root}M
  }}
  partition root-b {{
    partition-type = 0x83
    image = "rootfs.squashfs"
    size = {root}M
  }}
  partition data {{
    partition-type = 0x83
    image = "data.ext4"
    size = {data}M
  }}
}}
"#,
        board = board.name,
        img = img_name,
        ctl = p.bootctl_mib,
        boot = p.boot_mib,
        root = p.root_mib,
        data = p.data_mib,
    )
}

fn compress(image: &Path, how: Compress) -> Result<Option<PathBuf>> {
    let (ext, cmd): (&str, Vec<&str>) = match how {
        Compress::None => return Ok(None),
        Compress::Xz => ("xz", vec!["xz", "-T0", "-6", "-k", "-f"]),
        Compress::Zstd => ("zst", vec!["zstd", "-q", "-T0", "-19", "-f", "-k"]),
    };
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]).arg(image);
    run(&mut c)?;
    let mut out = image.as_os_str().to_owned();
    out.push(format!(".{ext}"));
    Ok(Some(PathBuf::from(out)))
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
    }

    #[test]
    fn env_file_is_what_the_daemon_writes() {
        assert_eq!(env_file('a', None), "lucid_active=a\nlucid_try=\n");
        assert_eq!(env_file('a', Some('b')), "lucid_active=a\nlucid_try=b\n");
    }

    #[test]
    fn boot_fat_is_sized_to_its_contents_and_fits_the_partition() {
        let dir = std::env::temp_dir().join(format!("xtask-fat-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dtbs")).unwrap();
        std::fs::write(dir.join("Image"), vec![0u8; 20 << 20]).unwrap();
        std::fs::write(dir.join("dtbs/x.dtb"), vec![0u8; 1 << 20]).unwrap();
        // 21 MiB of files (one in a subdirectory) + 10 % + 4 MiB = 27.1 -> 28 MiB.
        assert_eq!(fat_size_mib(&dir, 64).unwrap(), 28);
        assert!(fat_size_mib(&dir, 27).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn update_table_names_each_slots_partitions() {
        let q = crate::board::load(&repo(), "qemu-aarch64-virt", None).unwrap();
        let text = lucidd_config(&q).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        let u = &t["update"];
        assert_eq!(u["boot_control"].as_str(), Some("uboot-env"));
        assert_eq!(u["slots"]["a"]["root"].as_str(), Some("/dev/vda5"));
        assert_eq!(u["slots"]["b"]["boot"].as_str(), Some("/dev/vda3"));
        assert_eq!(t["data_dir"].as_str(), Some("/data/lucid"));
        let p4 = crate::board::load(&repo(), "rpi4", None).unwrap();
        let t: toml::Table = toml::from_str(&lucidd_config(&p4).unwrap()).unwrap();
        assert_eq!(t["update"]["boot_control"].as_str(), Some("rpi-tryboot"));
        assert_eq!(t["update"]["slots"]["b"]["root"].as_str(), Some("/dev/mmcblk0p6"));
    }

    #[test]
    fn genimage_layout_has_seven_partitions_in_order() {
        let q = crate::board::load(&repo(), "qemu-aarch64-virt", None).unwrap();
        let c = genimage_config(&q, "x.img");
        let order = ["bootctl", "boot-a", "boot-b", "root-a", "root-b", "data"];
        let pos: Vec<usize> = order.iter().map(|n| c.find(&format!("partition {n} ")).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
        assert!(c.contains("extended-partition = 4"));
    }

    #[test]
    fn boot_script_consumes_the_trial_before_booting() {
        let s = std::fs::read_to_string(repo().join("image/uboot/boot.cmd")).unwrap();
        let write = s.find("fatwrite").unwrap();
        let boot = s.find("\nbooti ").unwrap();
        assert!(write < boot);
        assert!(s.contains("@ROOT_A@") && s.contains("@ROOT_B@"));
    }

    #[test]
    fn out_of_tree_modules_join_the_initramfs_subset_with_their_dependencies() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "k/mc.ko:\nk/videodev.ko: k/mc.ko\nk/vivid.ko: k/videodev.ko k/mc.ko\nk/m2m.ko: k/videodev.ko k/mc.ko\nk/virtio_pci.ko:\nk/i6300esb.ko:\nk/unused.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "k/squashfs.ko\nk/vfat.ko\nk/nls_cp437.ko\nk/nls_ascii.ko\nk/crc32c_generic.ko\nk/ext4.ko\nk/virtio_blk.ko\nk/virtio_net.ko\n").unwrap();
        let b = crate::board::load(&repo(), "qemu-aarch64-virt", Some("camera")).unwrap();
        let vicodec = Built {
            name: "vicodec".into(),
            ko: PathBuf::from("/cache/vicodec.ko"),
            depends: vec!["m2m".into(), "videodev".into()],
        };
        let set = resolve_modules(&b, d.path(), std::slice::from_ref(&vicodec)).unwrap();
        assert_eq!(set.load, ["virtio_pci", "i6300esb", "vivid", "vicodec"].map(String::from));
        assert_eq!(set.sources["updates/vicodec.ko"], PathBuf::from("/cache/vicodec.ko"));
        assert!(set.dep.lines().any(|l| l == "updates/vicodec.ko: k/m2m.ko k/videodev.ko k/mc.ko"), "{}", set.dep);
        assert!(set.dep.lines().any(|l| l == "k/vivid.ko: k/videodev.ko k/mc.ko"), "{}", set.dep);
        assert!(!set.dep.contains("unused"));
        assert_eq!(set.dep.lines().count(), set.files.len(), "one line per installed module");
        // Without the built module, the variant's vicodec is an unknown module.
        let e = resolve_modules(&b, d.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("vicodec"), "{e}");
        assert_eq!(
            modprobe_conf(&b).lines().nth(1),
            Some("options vivid n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0")
        );
    }

    #[test]
    fn autoboot_txt_is_the_fixed_interface() {
        assert_eq!(AUTOBOOT_TXT, "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n");
    }
}
