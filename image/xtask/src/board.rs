//! Board manifests (`board/*.toml`) and image variants (`image/variants/*.toml`): loading,
//! inheritance, validation.
//!
//! A manifest is TOML. `inherit = ["base.toml"]` names files (relative to the manifest)
//! whose tables are merged first; later files and the manifest itself win, tables merge
//! key by key, everything else (strings, numbers, arrays) is replaced whole. A variant is
//! one more layer on top. The merged table is then deserialized with `deny_unknown_fields`
//! everywhere, so a misspelt key fails the build instead of being ignored (hubris'
//! `app.toml` habit). This module does no IO beyond reading the manifest files.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("manifest {path}: inheritance cycle through {again}")]
    Cycle { path: PathBuf, again: PathBuf },
    #[error("board {board}: {msg}")]
    Invalid { board: String, msg: String },
}

/// How a board chooses which slot to boot and how a trial boot falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// U-Boot runs `boot.scr` from p1; the slot comes from the env file `lucid.env` on p1
    /// (`lucid_active`, one-shot `lucid_try`).
    UbootEnv,
    /// The Raspberry Pi firmware's `tryboot_a_b`: `autoboot.txt` on p1 picks p2, or p3
    /// after `reboot '0 tryboot'`.
    RpiTryboot,
}

