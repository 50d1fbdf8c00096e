//! The QEMU command line for a board that has a `[qemu]` table, shared by `./scripts/qemu`
//! and the hil-tests harness. The image itself is never written: QEMU runs on a qcow2
//! overlay whose backing file is the pristine `out/BOARD/BOARD.img`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::board::{Board, QemuDrive, QemuNic};
use crate::run;

/// Host port -> guest port, default 18083..18087 -> 8083..8087.
pub fn default_forwards(host_base: u16) -> Vec<(u16, u16)> {
    (0..5).map(|i| (host_base + i, 8083 + i)).collect()
}

/// A copy-on-write overlay `disk` over `image` (replaced if it exists).
pub fn overlay(image: &Path, disk: &Path) -> Result<()> {
    let _ = std::fs::remove_file(disk);
    let image = image.canonicalize().with_context(|| format!("no image {}", image.display()))?;
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&image).arg(disk))
}

/// The overlay for booting `image` on `board`, `disk_size` bytes large when given (as if the
/// image were written to a card of that size: `./scripts/qemu --disk-size 4G`), else the
/// image's size. QEMU's SD card model refuses sizes that are not a power of two, so an SD
/// board's overlay is rounded up to one (a real card's size is whatever it is; the
/// partition table only uses the start). A size below the image's is refused: the card
/// would not hold it.
pub fn overlay_for(board: &Board, image: &Path, disk: &Path, disk_size: Option<u64>) -> Result<()> {
    overlay(image, disk)?;
    let len = std::fs::metadata(image)?.len();
    let size = disk_size.unwrap_or(len);
    if size < len {
        bail!("--disk-size {size} is smaller than the image {} ({len} bytes)", image.display());
    }
    let size =
        if board.qemu.as_ref().is_some_and(|q| q.drive == QemuDrive::Sd) { size.next_power_of_two() } else { size };
    if size != len {
        run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(disk).arg(size.to_string()))?;
    }
    Ok(())
}

/// A disk size as `qemu-img` spells one: bytes, or a number with a binary suffix (`K`, `M`,
/// `G`, `T`; `KiB`... and `KB`... mean the same here, as they do to qemu-img).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().with_context(|| format!("disk size {s:?}: no number"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        u => bail!("disk size {s:?}: unknown unit {u:?} (K, M, G or T)"),
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0).with_context(|| format!("disk size {s:?}: out of range"))
}

/// `qemu-system-aarch64` booting `disk` (qcow2) through the board's firmware (U-Boot), as the
/// board's `[qemu]` table describes the machine. `work` is the image's work dir
/// (`out/NAME/work`), where a `kernel`/`dtb` given there is found. The serial console is on
/// stdio; `interactive` adds QEMU's monitor mux (Ctrl-A X).
pub fn command(board: &Board, work: &Path, disk: &Path, forwards: &[(u16, u16)], interactive: bool) -> Result<Command> {
    let q = board.qemu.as_ref().with_context(|| format!("board {} has no [qemu] table", board.name))?;
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-machine", &q.machine]);
    if let Some(cpu) = &q.cpu {
        c.args(["-cpu", cpu]);
    }
    c.args(["-m", &q.memory_mib.to_string(), "-smp", &q.smp.to_string()]);
    if let Some(bios) = &q.bios {
        c.args(["-bios", bios]);
    }
    for (flag, file) in [("-kernel", &q.kernel), ("-dtb", &q.dtb)] {
        if let Some(f) = file {
            let p = work.join(f);
            if !p.exists() {
                bail!("{} {}: not in the image's work dir (build the image first)", flag, p.display());
            }
            c.arg(flag).arg(p);
        }
    }
    match q.drive {
        QemuDrive::VirtioBlk => {
            c.arg("-drive").arg(format!("if=none,file={},format=qcow2,id=hd0", disk.display()));
            c.args(["-device", "virtio-blk-pci,drive=hd0"]);
        }
        QemuDrive::Sd => {
            c.arg("-drive").arg(format!("if=sd,file={},format=qcow2", disk.display()));
        }
    }
    let fwd: String = forwards.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
    c.args(["-netdev", &format!("user,id=n0{fwd}")]);
    match q.nic {
        QemuNic::VirtioNetPci => c.args(["-device", "virtio-net-pci,netdev=n0,romfile="]),
        // Plugged in later through the monitor (`hotplug_devices`): QEMU 7.2's DWC2 loses a
        // device present from power-on once Linux's dwc2 resets the port ("Not connected"),
        // while one attached after that enumerates.
        QemuNic::UsbNet => c.args(["-usb"]),
    };
    for d in &q.devices {
        c.args(["-device", d]);
    }
    if q.console_serial == 0 {
        if interactive {
            c.arg("-nographic");
        } else {
            c.args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
        }
    } else {
        // The console is a later port: the ones before it go nowhere, and -nographic
        // (which would put the first port on stdio) is spelled out instead.
        c.args(["-display", "none"]);
        if !interactive {
            if hotplug_devices(board).is_empty() {
                c.args(["-monitor", "none"]);
            } else {
                c.arg("-monitor").arg(format!("unix:{},server,nowait", monitor_path(disk).display()));
            }
        }
        for _ in 0..q.console_serial {
            c.args(["-serial", "null"]);
        }
        c.args(["-serial", if interactive { "mon:stdio" } else { "stdio" }]);
    }
    Ok(c)
}

