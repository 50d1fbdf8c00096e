//! Boot control: which system slot boots next, as files on the boot-control partition
//! (p1) that the boot loader reads. Two kinds: `uboot-env` (`lucid.env`, read by the
//! image's U-Boot boot.scr) and `rpi-tryboot` (`autoboot.txt`, read by the Raspberry Pi
//! firmware). Formats and protocol in docs/design.md, "Boot control".
//!
//! It owns the text of those files and the three operations on them: read the state
//! (committed slot, trial or not), arm a one-shot trial boot of the other slot, and
//! commit the running slot. Every write is atomic (temp file, fsync, rename, fsync of
//! the directory) so a power cut leaves either the old or the new file. It must not
//! reboot, write slots or decide when to commit (`update` does).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::BootControlKind;

/// File name of the U-Boot environment on the boot-control partition.
pub const UBOOT_ENV_FILE: &str = "lucid.env";
/// File name the Raspberry Pi firmware reads on the first FAT partition.
pub const AUTOBOOT_FILE: &str = "autoboot.txt";

/// One of the two system slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// The MBR partition number of this slot's boot partition (fixed by the image
    /// layout: p2 is boot A, p3 boot B).
    pub fn boot_partition(self) -> u8 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }

    fn from_boot_partition(n: u8) -> Option<Slot> {
        match n {
            2 => Some(Slot::A),
            3 => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why boot control could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BootCtlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the kernel command line {path} names no slot (lucid.slot=a|b) and the device tree no boot partition 2|3")]
    NoSlot { path: PathBuf },
    #[error("boot control is not configured")]
    NotConfigured,
}

/// What boot control says about this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// The committed slot: where a plain reboot goes.
    pub active: Slot,
    /// The slot a one-shot trial boot is armed for, if any.
    pub armed: Option<Slot>,
}

/// Where the Raspberry Pi firmware says which partition it booted from: a big-endian
/// u32 device-tree property (2 = boot A, 3 = boot B under `tryboot_a_b`).
pub const DT_BOOT_PARTITION: &str = "/proc/device-tree/chosen/bootloader/partition";

/// The running slot, from `lucid.slot=a|b` on the kernel command line or, when the
/// command line names none (the Pi's slot-independent cmdline.txt), from the partition
/// the Pi firmware booted.
pub fn running_slot(cmdline_path: &Path) -> Result<Slot, BootCtlError> {
    running_slot_or_dt(cmdline_path, Path::new(DT_BOOT_PARTITION))
}

/// [`running_slot`] with the device-tree property at `dt_partition` (tests).
pub fn running_slot_or_dt(cmdline_path: &Path, dt_partition: &Path) -> Result<Slot, BootCtlError> {
    let text = std::fs::read_to_string(cmdline_path)
        .map_err(|source| BootCtlError::Io { path: cmdline_path.into(), source })?;
    // A slot named on the command line wins, and a bad name is an error rather than a
    // reason to guess from elsewhere.
    match text.split_whitespace().filter_map(|w| w.strip_prefix("lucid.slot=")).next_back() {
        Some(name) => Slot::parse(name),
        None => slot_from_dt_partition(dt_partition),
    }
    .ok_or_else(|| BootCtlError::NoSlot { path: cmdline_path.into() })
}

/// The slot whose boot partition the DT property at `path` names; None when the file is
/// missing (not a Pi) or is not a 4-byte big-endian 2 or 3.
pub fn slot_from_dt_partition(path: &Path) -> Option<Slot> {
    let bytes: [u8; 4] = std::fs::read(path).ok()?.try_into().ok()?;
    u8::try_from(u32::from_be_bytes(bytes)).ok().and_then(Slot::from_boot_partition)
}

/// A configured boot control over the directory where p1 is mounted.
#[derive(Debug, Clone)]
pub struct BootControl {
    kind: BootControlKind,
    dir: PathBuf,
}

impl BootControl {
    pub fn new(kind: BootControlKind, dir: &Path) -> BootControl {
        BootControl { kind, dir: dir.to_owned() }
    }

    pub fn kind(&self) -> BootControlKind {
        self.kind
    }

    fn file(&self) -> Result<PathBuf, BootCtlError> {
        match self.kind {
            BootControlKind::UbootEnv => Ok(self.dir.join(UBOOT_ENV_FILE)),
            BootControlKind::RpiTryboot => Ok(self.dir.join(AUTOBOOT_FILE)),
            BootControlKind::None => Err(BootCtlError::NotConfigured),
        }
    }