impl BootMethod {
    /// The `[update] boot_control` value the daemon expects.
    pub fn daemon_name(self) -> &'static str {
        match self {
            BootMethod::UbootEnv => "uboot-env",
            BootMethod::RpiTryboot => "rpi-tryboot",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoder {
    /// OpenH264 in lucidd (Pi 5, QEMU).
    Software,
    /// The V4L2 memory-to-memory H.264 encoder (bcm2835-codec on Pi 3/4).
    V4l2M2m,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelImage {
    /// Uncompressed arm64 `Image`: U-Boot's `booti` needs it.
    Image,
    /// Debian's gzip `vmlinuz`: the Pi firmware decompresses it itself.
    Vmlinuz,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Release version written to /etc/lucid/release and into the OTA bundle.
    pub version: String,
    pub kernel: Kernel,
    pub boot: Boot,
    pub hardware: Hardware,
    pub partitions: Partitions,
    pub rootfs: Rootfs,
    pub lucidd: Lucidd,
    pub qemu: Option<Qemu>,
    /// Set by a variant: the daemon must REJECT the generated config (a deliberately
    /// broken image for rollback tests). The build still checks it, the other way round.
    #[serde(default)]
    pub expect_config_rejected: bool,
    /// Set by a variant: appended to the version, e.g. "-broken".
    #[serde(default)]
    pub version_suffix: String,
    /// Test variants only: a root shell on the console, so a test harness can run
    /// on-device checks (`lucidd hw decode`). Production images have none.
    #[serde(default)]
    pub console_shell: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian package (a metapackage is resolved to the versioned image package).
    pub package: String,
    pub image: KernelImage,
    /// Modules loaded by the initramfs, in order; their dependencies come along.
    pub modules: Vec<String>,
    /// Loaded after `modules`, in order. For variants: arrays replace whole when layers
    /// merge, so a variant that adds devices lists only its own here instead of copying
    /// the board's `modules`.
    #[serde(default)]
    pub extra_modules: Vec<String>,
    /// Loaded by rcS once the root file system is mounted, in order, with their
    /// dependencies installed under the root's /lib/modules: drivers whose firmware
    /// lives in the root (the Pi's Wi-Fi, `brcmfmac`), which the initramfs cannot see.
    #[serde(default)]
    pub rootfs_modules: Vec<String>,
    /// Module parameters, e.g. `vivid = "n_devs=1"`: written as `options` lines to
    /// /etc/modprobe.d/lucid.conf of the initramfs (and of the root, when it loads
    /// modules), which busybox modprobe reads.
    #[serde(default)]
    pub module_options: std::collections::BTreeMap<String, String>,
    /// Modules the kernel package lacks, built from its `linux-source` (kmod.rs).
    #[serde(default)]
    pub out_of_tree: Vec<OutOfTree>,
    /// Extra kernel arguments after console/root/slot.
    #[serde(default)]
    pub cmdline: String,
}

/// A kernel module built out of tree against the image's exact kernel (kmod.rs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutOfTree {
    /// The module, as modprobe names it: `<name>.ko` is what the build must produce.
    pub name: String,
    /// Its directory in the kernel source tree, e.g. `drivers/media/test-drivers/vicodec`.
    pub source: String,
    /// The Kconfig symbol of its Makefile's `obj-$(...)` line, set to `m` for the build
    /// (the distribution's kernel config has it off, which is why it is missing).
    pub config: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub method: BootMethod,
    /// Whole-disk device as the kernel names it: /dev/vda, /dev/mmcblk0.
    pub disk: String,
    /// Between disk and partition number: "" for vda5, "p" for mmcblk0p5.
    #[serde(default)]
    pub partition_prefix: String,
    /// `console=` argument.
    pub console: String,
    /// Device trees from the kernel package (`usr/lib/linux-image-KVER/<path>`).
    #[serde(default)]
    pub device_trees: Vec<String>,
    /// Debian package with the Pi's GPU firmware (`raspi-firmware`).
    pub firmware_package: Option<String>,
    /// Files from `usr/lib/raspi-firmware/` the board's boot ROM/EEPROM loads.
    #[serde(default)]
    pub firmware_files: Vec<String>,
    /// Lines of the Pi firmware's config.txt.
    #[serde(default)]
    pub config_txt: Vec<String>,
    /// U-Boot loaded by the Pi firmware (Pi 3): package and path inside it.
    pub uboot_package: Option<String>,
    pub uboot_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub encoder: Encoder,
    pub watchdog: Option<Watchdog>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    /// Kernel module of the watchdog driver (also added to the initramfs modules).
    pub module: String,
    /// Seconds without a ping before the hardware resets the board.
    pub timeout_secs: u32,
    /// rcS starts busybox `watchdog` on it. A test variant sets false where the emulator's
    /// model of the watchdog is wrong (QEMU 7.2's bcm2835 resets at once when armed); the
    /// driver still loads, because it is also how the kernel reboots the board.
    #[serde(default = "yes")]
    pub arm: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub bootctl_mib: u32,
    pub boot_mib: u32,
    pub root_mib: u32,
    pub data_mib: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    pub busybox_package: String,
    /// mksquashfs compressor (the kernel must have it built in).
    pub compression: String,
    pub hostname: String,
    /// Files and directories taken from Debian arm64 packages (wpa_supplicant, Wi-Fi
    /// firmware). Dynamically linked programs among them get the loader and their
    /// `NEEDED` closure from `libraries` (see `dynlink`).
    #[serde(default)]
    pub packages: Vec<PackageFiles>,
    /// The packages `dynlink` searches for shared libraries; a `NEEDED` library in none of
    /// them fails the build.
    #[serde(default)]
    pub libraries: Vec<String>,
    /// Extra files written into the root, path -> text (a test variant's rcS hook in
    /// `etc/lucid/rc.d/`, which rcS runs before lucidd; those are made executable).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// Paths (files or whole directories, as in the package) to take from one package.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFiles {
    pub package: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lucidd {
    /// Written as /etc/lucid/lucidd.toml (plus the generated `[update]` table). Kept as a
    /// raw table: the daemon owns its schema and checks it (`lucidd config`) at build time.
    pub config: toml::Table,
}

/// How QEMU emulates a board: the machine, how it starts, and where the disk, the network
/// and the console are. Read by `qemu::command`; a board or a test variant carries it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub machine: String,
    /// `-cpu`; none for machines with a fixed SoC (raspi3b's Cortex-A53s).
    #[serde(default)]
    pub cpu: Option<String>,
    pub memory_mib: u32,
    /// `-smp`: raspi3b insists on its 4 cores; 2 keeps TCG light on the virt machine.
    #[serde(default = "two")]
    pub smp: u32,
    /// Firmware QEMU starts (U-Boot), a host path. Either this or `kernel`.
    #[serde(default)]
    pub bios: Option<String>,
    /// Started by QEMU in place of the GPU firmware, relative to the image's work dir
    /// (`out/NAME/work`), so it is the U-Boot the image itself carries on p1.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Device tree handed to `kernel` (what the Pi firmware would pass), relative to the
    /// image's work dir.
    #[serde(default)]
    pub dtb: Option<String>,
    #[serde(default)]
    pub drive: QemuDrive,
    #[serde(default)]
    pub nic: QemuNic,
    /// Index of the serial port that is the console: raspi3b's first port is the PL011
    /// (Bluetooth on a Pi 3), its second the mini-UART that `ttyS1` names.
    #[serde(default)]
    pub console_serial: u32,
    /// Extra devices, e.g. the watchdog.
    #[serde(default)]
    pub devices: Vec<String>,
}

fn two() -> u32 {
    2
}

/// Where the emulated machine finds its disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuDrive {
    /// A virtio block device on PCI (`/dev/vda`).
    #[default]
    VirtioBlk,
    /// The machine's own SD controller (`/dev/mmcblk0`); QEMU wants a power-of-two size.
    Sd,
}

/// The emulated network card, on QEMU's user network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuNic {
    /// virtio-net on PCI: the guest's `eth0`.
    #[default]
    VirtioNetPci,
    /// A USB CDC Ethernet / RNDIS gadget on the machine's USB bus (raspi3b's DWC2): the
    /// guest needs `cdc_ether` (or `rndis_host`) and names it `usb0` (QEMU's MAC is
    /// locally administered).
    UsbNet,
}