/// Devices to `device_add` on the monitor, in order, once the guest's USB host is up (see
/// `command`). Each has an `id=`, so a harness can `device_del` them again (in reverse)
/// before a reboot. The hub is ours because QEMU would otherwise chain one in by itself
/// (the DWC2 root has a single port) without an id, and that hub, kept across a reset, is
/// what the next kernel loses.
pub fn hotplug_devices(board: &Board) -> Vec<String> {
    match board.qemu.as_ref().map(|q| q.nic) {
        Some(QemuNic::UsbNet) => vec!["usb-hub,id=hub0".into(), "usb-net,netdev=n0,id=net0".into()],
        _ => vec![],
    }
}

/// The monitor socket of a non-interactive run on `disk`.
pub fn monitor_path(disk: &Path) -> std::path::PathBuf {
    disk.with_extension("monitor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_parse_as_qemu_img_reads_them() {
        for (s, want) in
            [("4G", 4u64 << 30), ("4GiB", 4 << 30), ("512M", 512 << 20), ("1t", 1 << 40), ("1048576", 1 << 20)]
        {
            assert_eq!(parse_size(s).unwrap(), want, "{s}");
        }
        for bad in ["", "G", "4X", "0", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_overlay_takes_the_disk_size_rounded_for_an_sd_card() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.img");
        std::fs::File::create(&image).unwrap().set_len(428 << 20).unwrap();
        let size = |disk: &Path| {
            // "virtual size: 4 GiB (4294967296 bytes)"
            let out = Command::new("qemu-img").args(["info", "-U"]).arg(disk).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text.lines().find(|l| l.starts_with("virtual size:")).unwrap().to_owned();
            line.split('(').nth(1).unwrap().split(' ').next().unwrap().parse::<u64>().unwrap()
        };
        let virt = crate::board::load(&crate::repo_root(), "qemu-aarch64-virt", None).unwrap();
        let pi = crate::board::load(&crate::repo_root(), "rpi3", Some("raspi3b")).unwrap();
        let disk = dir.path().join("d.qcow2");
        for (b, want, expect) in [
            (&virt, None, 428 << 20),
            (&virt, Some(3u64 << 30), 3 << 30),
            (&pi, None, 512 << 20),
            (&pi, Some(3 << 30), 4 << 30),
        ] {
            overlay_for(b, &image, &disk, want).unwrap();
            assert_eq!(size(&disk), expect, "{} {want:?}", b.name);
        }
        assert!(overlay_for(&virt, &image, &disk, Some(1 << 20)).is_err(), "smaller than the image");
    }

    #[test]
    fn command_forwards_the_five_ports_and_boots_u_boot() {
        let b = crate::board::load(&crate::repo_root(), "qemu-aarch64-virt", None).unwrap();
        let c =
            command(&b, Path::new("/nonexistent"), Path::new("/tmp/x.qcow2"), &default_forwards(18083), false).unwrap();
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let all = args.join(" ");
        for p in 8083..=8087 {
            assert!(all.contains(&format!("hostfwd=tcp:127.0.0.1:{}-:{p}", p + 10000)), "{all}");
        }
        assert!(all.contains("-bios /usr/lib/u-boot/qemu_arm64/u-boot.bin"));
        assert!(all.contains("i6300esb"));
        let pi = crate::board::load(&crate::repo_root(), "rpi4", None).unwrap();
        assert!(command(&pi, Path::new("w"), Path::new("x"), &[], false).is_err());
    }

    /// The virt machine's command line, argument for argument as before machines became
    /// data: the hil suite and scripts/qemu depend on it.
    #[test]
    fn the_virt_command_line_is_unchanged() {
        let b = crate::board::load(&crate::repo_root(), "qemu-aarch64-virt", None).unwrap();
        let c = command(&b, Path::new("/nonexistent"), Path::new("/tmp/x.qcow2"), &[(18083, 8083)], false).unwrap();
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "-machine virt -cpu cortex-a72 -m 1024 -smp 2 -bios /usr/lib/u-boot/qemu_arm64/u-boot.bin \
             -drive if=none,file=/tmp/x.qcow2,format=qcow2,id=hd0 -device virtio-blk-pci,drive=hd0 \
             -netdev user,id=n0,hostfwd=tcp:127.0.0.1:18083-:8083 -device virtio-net-pci,netdev=n0,romfile= \
             -device i6300esb -display none -monitor none -serial stdio"
        );
        let c = command(&b, Path::new("/nonexistent"), Path::new("/tmp/x.qcow2"), &[], true).unwrap();
        assert_eq!(c.get_args().last().unwrap(), "-nographic");
    }

    #[test]
    fn raspi3b_starts_the_images_own_u_boot_on_the_sd_card_with_usb_net() {
        let b = crate::board::load(&crate::repo_root(), "rpi3", Some("raspi3b")).unwrap();
        let work = tempfile::tempdir().unwrap();
        // Without the built image's U-Boot and DTB, a clear error.
        let e = command(&b, work.path(), Path::new("/tmp/x.qcow2"), &[], false).unwrap_err();
        assert!(e.to_string().contains("u-boot.bin"), "{e}");
        for f in ["bootctl/u-boot.bin", "boot-a/dtbs/broadcom/bcm2837-rpi-3-b.dtb"] {
            let p = work.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let w = work.path().display();
        let c = command(&b, work.path(), Path::new("/tmp/x.qcow2"), &default_forwards(18083), false).unwrap();
        let all: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let all = all.join(" ");
        assert!(all.starts_with("-machine raspi3b -m 1024 -smp 4 "), "no -cpu, the fixed RAM and cores: {all}");
        assert!(
            all.contains(&format!("-kernel {w}/bootctl/u-boot.bin -dtb {w}/boot-a/dtbs/broadcom/bcm2837-rpi-3-b.dtb"))
        );
        assert!(all.contains("-drive if=sd,file=/tmp/x.qcow2,format=qcow2 "), "{all}");
        assert!(all.contains("-usb "), "{all}");
        assert_eq!(hotplug_devices(&b), ["usb-hub,id=hub0", "usb-net,netdev=n0,id=net0"]);
        assert!(!all.contains("-bios") && !all.contains("virtio"), "{all}");
        for p in 8083..=8087 {
            assert!(all.contains(&format!("hostfwd=tcp:127.0.0.1:{}-:{p}", p + 10000)), "{all}");
        }
        assert!(
            all.ends_with("-display none -monitor unix:/tmp/x.monitor,server,nowait -serial null -serial stdio"),
            "mini-UART second: {all}"
        );
        let c = command(&b, work.path(), Path::new("/tmp/x.qcow2"), &[], true).unwrap();
        let all: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(all.join(" ").ends_with("-display none -serial null -serial mon:stdio"), "{all:?}");
        // The variant changes only what QEMU cannot do: the watchdog driver stays, unarmed.
        let flashed = crate::board::load(&crate::repo_root(), "rpi3", None).unwrap();
        let wd = b.hardware.watchdog.as_ref().unwrap();
        assert!(!wd.arm && flashed.hardware.watchdog.as_ref().unwrap().arm);
        assert!(b.load_list().iter().any(|m| m == "bcm2835_wdt"), "the kernel reboots through it");
        assert_eq!(b.kernel.modules, flashed.kernel.modules);
        assert_eq!(b.boot.device_trees, flashed.boot.device_trees);
        assert_eq!(b.boot.firmware_files, flashed.boot.firmware_files);
        assert!(flashed.qemu.is_none());
    }

    #[test]
    fn a_qemu_table_boots_either_firmware_or_a_kernel() {
        let load = |extra: &str| {
            let r = crate::repo_root();
            let mut t = crate::board::load_table(&r.join("board/rpi3.toml")).unwrap();
            crate::board::merge(&mut t, crate::board::load_table(&r.join("image/variants/raspi3b.toml")).unwrap());
            crate::board::merge(&mut t, toml::from_str(extra).unwrap());
            crate::board::from_table(Path::new("rpi3.toml"), t)
        };
        load("").unwrap();
        for (extra, want) in [
            ("[qemu]\nbios = \"/u-boot.bin\"\n", "either bios"),
            ("[qemu]\nkernel = \"../u-boot.bin\"\n", "relative"),
            ("[qemu]\ndrive = \"nvme\"\n", "unknown variant"),
        ] {
            let e = load(extra).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
