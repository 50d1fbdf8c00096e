//! The Buildroot entries into the shared image step (`buildroot/board/post-*.sh`):
//!
//! - `xtask rootfs-files BOARD TARGET_DIR` (post-build): installs into Buildroot's target
//!   tree what the Debian build generates from the same manifest (`/etc/lucid/*`, the OTA
//!   key, `/etc/fstab`, mount points), after `lucidd config` accepted the config.
//! - `xtask image BOARD --from-buildroot BINARIES_DIR --target-dir TARGET_DIR`
//!   (post-image): the same boot partitions, p1 boot control, data, genimage layout,
//!   slot payloads and OTA bundle as `xtask image BOARD`, made from Buildroot's `Image`,
//!   `*.dtb`, `rpi-firmware/`, `u-boot.bin` and `rootfs.squashfs`; the initramfs from the
//!   target tree's busybox and kernel modules.
//!
//! Buildroot's lucidd may be dynamically linked (musl): it runs under qemu-user with
//! `-L TARGET_DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::assemble::{self, BootFiles, Compress, Tail, out_name};
use crate::board;

/// `xtask rootfs-files`: returns whether the `[update]` table went in (see
/// `assemble::check_config`).
pub fn rootfs_files(
    repo: &Path,
    board: &str,
    variant: Option<&str>,
    target: &Path,
    build: u64,
    keys_dir: &Path,
) -> Result<bool> {
    let b = board::load(repo, board, variant)?;
    let lucidd = target.join("usr/bin/lucidd");
    if !lucidd.exists() {
        bail!("{} has no usr/bin/lucidd: is BR2_PACKAGE_LUCIDD set?", target.display());
    }
    let work = tempfile_dir("rootfs-files")?;
    let r = (|| {
        let (toml, with_update) =
            assemble::check_config(&lucidd, Some(target), &work, &b, &assemble::lucidd_config(&b)?)?;
        let keys = assemble::ota_keys(keys_dir, &lucidd, Some(target))?;
        let release = assemble::release_text(&b, build);
        assemble::install_generated(&b, target, &toml, &release, keys.as_ref().map(|k| k.1.as_path()))?;
        if !with_update {
            eprintln!(
                "xtask: NOTE: the daemon does not accept an [update] table yet; lucidd.toml was written without it"
            );
        }
        Ok(with_update)
    })();
    let _ = std::fs::remove_dir_all(&work);
    r
}

pub struct Options {
    pub repo: PathBuf,
    pub board: String,
    pub variant: Option<String>,
    pub build: u64,
    /// Buildroot's BINARIES_DIR (output/images).
    pub binaries: PathBuf,
    /// Buildroot's TARGET_DIR (output/target), after `rootfs-files` ran on it.
    pub target: PathBuf,
    pub out: PathBuf,
    /// The keys `rootfs-files` used (the bundle must be signed by the installed key).
    pub keys: PathBuf,
    pub compress: Compress,
}