impl QemuNic {
    /// The interfaces rcS brings up (`LUCID_NET_IFACES`).
    pub fn guest_ifaces(self) -> &'static str {
        match self {
            QemuNic::VirtioNetPci => "eth0",
            QemuNic::UsbNet => "usb0 eth0",
        }
    }

    /// How long rcS waits for the NIC: a hot-plugged USB one enumerates during boot.
    pub fn guest_wait_secs(self) -> u32 {
        match self {
            QemuNic::VirtioNetPci => 0,
            QemuNic::UsbNet => 60,
        }
    }
}

impl Board {
    /// `/dev/vda5` for partition 5.
    pub fn part(&self, n: u32) -> String {
        format!("{}{}{}", self.boot.disk, self.boot.partition_prefix, n)
    }

    pub fn full_version(&self) -> String {
        format!("{}{}", self.version, self.version_suffix)
    }

    pub fn validate(&self) -> Result<(), BoardError> {
        let bad = |msg: String| Err(BoardError::Invalid { board: self.name.clone(), msg });
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return bad("name must be [A-Za-z0-9-]+".into());
        }
        let p = &self.partitions;
        if p.bootctl_mib < 4 || p.boot_mib < 16 || p.root_mib < 16 || p.data_mib < 16 {
            return bad("partition sizes too small (bootctl >= 4, boot/root/data >= 16 MiB)".into());
        }
        match self.boot.method {
            BootMethod::RpiTryboot => {
                if self.boot.firmware_package.is_none() || self.boot.config_txt.is_empty() {
                    return bad("rpi-tryboot needs firmware_package and config_txt".into());
                }
                if self.kernel.image != KernelImage::Vmlinuz {
                    return bad("rpi-tryboot boots the kernel from the Pi firmware: kernel.image = \"vmlinuz\"".into());
                }
                if self.uboot_in_use() {
                    return bad("rpi-tryboot boards do not use U-Boot".into());
                }
            }
            BootMethod::UbootEnv => {
                if self.kernel.image != KernelImage::Image {
                    return bad("U-Boot's booti needs kernel.image = \"image\"".into());
                }
                if self.boot.firmware_package.is_some() != self.uboot_in_use() {
                    return bad("a Pi with U-Boot needs both firmware_package and uboot_package/uboot_file".into());
                }
                if self.boot.uboot_package.is_some() != self.boot.uboot_file.is_some() {
                    return bad("uboot_package and uboot_file go together".into());
                }
            }
        }
        if self.boot.firmware_package.is_some()
            && self.boot.firmware_files.is_empty()
            && self.boot.method == BootMethod::UbootEnv
        {
            return bad("a Pi with U-Boot needs firmware_files (bootcode.bin, start.elf...)".into());
        }
        if self.kernel.modules.is_empty() {
            return bad("kernel.modules is empty: the initramfs could not mount the root".into());
        }
        self.validate_modules()?;
        if !self.lucidd.config.contains_key("data_dir") {
            return bad("lucidd.config.data_dir is required (the data partition)".into());
        }
        if self.lucidd.config.contains_key("update") {
            return bad("lucidd.config.update is generated from the board; do not set it".into());
        }
        if let Some(q) = &self.qemu {
            if q.bios.is_some() == q.kernel.is_some() {
                return bad("qemu: give either bios (a host path) or kernel (in the image's work dir)".into());
            }
            if q.dtb.is_some() && q.kernel.is_none() {
                return bad("qemu.dtb goes with qemu.kernel".into());
            }
            let relative = |p: &str| Path::new(p).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if !q.kernel.iter().chain(&q.dtb).all(|p| relative(p)) {
                return bad("qemu.kernel and qemu.dtb are plain paths relative to the image's work dir".into());
            }
        }
        if !self.boot.console.starts_with("tty") {
            return bad("boot.console must name a tty, e.g. ttyAMA0,115200".into());
        }
        Ok(())
    }

    /// Every module the initramfs loads, in order: `modules`, `extra_modules`, then the
    /// watchdog's driver when it is not listed.
    pub fn load_list(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        let wd = self.hardware.watchdog.as_ref().map(|w| w.module.clone());
        for m in self.kernel.modules.iter().chain(&self.kernel.extra_modules).chain(wd.iter()) {
            if !v.contains(m) {
                v.push(m.clone());
            }
        }
        v
    }

    fn validate_modules(&self) -> Result<(), BoardError> {
        let bad = |msg: String| Err(BoardError::Invalid { board: self.name.clone(), msg });
        let k = &self.kernel;
        let load = self.load_list();
        // modprobe treats - and _ alike; so do these checks.
        let norm = |s: &str| s.replace('-', "_");
        let loaded = |m: &str| load.iter().any(|l| norm(l) == norm(m));
        for m in &k.extra_modules {
            if k.modules.contains(m) {
                return bad(format!("kernel.extra_modules repeats {m}, already in kernel.modules"));
            }
        }
        for m in &k.rootfs_modules {
            if loaded(m) {
                return bad(format!("kernel.rootfs_modules repeats {m}, which the initramfs loads already"));
            }
        }
        let in_root = |m: &str| k.rootfs_modules.iter().any(|r| norm(r) == norm(m));
        for (m, opts) in &k.module_options {
            // Only listed modules are ever loaded (nothing loads on demand), so options
            // for another one are a typo or a forgotten list entry.
            if !loaded(m) && !in_root(m) {
                return bad(format!(
                    "kernel.module_options.{m}: {m} is not in kernel.modules, kernel.extra_modules or kernel.rootfs_modules"
                ));
            }
            if opts.trim().is_empty() || opts.contains(['\n', '\r', '#']) {
                return bad(format!("kernel.module_options.{m} must be one line of name=value words"));
            }
        }
        let mut names = Vec::new();
        for o in &k.out_of_tree {
            if o.name.is_empty() || !o.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return bad(format!("kernel.out_of_tree: name {:?} must be [A-Za-z0-9_-]+", o.name));
            }
            if names.contains(&norm(&o.name)) {
                return bad(format!("kernel.out_of_tree: {} is listed twice", o.name));
            }
            names.push(norm(&o.name));
            let src = std::path::Path::new(&o.source);
            if o.source.is_empty()
                || src.is_absolute()
                || src.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return bad(format!(
                    "kernel.out_of_tree.{}: source {:?} must be a plain relative path in the kernel tree",
                    o.name, o.source
                ));
            }
            if !o.config.starts_with("CONFIG_")
                || !o.config.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return bad(format!(
                    "kernel.out_of_tree.{}: config {:?} must be a Kconfig symbol, CONFIG_...",
                    o.name, o.config
                ));
            }
            if !loaded(&o.name) && !in_root(&o.name) {
                return bad(format!(
                    "kernel.out_of_tree.{0}: {0} is built but not in kernel.modules, kernel.extra_modules or kernel.rootfs_modules; nothing loads modules on demand, so it would never load",
                    o.name
                ));
            }
        }
        Ok(())
    }

    fn uboot_in_use(&self) -> bool {
        self.boot.uboot_package.is_some()
    }
}