    fn read(&self) -> Result<(PathBuf, String), BootCtlError> {
        let path = self.file()?;
        let text = std::fs::read_to_string(&path).map_err(|source| BootCtlError::Io { path: path.clone(), source })?;
        Ok((path, text))
    }

    /// The committed and the armed slot.
    pub fn state(&self) -> Result<BootState, BootCtlError> {
        let (path, text) = self.read()?;
        let bad = |reason: String| BootCtlError::Malformed { path: path.clone(), reason };
        match self.kind {
            BootControlKind::UbootEnv => {
                let env = UbootEnv::parse(&text).map_err(bad)?;
                uboot_state(&env).map_err(bad)
            }
            BootControlKind::RpiTryboot => Autoboot::parse(&text)
                .map_err(bad)
                .map(|a| BootState { active: a.active, armed: (a.tryboot != a.active).then_some(a.tryboot) }),
            BootControlKind::None => Err(BootCtlError::NotConfigured),
        }
    }

    /// True when `running` is not the committed slot: this boot is a trial.
    pub fn is_trial(&self, running: Slot) -> Result<bool, BootCtlError> {
        Ok(self.state()?.active != running)
    }

    /// Arms a one-shot trial boot of `slot` (keeping the committed slot as it is).
    pub fn arm(&self, slot: Slot) -> Result<(), BootCtlError> {
        self.edit(|env| env.set("lucid_try", slot.as_str()), |a| a.tryboot = slot)
    }

    /// Clears any armed trial, so a reboot goes to the committed slot. Done before a
    /// slot is overwritten, so a power cut mid-install never boots a half-written slot.
    pub fn disarm(&self) -> Result<(), BootCtlError> {
        self.edit(|env| env.set("lucid_try", ""), |a| a.tryboot = a.active)
    }

    /// Makes `running` the committed slot and clears any trial.
    pub fn commit(&self, running: Slot) -> Result<(), BootCtlError> {
        self.edit(
            |env| {
                env.set("lucid_active", running.as_str());
                env.set("lucid_try", "");
            },
            |a| {
                a.active = running;
                a.tryboot = running;
            },
        )
    }

    fn edit(&self, uboot: impl FnOnce(&mut UbootEnv), rpi: impl FnOnce(&mut Autoboot)) -> Result<(), BootCtlError> {
        let (path, text) = self.read()?;
        let bad = |reason: String| BootCtlError::Malformed { path: path.clone(), reason };
        let new = match self.kind {
            BootControlKind::UbootEnv => {
                let mut env = UbootEnv::parse(&text).map_err(bad)?;
                // Refuse to rewrite a file whose state we cannot read: it is the boot
                // loader's only instruction.
                uboot_state(&env).map_err(bad)?;
                uboot(&mut env);
                env.render()
            }
            BootControlKind::RpiTryboot => {
                let mut a = Autoboot::parse(&text).map_err(bad)?;
                rpi(&mut a);
                a.render()
            }
            BootControlKind::None => return Err(BootCtlError::NotConfigured),
        };
        write_atomic(&path, new.as_bytes()).map_err(|source| BootCtlError::Io { path: path.clone(), source })
    }
}

fn uboot_state(env: &UbootEnv) -> Result<BootState, String> {
    let active =
        env.get("lucid_active").and_then(Slot::parse).ok_or_else(|| "lucid_active is not a or b".to_string())?;
    let armed = match env.get("lucid_try").unwrap_or("") {
        "" => None,
        s => Some(Slot::parse(s).ok_or_else(|| format!("lucid_try is {s:?}, not a, b or empty"))?),
    };
    Ok(BootState { active, armed })
}

/// A U-Boot environment in `env export -t` text form: `name=value` lines. Order and
/// variables this code does not know are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UbootEnv {
    vars: Vec<(String, String)>,
}