/// `xtask image --from-buildroot`.
pub fn image(o: &Options) -> Result<assemble::Outputs> {
    let b = board::load(&o.repo, &o.board, o.variant.as_deref())?;
    let bin = &o.binaries;
    let target = &o.target;
    let out_dir = o.out.join(out_name(&o.board, o.variant.as_deref(), o.build));
    let work = out_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;

    // The rootfs was made by Buildroot from TARGET_DIR after post-build: its release file
    // must be this build's.
    let release = assemble::release_text(&b, o.build);
    let installed = std::fs::read_to_string(target.join("etc/lucid/release")).with_context(|| {
        format!("{}/etc/lucid/release: did post-build (`xtask rootfs-files`) run?", target.display())
    })?;
    if installed != release {
        bail!(
            "TARGET_DIR's /etc/lucid/release is {installed:?}, this image is {release:?}: use the same --build (LUCID_BUILD) in both hooks"
        );
    }
    let rootfs = bin.join("rootfs.squashfs");
    need(&rootfs, "BR2_TARGET_ROOTFS_SQUASHFS")?;
    let kernel = bin.join("Image");
    need(&kernel, "BR2_LINUX_KERNEL (arm64 Image)")?;

    // Device trees: the ones Buildroot built (BR2_LINUX_KERNEL_INTREE_DTS_NAME), named
    // like the manifest's (its directory, e.g. broadcom/, for U-Boot's dtbs/${fdtfile}).
    let prefix =
        b.boot.device_trees.first().and_then(|d| Path::new(d).parent()).map(Path::to_path_buf).unwrap_or_default();
    let mut dtbs: Vec<(PathBuf, String)> = std::fs::read_dir(bin)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "dtb"))
        .map(|p| {
            let name = prefix.join(p.file_name().unwrap()).to_string_lossy().into_owned();
            (p, name)
        })
        .collect();
    dtbs.sort_by(|a, b| a.1.cmp(&b.1));
    if dtbs.is_empty() && !b.boot.device_trees.is_empty() {
        bail!(
            "board {} needs device trees ({:?}) but {} has no *.dtb: BR2_LINUX_KERNEL_INTREE_DTS_NAME",
            b.name,
            b.boot.device_trees,
            bin.display()
        );
    }
    let firmware_dir = match b.boot.firmware_package {
        Some(_) => {
            let d = bin.join("rpi-firmware");
            for f in &b.boot.firmware_files {
                need(&d.join(f), "BR2_PACKAGE_RPI_FIRMWARE")?;
            }
            Some(d)
        }
        None => None,
    };
    let uboot = match b.boot.uboot_file {
        Some(_) => {
            let u = bin.join("u-boot.bin");
            need(&u, "BR2_TARGET_UBOOT")?;
            Some(u)
        }
        None => None,
    };

    // Initramfs: the target's busybox (with musl's loader when it is dynamic) and modules.
    let initramfs = work.join("initramfs");
    let (kdir, kver) = target_modules(target)?;
    let busybox = target.join("bin/busybox");
    need(&busybox, "BR2_INIT_BUSYBOX")?;
    // Out-of-tree modules are the Debian build's (kmod.rs): in Buildroot they are kernel
    // module packages, already in TARGET_DIR's modules.dep, so they resolve as the
    // kernel's own here.
    assemble::build_initramfs(&o.repo, &b, &kdir, &kver, &busybox, &initramfs, &[])?;
    copy_loader(target, &initramfs)?;
    let initrd = work.join("initrd.img");
    assemble::cpio_gz(&initramfs, &initrd)?;

    let lucidd = target.join("usr/bin/lucidd");
    let keys = assemble::ota_keys(&o.keys, &lucidd, Some(target))?;
    if let Some((_, vkey)) = &keys {
        let inst = target.join("etc/lucid/ota-keys").join(vkey.file_name().unwrap());
        if std::fs::read(&inst).ok() != Some(std::fs::read(vkey)?) {
            bail!(
                "{} is not {}: the bundle would be signed with a key the image does not trust (same --keys / LUCID_OTA_* in both hooks)",
                inst.display(),
                vkey.display()
            );
        }
    }
    let files = BootFiles { kernel, dtbs, firmware_dir, uboot, initrd: initrd.clone() };
    let img_name = format!("{}.img", out_name(&o.board, o.variant.as_deref(), o.build));
    let t = Tail {
        repo: &o.repo,
        board: &b,
        work: &work,
        out_dir: &out_dir,
        img_name: &img_name,
        files: &files,
        rootfs: &rootfs,
        release: &release,
        lucidd: &lucidd,
        sysroot: Some(target),
        build: o.build,
        key: keys.as_ref().map(|k| k.0.as_path()),
        compress: o.compress,
    };
    let (image, compressed, bundle) = assemble::finish(&t)?;
    let mut sizes = vec![
        ("image".to_owned(), std::fs::metadata(&image)?.len()),
        ("rootfs.squashfs".to_owned(), std::fs::metadata(&rootfs)?.len()),
        ("initrd.img".to_owned(), std::fs::metadata(&initrd)?.len()),
    ];
    for p in compressed.iter().chain(bundle.iter()) {
        sizes.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::metadata(p)?.len()));
    }
    Ok(assemble::Outputs {
        image,
        compressed,
        bundle,
        rootfs: out_dir.join("rootfs.squashfs"),
        boot: out_dir.join("boot.vfat"),
        sizes,
    })
}

fn need(p: &Path, option: &str) -> Result<()> {
    if !p.exists() {
        bail!("{} is missing (Buildroot option {option})", p.display());
    }
    Ok(())
}

/// The one `lib/modules/KVER` of the target tree (Buildroot runs depmod there).
fn target_modules(target: &Path) -> Result<(PathBuf, String)> {
    let kver = crate::deb::kernel_version(target).context("the Buildroot target tree")?;
    let kdir = target.join("lib/modules").join(&kver);
    need(&kdir.join("modules.dep"), "BR2_LINUX_KERNEL (modules installed and depmod run)")?;
    Ok((kdir, kver))
}