/// Merge `over` into `base`: tables recursively, anything else replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Read a manifest and everything it inherits, merged; `inherit` itself removed.
pub fn load_table(path: &Path) -> Result<toml::Table, BoardError> {
    load_table_inner(path, &mut Vec::new())
}

fn load_table_inner(path: &Path, stack: &mut Vec<PathBuf>) -> Result<toml::Table, BoardError> {
    let canon = path.canonicalize().map_err(|source| BoardError::Read { path: path.into(), source })?;
    if stack.contains(&canon) {
        return Err(BoardError::Cycle { path: stack[0].clone(), again: canon });
    }
    stack.push(canon.clone());
    let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read { path: path.into(), source })?;
    let mut own: toml::Table =
        toml::from_str(&text).map_err(|e| BoardError::Parse { path: path.into(), msg: e.to_string() })?;
    let mut merged = toml::Table::new();
    if let Some(inherit) = own.remove("inherit") {
        let list = inherit.as_array().ok_or_else(|| BoardError::Parse {
            path: path.into(),
            msg: "inherit must be an array of file names".into(),
        })?;
        for item in list {
            let name = item.as_str().ok_or_else(|| BoardError::Parse {
                path: path.into(),
                msg: "inherit entries must be strings".into(),
            })?;
            let parent = canon.parent().unwrap_or(Path::new(".")).join(name);
            let t = load_table_inner(&parent, stack)?;
            merge(&mut merged, t);
        }
    }
    merge(&mut merged, own);
    stack.pop();
    Ok(merged)
}

