//! The QEMU command line for a board that has a `[qemu]` table, shared by `./scripts/qemu`
//! and the hil-tests harness. The image itself is never written: QEMU runs on a qcow2
//! overlay whose backing file is the pristine `out/BOARD/BOARD.img`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::board::Board;
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

/// `qemu-system-aarch64` booting `disk` (qcow2) through the board's firmware (U-Boot).
/// The serial console is on stdio; `interactive` adds QEMU's monitor mux (Ctrl-A X).
pub fn command(board: &Board, disk: &Path, forwards: &[(u16, u16)], interactive: bool) -> Result<Command> {
    let q = board.qemu.as_ref().with_context(|| format!("board {} has no [qemu] table", board.name))?;
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-machine", &q.machine, "-cpu", &q.cpu, "-m", &q.memory_mib.to_string(), "-smp", "2"]);
    c.args(["-bios", &q.bios]);
    c.arg("-drive").arg(format!("if=none,file={},format=qcow2,id=hd0", disk.display()));
    c.args(["-device", "virtio-blk-pci,drive=hd0"]);
    let fwd: String = forwards.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
    c.args(["-netdev", &format!("user,id=n0{fwd}"), "-device", "virtio-net-pci,netdev=n0,romfile="]);
    for d in &q.devices {
        c.args(["-device", d]);
    }
    if interactive {
        c.arg("-nographic");
    } else {
        c.args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_forwards_the_five_ports_and_boots_u_boot() {
        let b = crate::board::load(&crate::repo_root(), "qemu-aarch64-virt", None).unwrap();
        let c = command(&b, Path::new("/tmp/x.qcow2"), &default_forwards(18083), false).unwrap();
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let all = args.join(" ");
        for p in 8083..=8087 {
            assert!(all.contains(&format!("hostfwd=tcp:127.0.0.1:{}-:{p}", p + 10000)), "{all}");
        }
        assert!(all.contains("-bios /usr/lib/u-boot/qemu_arm64/u-boot.bin"));
        assert!(all.contains("i6300esb"));
        let pi = crate::board::load(&crate::repo_root(), "rpi4", None).unwrap();
        assert!(command(&pi, Path::new("x"), &[], false).is_err());
    }
}