/// musl's dynamic loader (= its libc) into the initramfs, for a dynamically linked busybox.
fn copy_loader(target: &Path, initramfs: &Path) -> Result<()> {
    for e in std::fs::read_dir(target.join("lib")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ld-musl-") && name.ends_with(".so.1") {
            std::fs::create_dir_all(initramfs.join("lib"))?;
            // std::fs::copy follows the link (ld-musl-aarch64.so.1 -> libc.so).
            std::fs::copy(e.path(), initramfs.join("lib").join(&name))?;
        }
    }
    Ok(())
}

fn tempfile_dir(what: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("lucid-xtask-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    //! A FAKE Buildroot output made from the Debian packages the Debian build caches
    //! (out/cache, LUCID_IMAGE_CACHE): TARGET_DIR = the overlay + static busybox + lucidd +
    //! the kernel's modules; BINARIES_DIR = the Debian kernel as `Image`, the manifest's
    //! DTBs flat, `rpi-firmware/`, `u-boot.bin`, and a squashfs made here from TARGET_DIR
    //! after `rootfs_files`. Real genimage, real file systems, read back with sfdisk and
    //! mtools.
    use super::*;
    use crate::deb::{DebCache, kernel_version};
    use crate::{copy_tree, run, run_output};
    use std::process::Command;

    fn cache() -> DebCache {
        let dir = std::env::var_os("LUCID_IMAGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("out/cache"));
        DebCache::new(dir).unwrap()
    }

    /// Files of partition `part` of `img` (mtools at the partition's byte offset).
    fn fat_file(img: &Path, offset: u64, name: &str) -> Vec<u8> {
        let out = Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{offset}", img.display()))
            .arg(format!("::/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "mtype {name} at {offset}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn fat_list(img: &Path, offset: u64) -> String {
        run_output(
            Command::new("mdir")
                .arg("-b")
                .arg("-i")
                .arg(format!("{}@@{offset}", img.display()))
                .arg("::/")
                .env("MTOOLS_SKIP_CHECK", "1"),
        )
        .unwrap()
    }

    /// (start, size, type, bootable) per partition, from sfdisk.
    fn table(img: &Path) -> Vec<(u64, u64, String, bool)> {
        let j = run_output(Command::new("sfdisk").arg("--dump").arg(img)).unwrap();
        j.lines()
            .filter(|l| l.contains(": start="))
            .map(|l| {
                let field = |k: &str| l.split(k).nth(1).unwrap().split(',').next().unwrap().trim().to_owned();
                (
                    field("start=").parse().unwrap(),
                    field("size=").parse().unwrap(),
                    field("type="),
                    l.contains("bootable"),
                )
            })
            .collect()
    }

    fn build_from_fake_buildroot(name: &str) {
        let repo = crate::repo_root();
        let b = board::load(&repo, name, None).unwrap();
        let lucidd = repo.join("target/aarch64-unknown-linux-musl/release/lucidd");
        assert!(
            lucidd.exists(),
            "needs the static lucidd: cargo build --release --target aarch64-unknown-linux-musl -p lucidd"
        );
        let c = cache();
        let kroot = c.unpack(&b.kernel.package).unwrap();
        let kver = kernel_version(&kroot).unwrap();
        let kdir = kroot.join("lib/modules").join(&kver);
        assert!(kdir.join("modules.dep").exists(), "run ./scripts/image once (depmod of the cached kernel)");
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let bin = tmp.path().join("images");
        let keys = tmp.path().join("keys");

        // TARGET_DIR as Buildroot leaves it before post-build: overlay, busybox, lucidd, modules.
        copy_tree(&repo.join("image/rootfs"), &target).unwrap();
        std::fs::create_dir_all(target.join("bin")).unwrap();
        std::fs::create_dir_all(target.join("usr/bin")).unwrap();
        std::fs::create_dir_all(target.join("lib/modules")).unwrap();
        std::fs::copy(c.unpack(&b.rootfs.busybox_package).unwrap().join("bin/busybox"), target.join("bin/busybox"))
            .unwrap();
        std::fs::copy(&lucidd, target.join("usr/bin/lucidd")).unwrap();
        std::os::unix::fs::symlink(&kdir, target.join("lib/modules").join(&kver)).unwrap();
        // Buildroot's skeleton already has /var/log: kept.
        std::fs::create_dir_all(target.join("var")).unwrap();
        std::os::unix::fs::symlink("../tmp", target.join("var/log")).unwrap();

        // post-build.
        rootfs_files(&repo, name, None, &target, 7, &keys).unwrap();
        let etc = target.join("etc/lucid");
        let toml: toml::Table = toml::from_str(&std::fs::read_to_string(etc.join("lucidd.toml")).unwrap()).unwrap();
        assert_eq!(toml["data_dir"].as_str(), Some("/data/lucid"));
        assert_eq!(
            std::fs::read_to_string(etc.join("release")).unwrap(),
            format!("board={name}\nversion={}\nbuild=7\n", b.full_version())
        );
        let vkey = std::fs::read(keys.join("dev.vkey")).unwrap();
        assert_eq!(std::fs::read(etc.join("ota-keys/dev.vkey")).unwrap(), vkey);
        assert!(
            std::fs::read_to_string(target.join("etc/fstab")).unwrap().contains(&format!("{} /data ext4", b.part(7)))
        );
        let env = std::fs::read_to_string(etc.join("board.env")).unwrap();
        assert!(env.contains(&format!("LUCID_BOARD={name}\n")));
        // What rcS hands `lucidd grow-data`: the whole disk and the data partition's number.
        assert!(env.contains(&format!("LUCID_DATA_DISK={}\nLUCID_DATA_PART=7\n", b.boot.disk)), "{env}");
        assert!(target.join("data").is_dir() && target.join("boot/ctl").is_dir());
        assert_eq!(std::fs::read_link(target.join("var/log")).unwrap(), Path::new("../tmp"));

        // BINARIES_DIR as Buildroot leaves it before post-image.
        std::fs::create_dir_all(bin.join("rpi-firmware")).unwrap();
        run(Command::new("mksquashfs").arg(&target).arg(bin.join("rootfs.squashfs")).args([
            "-noappend",
            "-all-root",
            "-no-progress",
            "-quiet",
            "-comp",
            "gzip",
        ]))
        .unwrap();
        std::fs::copy(kroot.join("boot").join(format!("vmlinuz-{kver}")), bin.join("Image")).unwrap();
        let dtb_root = kroot.join("usr/lib").join(format!("linux-image-{kver}"));
        for dt in &b.boot.device_trees {
            std::fs::copy(dtb_root.join(dt), bin.join(Path::new(dt).file_name().unwrap())).unwrap();
        }
        if let Some(p) = &b.boot.firmware_package {
            let fw = c.unpack(p).unwrap().join("usr/lib/raspi-firmware");
            for f in &b.boot.firmware_files {
                std::fs::copy(fw.join(f), bin.join("rpi-firmware").join(f)).unwrap();
            }
        }
        if let (Some(p), Some(f)) = (&b.boot.uboot_package, &b.boot.uboot_file) {
            std::fs::copy(c.unpack(p).unwrap().join(f), bin.join("u-boot.bin")).unwrap();
        }

        // A wrong build number between the hooks is refused.
        let mut o = Options {
            repo: repo.clone(),
            board: name.to_owned(),
            variant: None,
            build: 8,
            binaries: bin.clone(),
            target: target.clone(),
            out: tmp.path().join("out"),
            keys: keys.clone(),
            compress: Compress::None,
        };
        assert!(image(&o).unwrap_err().to_string().contains("same --build"));
        o.build = 7;
        let r = image(&o).unwrap();
        let img = &r.image;
        assert_eq!(img, &tmp.path().join(format!("out/{name}-build7/{name}-build7.img")));

        // Partition table: p1-p3 FAT (p1 bootable), p4 extended, p5-p7 Linux, manifest sizes.
        let t = table(img);
        assert_eq!(t.len(), 7, "{t:?}");
        let types: Vec<&str> = t.iter().map(|p| p.2.as_str()).collect();
        assert_eq!(types, ["c", "c", "c", "f", "83", "83", "83"], "{t:?}");
        assert_eq!(t.iter().map(|p| p.3).collect::<Vec<_>>(), [true, false, false, false, false, false, false]);
        let mib = 2048;
        let p = &b.partitions;
        assert_eq!(t[0].1, p.bootctl_mib as u64 * mib);
        assert_eq!((t[1].1, t[2].1), (p.boot_mib as u64 * mib, p.boot_mib as u64 * mib));
        assert_eq!(
            (t[4].1, t[5].1, t[6].1),
            (p.root_mib as u64 * mib, p.root_mib as u64 * mib, p.data_mib as u64 * mib)
        );
        let off = |i: usize| t[i].0 * 512;

        // p1: boot control.
        let p1 = fat_list(img, off(0));
        match b.boot.method {
            board::BootMethod::UbootEnv => {
                assert_eq!(fat_file(img, off(0), "lucid.env"), assemble::env_file('a', None).into_bytes());
                assert_eq!(fat_file(img, off(0), "lucid-b.env"), assemble::env_file('b', None).into_bytes());
                assert!(fat_file(img, off(0), "boot.scr").len() > 64);
                if b.boot.uboot_file.is_some() {
                    assert_eq!(fat_file(img, off(0), "u-boot.bin"), std::fs::read(bin.join("u-boot.bin")).unwrap());
                    assert!(p1.contains("bootcode.bin") && p1.contains("config.txt"), "{p1}");
                    assert!(p1.contains("bcm2837-rpi-3-b.dtb"), "{p1}");
                }
            }
            board::BootMethod::RpiTryboot => {
                assert_eq!(fat_file(img, off(0), "autoboot.txt"), assemble::AUTOBOOT_TXT.as_bytes());
            }
        }

        // p2 and p3: the same boot files, Buildroot's kernel, the target's modules.
        let kname = match b.kernel.image {
            board::KernelImage::Image => "Image",
            board::KernelImage::Vmlinuz => "vmlinuz",
        };
        for i in [1, 2] {
            assert_eq!(fat_file(img, off(i), kname), std::fs::read(bin.join("Image")).unwrap(), "kernel on p{}", i + 1);
        }
        let initrd = fat_file(img, off(1), "initrd.img");
        std::fs::write(tmp.path().join("initrd.img"), &initrd).unwrap();
        let listing = run_output(
            Command::new("sh")
                .arg("-c")
                .arg(format!("zcat '{}' | cpio -it --quiet", tmp.path().join("initrd.img").display())),
        )
        .unwrap();
        assert!(listing.lines().any(|l| l == "init") && listing.lines().any(|l| l == "bin/busybox"), "{listing}");
        assert!(listing.contains(&format!("lib/modules/{kver}/modules.dep")), "{listing}");
        assert!(listing.contains("squashfs.ko"), "{listing}");
        let p2 = fat_list(img, off(1));
        match b.boot.method {
            board::BootMethod::UbootEnv => {
                let args = String::from_utf8(fat_file(img, off(1), "bootargs.env")).unwrap();
                assert!(args.starts_with(&format!("lucid_args=console={}", b.boot.console)), "{args}");
            }
            board::BootMethod::RpiTryboot => {
                assert_eq!(fat_file(img, off(1), "cmdline.txt"), fat_file(img, off(2), "cmdline.txt"));
                assert_eq!(
                    String::from_utf8(fat_file(img, off(1), "config.txt")).unwrap(),
                    b.boot.config_txt.join("\n") + "\n"
                );
                for f in b.boot.firmware_files.iter().chain(["bcm2711-rpi-4-b.dtb".to_owned()].iter()) {
                    assert!(p2.contains(f.as_str()), "{f} not on p2: {p2}");
                }
            }
        }

        // The slot payloads: boot.vfat is p2's start, Buildroot's squashfs is p5 and p6.
        let disk = std::fs::read(img).unwrap();
        let boot = std::fs::read(&r.boot).unwrap();
        assert_eq!(&disk[off(1) as usize..off(1) as usize + boot.len()], &boot[..]);
        let sq = std::fs::read(bin.join("rootfs.squashfs")).unwrap();
        assert_eq!(std::fs::read(&r.rootfs).unwrap(), sq);
        for i in [4, 5] {
            assert_eq!(&disk[off(i) as usize..off(i) as usize + sq.len()], &sq[..], "p{}", i + 1);
        }
        // The OTA bundle, signed with the key the target trusts, names board and build.
        let bundle = r.bundle.expect("this lucidd has `bundle create`");
        assert_eq!(bundle.file_name().unwrap().to_string_lossy(), format!("{name}-{}-7.lucidota", b.full_version()));
        assert!(std::fs::metadata(&bundle).unwrap().len() > boot.len() as u64 + sq.len() as u64);
    }

    #[test]
    #[ignore = "needs the static aarch64 lucidd and the package cache of a ./scripts/image run; scripts/test runs it after the image step"]
    fn buildroot_outputs_make_the_qemu_image() {
        build_from_fake_buildroot("qemu-aarch64-virt");
    }

    #[test]
    #[ignore = "needs the static aarch64 lucidd and the package cache of a ./scripts/image run; scripts/test runs it after the image step"]
    fn buildroot_outputs_make_the_rpi3_image_with_uboot_and_firmware_on_p1() {
        build_from_fake_buildroot("rpi3");
    }

    #[test]
    #[ignore = "needs the static aarch64 lucidd and the package cache of a ./scripts/image run; scripts/test runs it after the image step"]
    fn buildroot_outputs_make_the_rpi4_tryboot_image() {
        build_from_fake_buildroot("rpi4");
    }
}