/// Deserialize and validate a merged table.
pub fn from_table(path: &Path, table: toml::Table) -> Result<Board, BoardError> {
    let board: Board = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| BoardError::Parse { path: path.into(), msg: e.to_string() })?;
    board.validate()?;
    Ok(board)
}

/// The variants of a `--variant` value, in merge order: `raspi3b,broken-daemon` stacks the
/// broken daemon on the raspi3b machine (a later layer wins, like `inherit`). Empty for
/// none. Each name is a file stem in image/variants/.
pub fn variant_layers(variant: Option<&str>) -> Result<Vec<&str>, BoardError> {
    let Some(v) = variant else { return Ok(Vec::new()) };
    let layers: Vec<&str> = v.split(',').collect();
    for l in &layers {
        if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(BoardError::Invalid {
                board: v.into(),
                msg: format!("variant {l:?}: a list of image/variants/ names separated by commas, [A-Za-z0-9-]+ each"),
            });
        }
        if layers.iter().filter(|o| *o == l).count() > 1 {
            return Err(BoardError::Invalid { board: v.into(), msg: format!("variant {l} is listed twice") });
        }
    }
    Ok(layers)
}

/// `board/<name>.toml`, plus each `image/variants/<variant>.toml` of `variant` (one name,
/// or several separated by commas, see `variant_layers`) on top, in order.
pub fn load(repo: &Path, name: &str, variant: Option<&str>) -> Result<Board, BoardError> {
    let path = repo.join("board").join(format!("{name}.toml"));
    let mut table = load_table(&path)?;
    for v in variant_layers(variant)? {
        let vpath = repo.join("image/variants").join(format!("{v}.toml"));
        let vt = load_table(&vpath)?;
        merge(&mut table, vt);
    }
    let board = from_table(&path, table)?;
    if board.name != name {
        return Err(BoardError::Invalid { board: name.into(), msg: format!("manifest says name = {:?}", board.name) });
    }
    Ok(board)
}