impl UbootEnv {
    /// Parses `\n`-separated `name=value` lines; a trailing NUL (what `env export -t`
    /// leaves), a final newline and blank lines are tolerated.
    pub fn parse(text: &str) -> Result<UbootEnv, String> {
        let text = text.trim_end_matches(['\0', '\n', '\r']);
        let mut vars: Vec<(String, String)> = Vec::new();
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            if line.contains('\0') {
                return Err("NUL byte inside the environment".into());
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {line:?} is not name=value"))?;
            if k.is_empty() || k.chars().any(|c| c.is_whitespace()) {
                return Err(format!("bad variable name {k:?}"));
            }
            match vars.iter_mut().find(|(n, _)| n == k) {
                // U-Boot's import keeps the last value of a repeated name.
                Some(slot) => slot.1 = v.to_owned(),
                None => vars.push((k.to_owned(), v.to_owned())),
            }
        }
        Ok(UbootEnv { vars })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(v) => v.1 = value.to_owned(),
            None => self.vars.push((name.to_owned(), value.to_owned())),
        }
    }

    /// `name=value\n` per variable, no NUL: `env import -t ${addr} ${filesize}` reads it.
    pub fn render(&self) -> String {
        self.vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// The Pi firmware's autoboot.txt as Lucid writes it: `[all]` with `tryboot_a_b=1` and
/// the committed boot partition, `[tryboot]` with the partition a tryboot reboot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    pub active: Slot,
    pub tryboot: Slot,
}

impl Autoboot {
    /// Parses the two sections strictly enough to never misread the committed slot:
    /// `[all]` must set `tryboot_a_b=1` and `boot_partition=2|3`; `[tryboot]` must set
    /// `boot_partition=2|3`. Other lines and sections are ignored (rewritten away).
    pub fn parse(text: &str) -> Result<Autoboot, String> {
        let mut section = String::new();
        let (mut all, mut tryboot, mut ab) = (None, None, false);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            match (section.as_str(), k.trim()) {
                ("all", "tryboot_a_b") => ab = v.trim() == "1",
                (s @ ("all" | "tryboot"), "boot_partition") => {
                    let slot = v
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .and_then(Slot::from_boot_partition)
                        .ok_or_else(|| format!("[{s}] boot_partition={v} is not 2 or 3"))?;
                    if s == "all" { all = Some(slot) } else { tryboot = Some(slot) }
                }
                _ => {}
            }
        }
        if !ab {
            return Err("[all] does not set tryboot_a_b=1".into());
        }
        let active = all.ok_or("[all] has no boot_partition")?;
        Ok(Autoboot { active, tryboot: tryboot.unwrap_or(active) })
    }

    pub fn render(&self) -> String {
        format!(
            "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            self.active.boot_partition(),
            self.tryboot.boot_partition()
        )
    }
}

