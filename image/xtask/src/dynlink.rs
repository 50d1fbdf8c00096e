//! Debian programs in the root file system (`[rootfs] packages`), with what a dynamically
//! linked one needs to run: the glibc loader and the closure of its `NEEDED` libraries,
//! found in the packages the manifest lists as `[rootfs] libraries`.
//!
//! The library packages are listed by hand rather than derived from the `.deb`
//! `Depends:` fields: `Depends` names whole packages (with maintainer scripts, docs and
//! helpers we do not want, and alternatives to choose between), while `readelf -d` names
//! exactly the shared objects the loader will open. The manifest says where to look; the
//! ELF headers say what to take; a `NEEDED` library found in none of the listed packages
//! fails the build, naming it and the program that needs it.
//!
//! It must not install anything a program does not need (no whole library packages), and
//! must not touch the static lucidd, which needs none of this.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::board::Rootfs;
use crate::deb::DebCache;

/// The multiarch directory of Debian's arm64 libraries.
const MULTIARCH: &str = "aarch64-linux-gnu";

/// What `install` added, for the build's report.
#[derive(Debug, Default)]
pub struct Installed {
    pub files: Vec<String>,
    pub libraries: Vec<String>,
    pub bytes: u64,
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut b)).is_ok() && b == *b"\x7fELF"
}

/// `NEEDED` entries and the program interpreter of an ELF file (`readelf -dlW`).
pub fn needed(elf: &Path) -> Result<(Vec<String>, Option<String>)> {
    let out = Command::new("aarch64-linux-gnu-readelf")
        .arg("-dlW")
        .arg(elf)
        .output()
        .context("aarch64-linux-gnu-readelf (binutils-aarch64-linux-gnu; run ./scripts/setup)")?;
    if !out.status.success() {
        bail!("readelf {}: {}", elf.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_readelf(&String::from_utf8_lossy(&out.stdout)))
}

/// The `NEEDED` names and interpreter in `readelf -dlW` output. Pure, for tests.
pub fn parse_readelf(text: &str) -> (Vec<String>, Option<String>) {
    let mut libs = Vec::new();
    let mut interp = None;
    for line in text.lines() {
        if line.contains("(NEEDED)")
            && let Some(name) = line.split("Shared library: [").nth(1).and_then(|r| r.split(']').next())
        {
            libs.push(name.to_owned());
        }
        if let Some(p) = line.split("Requesting program interpreter: ").nth(1).and_then(|r| r.split(']').next()) {
            interp = Some(p.to_owned());
        }
    }
    (libs, interp)
}

/// `path` inside the unpacked package at `root`, symlinks followed within that root (an
/// absolute link target names a path in the package, not on this machine).
fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut p = root.join(path.strip_prefix("/").unwrap_or(path));
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(p);
        }
        let t = std::fs::read_link(&p).ok()?;
        p = if t.is_absolute() { root.join(t.strip_prefix("/").ok()?) } else { p.parent()?.join(t) };
    }
    None
}

fn copy_tree(src: &Path, dest: &Path, elves: &mut Vec<PathBuf>, added: &mut Installed) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let _ = std::fs::remove_file(dest);
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dest)?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(dest)?;
        let mut entries: Vec<_> = std::fs::read_dir(src)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        entries.sort();
        for name in entries {
            copy_tree(&src.join(&name), &dest.join(&name), elves, added)?;
        }
    } else {
        std::fs::copy(src, dest).with_context(|| format!("copy {}", src.display()))?;
        added.bytes += meta.len();
        if is_elf(dest) {
            elves.push(dest.to_owned());
        }
    }
    Ok(())
}

/// Installs `[rootfs] packages` into the root at `dir`, then the loader and the `NEEDED`
/// closure of every ELF file they brought, from `[rootfs] libraries`.
pub fn install(cache: &DebCache, rootfs: &Rootfs, dir: &Path) -> Result<Installed> {
    let mut added = Installed::default();
    if rootfs.packages.is_empty() {
        return Ok(added);
    }
    let mut elves = Vec::new();
    for p in &rootfs.packages {
        let root = cache.unpack(&p.package)?;
        for path in &p.paths {
            let src = root.join(path);
            if std::fs::symlink_metadata(&src).is_err() {
                bail!("[rootfs] packages: {} has no {path}", p.package);
            }
            copy_tree(&src, &dir.join(path), &mut elves, &mut added)?;
            added.files.push(format!("{}:{path}", p.package));
        }
    }
    let mut lib_roots = Vec::new();
    for l in &rootfs.libraries {
        lib_roots.push((l.clone(), cache.unpack(l)?));
    }
    let search = |name: &str| -> Option<(String, PathBuf)> {
        lib_roots.iter().find_map(|(pkg, root)| {
            [format!("lib/{MULTIARCH}/{name}"), format!("usr/lib/{MULTIARCH}/{name}"), format!("lib/{name}")]
                .iter()
                .find_map(|rel| resolve_in(root, Path::new(rel)))
                .map(|p| (pkg.clone(), p))
        })
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    while let Some(elf) = elves.pop() {
        let (libs, interp) = needed(&elf)?;
        let shown = elf.strip_prefix(dir).unwrap_or(&elf).display().to_string();
        if let Some(i) = interp
            && done.insert(i.clone())
        {
            let name = Path::new(&i).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let Some((pkg, src)) = search(&name) else {
                bail!("/{shown} asks for the loader {i}, found in none of [rootfs] libraries {:?}", rootfs.libraries);
            };
            let dest = dir.join(i.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap())?;
            std::fs::copy(&src, &dest)?;
            added.bytes += std::fs::metadata(&dest)?.len();
            added.libraries.push(format!("{i} ({pkg})"));
        }
        for lib in libs {
            if !done.insert(lib.clone()) {
                continue;
            }
            let Some((pkg, src)) = search(&lib) else {
                bail!(
                    "/{shown} needs {lib}, found in none of [rootfs] libraries {:?}: add the package that ships it (apt-file search {lib})",
                    rootfs.libraries
                );
            };
            let dest = dir.join("lib").join(MULTIARCH).join(&lib);
            std::fs::create_dir_all(dest.parent().unwrap())?;
            std::fs::copy(&src, &dest)?;
            added.bytes += std::fs::metadata(&dest)?.len();
            added.libraries.push(format!("{lib} ({pkg})"));
            elves.push(dest);
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readelf_output_names_the_libraries_and_the_loader() {
        let text = "\
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libnl-3.so.200]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]
";
        let (libs, interp) = parse_readelf(text);
        assert_eq!(libs, ["libnl-3.so.200", "libc.so.6"]);
        assert_eq!(interp.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
    }

    #[test]
    fn links_resolve_inside_the_package() {
        let d = tempfile::tempdir().unwrap();
        let lib = d.path().join("lib").join(MULTIARCH);
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libx.so.1.2.3"), b"x").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2.3", lib.join("libx.so.1")).unwrap();
        std::os::unix::fs::symlink(format!("/lib/{MULTIARCH}/libx.so.1"), d.path().join("lib/libx.so")).unwrap();
        assert_eq!(resolve_in(d.path(), Path::new("/lib/libx.so")), Some(lib.join("libx.so.1.2.3")));
        assert_eq!(resolve_in(d.path(), Path::new("lib/nothing.so")), None);
    }
}