/// Every board manifest (files in board/ other than base.toml).
pub fn all_names(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("board"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".toml") && n != "base.toml")
                .map(|n| n.trim_end_matches(".toml").to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_the_rest() {
        let mut a: toml::Table = toml::from_str("x = 1\nl = [1, 2]\n[t]\na = 1\nb = 2\n").unwrap();
        let b: toml::Table = toml::from_str("l = [3]\n[t]\nb = 20\nc = 30\n").unwrap();
        merge(&mut a, b);
        assert_eq!(a["x"].as_integer(), Some(1));
        assert_eq!(a["l"].as_array().unwrap().len(), 1);
        assert_eq!(a["t"]["a"].as_integer(), Some(1));
        assert_eq!(a["t"]["b"].as_integer(), Some(20));
        assert_eq!(a["t"]["c"].as_integer(), Some(30));
    }

    #[test]
    fn every_board_in_the_repo_loads_and_validates() {
        let names = all_names(&repo());
        for want in ["qemu-aarch64-virt", "rpi3", "rpi4", "rpi5"] {
            assert!(names.iter().any(|n| n == want), "missing board {want}: {names:?}");
        }
        for n in &names {
            let b = load(&repo(), n, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&b.name, n);
        }
    }

    #[test]
    fn boards_say_what_differs() {
        let r = repo();
        let q = load(&r, "qemu-aarch64-virt", None).unwrap();
        assert_eq!(q.boot.method, BootMethod::UbootEnv);
        assert_eq!(q.part(5), "/dev/vda5");
        assert!(q.qemu.is_some());
        let p4 = load(&r, "rpi4", None).unwrap();
        assert_eq!(p4.boot.method, BootMethod::RpiTryboot);
        assert_eq!(p4.part(6), "/dev/mmcblk0p6");
        assert_eq!(p4.hardware.encoder, Encoder::V4l2M2m);
        let p5 = load(&r, "rpi5", None).unwrap();
        assert_eq!(p5.hardware.encoder, Encoder::Software, "the Pi 5 has no H.264 encoder block");
        let p3 = load(&r, "rpi3", None).unwrap();
        assert_eq!(p3.boot.method, BootMethod::UbootEnv);
        assert!(p3.boot.uboot_file.is_some());
        // Inherited from base.toml, not repeated in the board files.
        assert_eq!(p3.rootfs.busybox_package, q.rootfs.busybox_package);
    }

    #[test]
    fn variants_layer_on_top() {
        let b = load(&repo(), "qemu-aarch64-virt", Some("broken-daemon")).unwrap();
        assert!(b.expect_config_rejected);
        assert!(b.full_version().ends_with("-broken"));
    }

    #[test]
    fn variants_stack_left_to_right() {
        // The ota group's broken update for the Pi 3 image in QEMU: the raspi3b machine with
        // the broken daemon on top, whose fps = 0 wins over raspi3b's 10.
        let b = load(&repo(), "rpi3", Some("raspi3b,broken-daemon")).unwrap();
        assert!(b.expect_config_rejected && b.full_version().ends_with("-broken"));
        assert_eq!(b.lucidd.config["video"]["fps"].as_integer(), Some(0));
        assert_eq!(b.lucidd.config["video"]["width"].as_integer(), Some(320), "raspi3b's layer stays");
        assert_eq!(b.qemu.as_ref().map(|q| q.machine.as_str()), Some("raspi3b"));
        assert_eq!(b.kernel.extra_modules, ["cdc_ether", "rndis_host"]);
        assert_eq!(
            crate::assemble::out_name("rpi3", Some("raspi3b,broken-daemon"), 3),
            "rpi3-raspi3b-broken-daemon-build3"
        );
        for bad in ["raspi3b,", ",raspi3b", "raspi3b,,broken-daemon", "raspi3b,raspi3b", "../raspi3b"] {
            assert!(load(&repo(), "rpi3", Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn camera_variant_adds_vivid_and_an_out_of_tree_vicodec() {
        let b = load(&repo(), "qemu-aarch64-virt", Some("camera")).unwrap();
        let base = load(&repo(), "qemu-aarch64-virt", None).unwrap();
        assert_eq!(b.kernel.modules, base.kernel.modules, "the board's own modules stay");
        assert_eq!(b.kernel.extra_modules, ["vivid", "vicodec"]);
        let load = b.load_list();
        assert_eq!(&load[load.len() - 3..], ["i6300esb", "vivid", "vicodec"].map(String::from), "{load:?}");
        assert_eq!(
            b.kernel.out_of_tree,
            [OutOfTree {
                name: "vicodec".into(),
                source: "drivers/media/test-drivers/vicodec".into(),
                config: "CONFIG_VIDEO_VICODEC".into()
            }]
        );
        let vivid = &b.kernel.module_options["vivid"];
        for o in ["n_devs=1", "node_types=0x1", "input_types=0x0"] {
            assert!(vivid.split_whitespace().any(|w| w == o), "{vivid}");
        }
        assert_eq!(b.lucidd.config["source"].as_str(), Some("v4l2"));
        // vivid's webcam input has discrete sizes (640x360 is one, 320x240 is not) and
        // vicodec refuses pictures under 640x360.
        let v = &b.lucidd.config["video"];
        assert_eq!((v["width"].as_integer(), v["height"].as_integer()), (Some(640), Some(360)));
        assert!(b.console_shell, "the hil camera group decodes on the device through the console");
        assert!(!base.console_shell, "production boards have no console shell");
        assert!(base.kernel.out_of_tree.is_empty() && base.kernel.module_options.is_empty());
    }

    #[test]
    fn pi_boards_carry_wpa_supplicant_and_the_radio_firmware_and_the_network_variant_an_ap() {
        for name in ["rpi3", "rpi4", "rpi5"] {
            let b = load(&repo(), name, None).unwrap();
            let pkgs: Vec<&str> = b.rootfs.packages.iter().map(|p| p.package.as_str()).collect();
            assert_eq!(pkgs, ["wpasupplicant", "firmware-brcm80211"], "{name}");
            assert!(b.rootfs.libraries.iter().any(|l| l == "libc6"), "{name}: the loader's package");
            assert_eq!(b.kernel.rootfs_modules, ["brcmfmac"], "{name}: loaded where its firmware is");
        }
        let q = load(&repo(), "qemu-aarch64-virt", None).unwrap();
        assert!(q.rootfs.packages.is_empty() && q.rootfs.files.is_empty(), "the plain test board stays static-only");
        let n = load(&repo(), "qemu-aarch64-virt", Some("network")).unwrap();
        let pkgs: Vec<&str> = n.rootfs.packages.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(pkgs, ["wpasupplicant", "hostapd"]);
        assert_eq!(n.kernel.rootfs_modules, ["mac80211_hwsim", "ctr", "ccm"]);
        assert!(n.kernel.extra_modules.is_empty(), "the radios load from the root, as on a Pi");
        assert_eq!(n.kernel.module_options["mac80211_hwsim"], "radios=2");
        assert!(n.console_shell);
        let hook = &n.rootfs.files["etc/lucid/rc.d/50-hil-ap"];
        assert!(hook.contains("hostapd -B") && hook.contains("udhcpd"), "{hook}");
        assert!(n.rootfs.files["etc/lucid/hostapd.conf"].contains("interface=wlan1"));
    }

    /// The QEMU board with `extra` merged on top, deserialized and validated.
    fn qemu_with(extra: &str) -> Result<Board, BoardError> {
        let mut t = load_table(&repo().join("board/qemu-aarch64-virt.toml")).unwrap();
        merge(&mut t, toml::from_str(extra).unwrap());
        from_table(Path::new("q.toml"), t)
    }

    #[test]
    fn out_of_tree_modules_and_options_are_checked() {
        let ok = "[kernel]\nextra_modules = [\"vicodec\"]\nout_of_tree = [{ name = \"vicodec\", source = \"drivers/x\", config = \"CONFIG_X\" }]\n";
        qemu_with(ok).unwrap();
        let cases: Vec<(String, &str)> = vec![
            // Built but never loaded: the root has no module tree.
            ("[kernel]\nout_of_tree = [{ name = \"vicodec\", source = \"drivers/x\", config = \"CONFIG_X\" }]\n".to_owned(), "never load"),
            (ok.replace("drivers/x", "../x"), "plain relative path"),
            (ok.replace("drivers/x", "/usr/src/x"), "plain relative path"),
            (ok.replace("CONFIG_X", "VIDEO_X"), "Kconfig symbol"),
            (ok.replace("\" }]", "\", typo = 1 }]"), "unknown field"),
            (format!("{ok}[kernel.module_options]\nvivid = \"n_devs=1\"\n"), "not in kernel.modules"),
            (format!("{ok}[kernel.module_options]\nvicodec = \"a=1\\nb=2\"\n"), "one line"),
            ("[kernel]\nextra_modules = [\"ext4\"]\n".to_owned(), "repeats ext4"),
            ("[kernel]\nrootfs_modules = [\"ext4\"]\n".to_owned(), "the initramfs loads already"),
            ("[kernel]\nrootfs_modules = [\"x\"]\n[kernel.module_options]\ny = \"a=1\"\n".to_owned(), "kernel.rootfs_modules"),
            (
                "[kernel]\nextra_modules = [\"a\"]\nout_of_tree = [{ name = \"a\", source = \"d\", config = \"CONFIG_A\" }, { name = \"a\", source = \"e\", config = \"CONFIG_A\" }]\n".to_owned(),
                "twice",
            ),
        ];
        for (extra, want) in cases {
            let e = qemu_with(&extra).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_keys_and_cycles_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::read_to_string(repo().join("board/base.toml")).unwrap();
        let board = std::fs::read_to_string(repo().join("board/qemu-aarch64-virt.toml")).unwrap();
        write(d.path(), "base.toml", &base);
        let p = write(d.path(), "b.toml", &format!("{board}\n[hardware.extra]\nx = 1\n"));
        let e = from_table(&p, load_table(&p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");

        let p = write(d.path(), "c1.toml", "inherit = [\"c2.toml\"]\n");
        write(d.path(), "c2.toml", "inherit = [\"c1.toml\"]\n");
        assert!(matches!(load_table(&p), Err(BoardError::Cycle { .. })));
    }

    #[test]
    fn validation_catches_inconsistent_boot_facts() {
        let r = repo();
        let mut t = load_table(&r.join("board/rpi4.toml")).unwrap();
        merge(&mut t, toml::from_str("[kernel]\nimage = \"image\"\n").unwrap());
        let e = from_table(Path::new("rpi4.toml"), t).unwrap_err();
        assert!(e.to_string().contains("vmlinuz"), "{e}");

        let mut t = load_table(&r.join("board/qemu-aarch64-virt.toml")).unwrap();
        merge(&mut t, toml::from_str("[lucidd.config.update]\nboard = \"x\"\n").unwrap());
        assert!(from_table(Path::new("q.toml"), t).is_err());
    }
}