/// Replaces `path` atomically: write a temp file beside it, fsync, rename over, fsync
/// the directory. On vfat, Linux's rename over an existing file is atomic enough for
/// the boot loader: it sees the old or the new directory entry.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // FAT has 8.3 short names plus long names; a short fixed suffix is safe on both.
    let tmp = dir.join(format!("{name}.new"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uboot_env_parse_tolerates_nul_and_newlines_and_keeps_others() {
        for text in [
            "lucid_active=a\nlucid_try=\n",
            "lucid_active=a\nlucid_try=\0",
            "lucid_active=a\nlucid_try=\n\0\n",
            "lucid_active=a",
        ] {
            let env = UbootEnv::parse(text).unwrap();
            assert_eq!(uboot_state(&env).unwrap(), BootState { active: Slot::A, armed: None }, "{text:?}");
        }
        let mut env = UbootEnv::parse("bootcount=3\nlucid_active=b\nlucid_try=a\n").unwrap();
        assert_eq!(uboot_state(&env).unwrap(), BootState { active: Slot::B, armed: Some(Slot::A) });
        env.set("lucid_try", "");
        assert_eq!(env.render(), "bootcount=3\nlucid_active=b\nlucid_try=\n");
        assert!(UbootEnv::parse("no equals sign\n").is_err());
        assert!(uboot_state(&UbootEnv::parse("lucid_active=c\n").unwrap()).is_err());
        assert!(uboot_state(&UbootEnv::parse("lucid_active=a\nlucid_try=x\n").unwrap()).is_err());
    }

    #[test]
    fn uboot_env_arm_commit_disarm() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(UBOOT_ENV_FILE), "lucid_active=a\nlucid_try=\n\0").unwrap();
        let bc = BootControl::new(BootControlKind::UbootEnv, dir.path());
        assert!(!bc.is_trial(Slot::A).unwrap());
        bc.arm(Slot::B).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(UBOOT_ENV_FILE)).unwrap(), "lucid_active=a\nlucid_try=b\n");
        bc.disarm().unwrap();
        assert_eq!(bc.state().unwrap(), BootState { active: Slot::A, armed: None });
        // boot.scr cleared lucid_try and booted b: a trial.
        assert!(bc.is_trial(Slot::B).unwrap());
        bc.commit(Slot::B).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(UBOOT_ENV_FILE)).unwrap(), "lucid_active=b\nlucid_try=\n");
        assert!(!bc.is_trial(Slot::B).unwrap());
        assert!(!dir.path().join("lucid.env.new").exists());
    }

    #[test]
    fn autoboot_txt_logic() {
        let text = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n";
        let a = Autoboot::parse(text).unwrap();
        assert_eq!(a, Autoboot { active: Slot::A, tryboot: Slot::A });
        assert_eq!(a.render(), text);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUTOBOOT_FILE);
        std::fs::write(&path, text).unwrap();
        let bc = BootControl::new(BootControlKind::RpiTryboot, dir.path());
        assert!(!bc.is_trial(Slot::A).unwrap());
        bc.arm(Slot::B).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
        assert_eq!(bc.state().unwrap(), BootState { active: Slot::A, armed: Some(Slot::B) });
        // The firmware booted partition 3 on tryboot: slot b runs, [all] still says 2.
        assert!(bc.is_trial(Slot::B).unwrap());
        bc.commit(Slot::B).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n"
        );
        assert!(!bc.is_trial(Slot::B).unwrap());
        bc.arm(Slot::A).unwrap();
        bc.disarm().unwrap();
        assert_eq!(bc.state().unwrap(), BootState { active: Slot::B, armed: None });
        // A missing [tryboot] section means "same as [all]"; comments are fine.
        assert_eq!(
            Autoboot::parse("# lucid\n[all]\ntryboot_a_b=1\nboot_partition=3\n").unwrap(),
            Autoboot { active: Slot::B, tryboot: Slot::B }
        );
        for bad in [
            "[all]\nboot_partition=2\n",
            "[all]\ntryboot_a_b=1\n",
            "[all]\ntryboot_a_b=1\nboot_partition=4\n",
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=x\n",
        ] {
            assert!(Autoboot::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn running_slot_from_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        let no_dt = dir.path().join("no-such-partition");
        std::fs::write(&p, "console=ttyAMA0 root=/dev/vda6 lucid.slot=b rootwait\n").unwrap();
        assert_eq!(running_slot_or_dt(&p, &no_dt).unwrap(), Slot::B);
        std::fs::write(&p, "console=ttyAMA0\n").unwrap();
        assert!(matches!(running_slot_or_dt(&p, &no_dt), Err(BootCtlError::NoSlot { .. })));
        std::fs::write(&p, "lucid.slot=c\n").unwrap();
        assert!(running_slot_or_dt(&p, &no_dt).is_err());
    }

    #[test]
    fn running_slot_from_the_pi_device_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        let dt = dir.path().join("partition");
        std::fs::write(&cmdline, "console=ttyS1,115200 rootwait panic=5\n").unwrap();
        // The firmware's property is a big-endian u32.
        std::fs::write(&dt, [0, 0, 0, 3]).unwrap();
        assert_eq!(slot_from_dt_partition(&dt), Some(Slot::B));
        assert_eq!(running_slot_or_dt(&cmdline, &dt).unwrap(), Slot::B);
        std::fs::write(&dt, [0, 0, 0, 2]).unwrap();
        assert_eq!(running_slot_or_dt(&cmdline, &dt).unwrap(), Slot::A);
        // The command line, when it names a slot, wins over the device tree.
        std::fs::write(&cmdline, "lucid.slot=b\n").unwrap();
        assert_eq!(running_slot_or_dt(&cmdline, &dt).unwrap(), Slot::B);
        // Anything but a 4-byte 2 or 3 names no slot: other partitions, little-endian
        // bytes, wrong lengths.
        std::fs::write(&cmdline, "console=ttyS1,115200\n").unwrap();
        for bad in [&[0u8, 0, 0, 1][..], &[3, 0, 0, 0], &[0, 0, 3], &[0, 0, 0, 0, 3], &[0, 0, 1, 3], &[]] {
            std::fs::write(&dt, bad).unwrap();
            assert_eq!(slot_from_dt_partition(&dt), None, "{bad:?}");
            assert!(matches!(running_slot_or_dt(&cmdline, &dt), Err(BootCtlError::NoSlot { .. })), "{bad:?}");
        }
    }
}
