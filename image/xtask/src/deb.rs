//! Debian arm64 packages for the image: fetched with `apt-get download` into a cache,
//! unpacked once with `dpkg-deb -x`. No root and no chroot: the packages are only
//! sources of files. Metapackages (`linux-image-arm64`) are resolved to the package they
//! depend on, so the cache names the exact kernel that went into an image. Packages that
//! must match that kernel to the Debian revision (headers, kbuild, source: kmod.rs) are
//! downloaded at an exact version, also for the host's architecture.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

pub struct DebCache {
    pub dir: PathBuf,
}

impl DebCache {
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("debs"))?;
        std::fs::create_dir_all(dir.join("unpacked"))?;
        Ok(DebCache { dir })
    }

    /// `name` with `:arm64` unless it is an `Architecture: all` package.
    fn qualified(name: &str) -> String {
        if name.contains(':') || Self::arch_all(name) { name.to_owned() } else { format!("{name}:arm64") }
    }

    /// Whether apt knows `name` as an `Architecture: all` package (firmware, for example:
    /// raspi-firmware, firmware-brcm80211), which `name:arm64` does not find.
    fn arch_all(name: &str) -> bool {
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "Architecture: all"))
    }

    /// The real package behind a metapackage (its first `linux-image-*` dependency).
    pub fn resolve(&self, name: &str) -> Result<String> {
        if name != "linux-image-arm64" {
            return Ok(name.to_owned());
        }
        let out = Command::new("apt-cache").args(["depends", &Self::qualified(name)]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(dep) = line.trim().strip_prefix("Depends: ") {
                let dep = dep.split(':').next().unwrap_or(dep);
                if dep.starts_with("linux-image-") {
                    return Ok(dep.to_owned());
                }
            }
        }
        bail!(
            "cannot resolve {name}: is arm64 added (`dpkg --add-architecture arm64`, apt-get update)? run ./scripts/setup"
        )
    }

    /// Download (once) and unpack (once) a package; returns the unpacked root.
    pub fn unpack(&self, name: &str) -> Result<PathBuf> {
        let real = self.resolve(name)?;
        let deb = match self.find_deb(&real)? {
            Some(d) => d,
            None => {
                eprintln!("xtask: apt-get download {real}");
                let q = Self::qualified(&real);
                run(Command::new("apt-get").args(["download", "-q", &q]).current_dir(self.dir.join("debs")))
                    .with_context(|| {
                        format!(
                            "apt-get download {q} (is the non-free-firmware component enabled? run ./scripts/setup)"
                        )
                    })?;
                self.find_deb(&real)?.with_context(|| format!("apt-get download {q} left no .deb"))?
            }
        };
        let stem = deb.file_stem().unwrap().to_string_lossy().into_owned();
        let dest = self.dir.join("unpacked").join(&stem);
        if !dest.join(".done").exists() {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&dest)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))?;
            std::fs::write(dest.join(".done"), b"")?;
        }
        Ok(dest)
    }

    /// The cached `.deb` behind `name` (metapackages resolved), downloading it if needed:
    /// the file `unpack` extracts, so its fields describe what went into the image.
    pub fn deb(&self, name: &str) -> Result<PathBuf> {
        self.unpack(name)?;
        let real = self.resolve(name)?;
        self.find_deb(&real)?.with_context(|| format!("no cached .deb for {real}"))
    }

    /// `name` at exactly `version` for `arch` (`arm64`, `all`, or the host's), downloaded
    /// once into the cache. Unlike `unpack`, which takes whatever apt offers, this is for
    /// packages that must match another one to the Debian revision (headers and kernel).
    pub fn download_exact(&self, name: &str, arch: &str, version: &str) -> Result<PathBuf> {
        // apt's own file name: the epoch colon is written %3a.
        let file = self.dir.join("debs").join(format!("{name}_{}_{arch}.deb", version.replace(':', "%3a")));
        if file.exists() {
            return Ok(file);
        }
        // Architecture-all packages take no qualifier; apt finds them from any architecture.
        let spec = if arch == "all" { format!("{name}={version}") } else { format!("{name}:{arch}={version}") };
        eprintln!("xtask: apt-get download {spec}");
        run(Command::new("apt-get").args(["download", "-q", &spec]).current_dir(self.dir.join("debs"))).with_context(|| {
            format!(
                "apt-get download {spec}: apt must offer {name} at exactly {version}, the version of the kernel in the image \
                 (apt-get update; if the archive dropped that version, the kernel package in {} is stale: delete it)",
                self.dir.join("debs").display()
            )
        })?;
        if !file.exists() {
            bail!("apt-get download {spec} did not leave {}", file.display());
        }
        Ok(file)
    }

    fn find_deb(&self, name: &str) -> Result<Option<PathBuf>> {
        let prefix = format!("{name}_");
        let mut hits: Vec<PathBuf> = std::fs::read_dir(self.dir.join("debs"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .collect();
        hits.sort();
        Ok(hits.pop())
    }
}

/// The one kernel version under `lib/modules/` of an unpacked kernel package.
pub fn kernel_version(kroot: &Path) -> Result<String> {
    let mut v: Vec<String> = std::fs::read_dir(kroot.join("lib/modules"))
        .context("kernel package has no lib/modules")?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
        .collect();
    v.sort();
    v.pop().context("no kernel version under lib/modules")
}

/// One control field of a `.deb` (`dpkg-deb -f DEB FIELD`), trimmed.
pub fn field(deb: &Path, name: &str) -> Result<String> {
    let out = crate::run_output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?;
    let v = out.trim().to_owned();
    if v.is_empty() {
        bail!("{} has no {name} field", deb.display());
    }
    Ok(v)
}

/// The host's Debian architecture (`dpkg --print-architecture`): build tools such as
/// `linux-kbuild-*` must run here, whatever the image's architecture.
pub fn host_arch() -> Result<String> {
    Ok(crate::run_output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned())
}
