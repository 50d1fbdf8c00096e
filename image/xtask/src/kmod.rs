//! Out-of-tree kernel modules (`[[kernel.out_of_tree]]` in a manifest): modules Debian's
//! kernel config leaves off (vicodec, the virtual FWHT codec), built from Debian's own
//! `linux-source` for the exact kernel the image carries, and the `modules.dep` line that
//! lets busybox modprobe load them with their in-kernel dependencies.
//!
//! Owns: fetching `linux-headers-KVER`, its `-common` headers, `linux-kbuild-X.Y` (for
//! the host) and `linux-source-X.Y`, all at the kernel package's exact version, into the
//! package cache; one headers tree per kernel; extracting only the module's directory
//! from the source tarball; `make M=`; and the cache of built `.ko` files keyed by kernel
//! release and package version, so a second image build does not rebuild.
//!
//! Must not: install packages on the host, need root, or change the unpacked kernel
//! package (every board shares it). Build outputs live under `CACHE/kmod/` only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::board::OutOfTree;
use crate::deb::{self, DebCache};
use crate::run;

/// A module built for the image's kernel, ready to install.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    /// The cached `.ko`.
    pub ko: PathBuf,
    /// Its `depends=` (module names, from modpost): what modprobe must load first.
    pub depends: Vec<String>,
}

/// Where an out-of-tree module goes under `lib/modules/KVER/`: depmod's conventional
/// directory for modules that are not the kernel package's own.
pub fn install_path(name: &str) -> String {
    format!("updates/{name}.ko")
}

/// The kernel an image carries: its release (`6.1.0-56-arm64`, the directory under
/// lib/modules and the module vermagic) and the Debian version of its package
/// (`6.1.192-2`), which headers, kbuild and source must equal.
#[derive(Debug, Clone)]
pub struct KernelId {
    pub release: String,
    pub version: String,
}

impl KernelId {
    /// From the kernel package's `.deb` and its unpacked release.
    pub fn of(kernel_deb: &Path, release: &str) -> Result<KernelId> {
        Ok(KernelId { release: release.to_owned(), version: deb::field(kernel_deb, "Version")? })
    }

    fn key(&self) -> String {
        format!("{}_{}", self.release, self.version)
    }
}

/// Build (or take from the cache) every module in `specs` for kernel `k`.
pub fn build_all(cache: &DebCache, k: &KernelId, specs: &[OutOfTree]) -> Result<Vec<Built>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let mut built = Vec::new();
    let mut tree: Option<Tree> = None;
    for spec in specs {
        let dir = cache.dir.join("kmod/modules").join(k.key()).join(&spec.name);
        let ko = dir.join(format!("{}.ko", spec.name));
        let stamp = dir.join("stamp");
        // The stamp is the recipe: a changed source directory or Kconfig symbol rebuilds.
        let recipe = format!("source={}\nconfig={}\n", spec.source, spec.config);
        if ko.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(recipe.as_str()) {
            eprintln!("xtask: {} for {} {} from the cache", spec.name, k.release, k.version);
        } else {
            if tree.is_none() {
                tree = Some(Tree::prepare(cache, k)?);
            }
            let t = tree.as_ref().unwrap();
            let started = std::time::Instant::now();
            build_one(t, spec, &dir, &ko)?;
            std::fs::write(&stamp, &recipe)?;
            eprintln!("xtask: built {} for {} in {:.1} s", spec.name, k.release, started.elapsed().as_secs_f64());
        }
        let bytes = std::fs::read(&ko)?;
        let vermagic = modinfo(&bytes, "vermagic").with_context(|| format!("{} has no vermagic", ko.display()))?;
        // The kernel refuses a module whose vermagic names another release: catch it here.
        if vermagic.split_whitespace().next() != Some(k.release.as_str()) {
            bail!("{}: vermagic {vermagic:?} is not for kernel {}", ko.display(), k.release);
        }
        let depends = modinfo(&bytes, "depends")
            .map(|d| d.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        built.push(Built { name: spec.name.clone(), ko, depends });
    }
    Ok(built)
}

/// The packages and trees one kernel's out-of-tree builds need.
struct Tree {
    /// The headers directory `make -C` runs in (`usr/src/linux-headers-KVER`).
    headers: PathBuf,
    /// `linux-source-X.Y.tar.xz`'s package, extracted from on demand.
    source_deb: PathBuf,
    /// `linux-source-X.Y`, the tarball's top directory.
    source_name: String,
    /// Where source directories are extracted for this version.
    source_root: PathBuf,
    /// `VERSION.PATCHLEVEL.SUBLEVEL` of the headers.
    linux: String,
}

impl Tree {
    fn prepare(cache: &DebCache, k: &KernelId) -> Result<Tree> {
        let hdr_name = format!("linux-headers-{}", k.release);
        let hdr_deb = cache.download_exact(&hdr_name, "arm64", &k.version)?;
        // The headers package names its two companions (`-common` and kbuild) itself,
        // so flavour naming rules need not be guessed here.
        let depends = deb::field(&hdr_deb, "Depends")?;
        let (common_name, kbuild_name) = companions(&depends).with_context(|| {
            format!("{hdr_name}: no linux-headers-*-common and linux-kbuild-* in Depends: {depends}")
        })?;
        let common_deb = cache.download_exact(&common_name, "all", &k.version)?;
        // kbuild's fixdep/modpost run on the build machine: the host's architecture.
        let kbuild_deb = cache.download_exact(&kbuild_name, &deb::host_arch()?, &k.version)?;
        let source_name = kbuild_name.replacen("linux-kbuild-", "linux-source-", 1);
        // Exactly the kernel's version, not just the same 6.1.y: the driver's own files
        // come from this source while the kernel's headers come from linux-headers, and a
        // driver from another stable release may rely on in-kernel changes those headers
        // lack (a build failure at best, a module that misbehaves at worst). All four
        // packages come from the same Debian source upload, so if the headers are in the
        // archive at this version, so is the source.
        let source_deb = cache.download_exact(&source_name, "all", &k.version)?;

        // The three header packages share one root, as on an installed system: the
        // headers' `scripts` and `tools` are relative links into linux-kbuild.
        let root = cache.dir.join("kmod/headers").join(k.key());
        if !root.join(".done").exists() {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root)?;
            for d in [&hdr_deb, &common_deb, &kbuild_deb] {
                run(Command::new("dpkg-deb").arg("-x").arg(d).arg(&root))?;
            }
            let headers = root.join("usr/src").join(&hdr_name);
            // Debian's flavour Makefile is one `include /usr/src/linux-headers-...-common/Makefile`:
            // point it into this root, since nothing is installed under /usr/src.
            let mk = headers.join("Makefile");
            let text = std::fs::read_to_string(&mk).with_context(|| format!("{} in {hdr_name}", mk.display()))?;
            std::fs::write(&mk, rebase_makefile(&text, &root))?;
            std::fs::write(root.join(".done"), b"")?;
        }
        let headers = root.join("usr/src").join(&hdr_name);
        let common_mk = root.join("usr/src").join(&common_name).join("Makefile");
        let linux = makefile_version(
            &std::fs::read_to_string(&common_mk).with_context(|| format!("reading {}", common_mk.display()))?,
        )
        .with_context(|| format!("no VERSION/PATCHLEVEL/SUBLEVEL in {}", common_mk.display()))?;
        let source_root = cache.dir.join("kmod/source").join(&k.version);
        Ok(Tree { headers, source_deb, source_name, source_root, linux })
    }

    /// `linux-source-X.Y/<dir>` from the tarball inside the source package, extracted once
    /// per directory. The whole 140 MB tarball is streamed (xz has no index), but only the
    /// directory and the top Makefile are written.
    fn source_dir(&self, dir: &str) -> Result<PathBuf> {
        let top = self.source_root.join(&self.source_name);
        let dest = top.join(dir);
        let marker = self.source_root.join(format!(".done-{}", dir.replace('/', "_")));
        if !marker.exists() {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&self.source_root)?;
            eprintln!("xtask: extracting {dir} from {} (streams the whole tarball)", self.source_deb.display());
            let tarball = format!("./usr/src/{}.tar.xz", self.source_name);
            let script = format!(
                "set -o pipefail; dpkg-deb --fsys-tarfile '{deb}' | tar -xO '{tarball}' | tar -xJ -C '{root}' '{top}/Makefile' '{top}/{dir}'",
                deb = self.source_deb.display(),
                root = self.source_root.display(),
                top = self.source_name,
            );
            run(Command::new("bash").args(["-c", &script])).with_context(|| {
                format!("{} has no {dir} (is `source` a directory of the kernel tree?)", self.source_name)
            })?;
            std::fs::write(&marker, b"")?;
        }
        let v = makefile_version(&std::fs::read_to_string(top.join("Makefile"))?)
            .context("linux-source Makefile has no version")?;
        if v != self.linux {
            bail!(
                "{} is Linux {v}, but the kernel's headers are Linux {}: they must be the same release",
                self.source_name,
                self.linux
            );
        }
        if !dest.is_dir() {
            bail!("{} has no directory {dir}", self.source_name);
        }
        Ok(dest)
    }
}

fn build_one(t: &Tree, spec: &OutOfTree, dir: &Path, ko: &Path) -> Result<()> {
    let src = t.source_dir(&spec.source)?;
    // Built in a copy: kbuild writes its objects beside the sources, and the extracted
    // directory stays pristine for the next kernel release or a changed recipe.
    let work = dir.join("build");
    let _ = std::fs::remove_dir_all(&work);
    crate::copy_tree(&src, &work)?;
    run(Command::new("make")
        .arg("-C")
        .arg(&t.headers)
        .arg(format!("M={}", work.display()))
        .args(["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"])
        .arg(format!("{}=m", spec.config))
        .arg(format!("-j{}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)))
        .arg("modules"))
    .with_context(|| format!("building {} out of tree against {}", spec.name, t.headers.display()))?;
    let out = work.join(format!("{}.ko", spec.name));
    if !out.exists() {
        bail!(
            "make produced no {}.ko in {}: is {} the symbol of the obj-$(...) line of its Makefile?",
            spec.name,
            work.display(),
            spec.config
        );
    }
    std::fs::copy(&out, ko)?;
    Ok(())
}

/// The headers' `-common` package and the kbuild package, from the flavour headers'
/// `Depends` (`linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= ...), gcc-12`).
pub fn companions(depends: &str) -> Option<(String, String)> {
    let names: Vec<&str> = depends.split(',').filter_map(|d| d.split_whitespace().next()).collect();
    let common = names.iter().find(|n| n.starts_with("linux-headers-") && n.contains("-common"))?;
    let kbuild = names.iter().find(|n| n.starts_with("linux-kbuild-"))?;
    Some((common.to_string(), kbuild.to_string()))
}

/// Debian's flavour Makefile with its absolute `/usr/src/` include moved under `root`.
pub fn rebase_makefile(text: &str, root: &Path) -> String {
    text.replace(" /usr/src/", &format!(" {}/usr/src/", root.display()))
}

/// `6.1.192` from a kernel top Makefile's VERSION, PATCHLEVEL and SUBLEVEL lines.
pub fn makefile_version(text: &str) -> Option<String> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    Some(format!("{}.{}.{}", get("VERSION")?, get("PATCHLEVEL")?, get("SUBLEVEL")?))
}

/// A `key=value` string of a module's `.modinfo` section. The section is a run of
/// NUL-terminated strings; scanning the whole file for them is enough (and needs no
/// ELF parser or the host's `modinfo`, which is absent without kmod installed).
pub fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let pat = format!("{key}=");
    ko.split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find_map(|s| s.strip_prefix(&pat).map(str::to_owned))
}

/// The `modules.dep` line of a built module: `updates/NAME.ko:` and every module it needs,
/// directly or not, each listed before the modules it depends on. busybox modprobe
/// (like kmod) loads the list from the end, so the deepest dependency loads first.
/// `table` is the kernel's modules.dep: normalised module name -> (file, its own deps).
pub fn dep_line(b: &Built, table: &HashMap<String, (String, Vec<String>)>) -> Result<(String, Vec<String>)> {
    let norm = |s: &str| s.replace('-', "_");
    let by_file: HashMap<&str, &Vec<String>> = table.values().map(|(f, d)| (f.as_str(), d)).collect();
    // Depth-first, dependencies before dependants (post-order): a load order.
    fn visit(f: &str, by_file: &HashMap<&str, &Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == f) {
            return;
        }
        for d in by_file.get(f).map(|v| v.as_slice()).unwrap_or_default() {
            visit(d, by_file, order);
        }
        if !order.iter().any(|o| o == f) {
            order.push(f.to_owned());
        }
    }
    let mut order = Vec::new();
    for d in &b.depends {
        let (file, _) = table.get(&norm(d)).with_context(|| {
            format!("{} needs module {d}, which the kernel has neither as a module nor in its modules.dep", b.name)
        })?;
        visit(file, &by_file, &mut order);
    }
    order.reverse();
    let line = format!("{}:{}", install_path(&b.name), order.iter().map(|f| format!(" {f}")).collect::<String>());
    Ok((line, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_come_from_the_headers_depends() {
        let d = "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), gcc-12";
        assert_eq!(companions(d), Some(("linux-headers-6.1.0-56-common".into(), "linux-kbuild-6.1".into())));
        assert_eq!(companions("gcc-12"), None);
    }

    #[test]
    fn the_flavour_makefile_includes_the_common_one_inside_the_cache() {
        let m = "include /usr/src/linux-headers-6.1.0-56-common/Makefile\n";
        assert_eq!(
            rebase_makefile(m, Path::new("/c/kmod/headers/x")),
            "include /c/kmod/headers/x/usr/src/linux-headers-6.1.0-56-common/Makefile\n"
        );
    }

    #[test]
    fn makefile_version_reads_the_three_numbers() {
        let m = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = Curry Ramen\n";
        assert_eq!(makefile_version(m).as_deref(), Some("6.1.192"));
        assert_eq!(makefile_version("VERSION = 6\n"), None);
    }

    #[test]
    fn modinfo_finds_nul_separated_fields() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=v4l2-mem2mem,videodev\0vermagic=6.1.0-56-arm64 SMP mod_unload modversions aarch64\0";
        assert_eq!(modinfo(ko, "depends").as_deref(), Some("v4l2-mem2mem,videodev"));
        assert_eq!(modinfo(ko, "vermagic").unwrap().split_whitespace().next(), Some("6.1.0-56-arm64"));
        assert_eq!(modinfo(ko, "alias"), None);
    }

    fn table(dep: &str) -> HashMap<String, (String, Vec<String>)> {
        dep.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| {
                let stem =
                    Path::new(m).file_stem().unwrap().to_str().unwrap().trim_end_matches(".ko").replace('-', "_");
                (stem, (m.to_owned(), d.split_whitespace().map(str::to_owned).collect()))
            })
            .collect()
    }

    #[test]
    fn dep_line_lists_every_dependency_before_what_it_needs() {
        // The kernel's lines for vicodec's dependencies (busybox depmod of 6.1.0-56-arm64).
        let t = table(
            "k/mc.ko:\n\
             k/videodev.ko: k/mc.ko\n\
             k/vb2-common.ko:\n\
             k/vb2-v4l2.ko: k/vb2-common.ko k/videodev.ko k/mc.ko\n\
             k/vb2-memops.ko:\n\
             k/vb2-vmalloc.ko: k/vb2-memops.ko k/vb2-common.ko\n\
             k/v4l2-mem2mem.ko: k/vb2-v4l2.ko k/vb2-common.ko k/videodev.ko k/mc.ko\n",
        );
        let b = Built {
            name: "vicodec".into(),
            ko: PathBuf::from("x"),
            depends: ["v4l2-mem2mem", "vb2-v4l2", "videodev", "mc", "vb2-common", "vb2-vmalloc"]
                .map(String::from)
                .to_vec(),
        };
        let (line, files) = dep_line(&b, &t).unwrap();
        assert!(line.starts_with("updates/vicodec.ko: "), "{line}");
        assert_eq!(files.len(), 7, "each module once: {files:?}");
        // Loading from the end of the list must meet every dependency first.
        let load: Vec<&String> = files.iter().rev().collect();
        for (i, f) in load.iter().enumerate() {
            for d in &t.values().find(|(file, _)| file == *f).unwrap().1 {
                assert!(load[..i].contains(&d), "{f} loads before its dependency {d}: {load:?}");
            }
        }
        let missing = Built { depends: vec!["nosuch".into()], ..b };
        assert!(dep_line(&missing, &t).unwrap_err().to_string().contains("nosuch"));
    }

    #[test]
    #[ignore = "needs out/qemu-aarch64-virt-camera/ from ./scripts/image qemu-aarch64-virt --variant camera; scripts/test builds it before the ignored tests"]
    fn camera_image_initramfs_carries_vicodec_and_its_modules_dep_line() {
        let out = crate::repo_root().join("out/qemu-aarch64-virt-camera");
        let d = tempfile::tempdir().unwrap();
        // The initramfs as booted: initrd.img from the image's boot payload (slot a's p2).
        let script = format!(
            "set -o pipefail; MTOOLS_SKIP_CHECK=1 mcopy -n -i '{}' ::initrd.img - | gzip -dc | (cd '{}' && cpio -id --quiet)",
            out.join("boot.vfat").display(),
            d.path().display()
        );
        run(Command::new("bash").args(["-c", &script])).unwrap();
        let mods = std::fs::read_dir(d.path().join("lib/modules")).unwrap().next().unwrap().unwrap().path();
        let kver = mods.file_name().unwrap().to_str().unwrap().to_owned();
        let ko = std::fs::read(mods.join("updates/vicodec.ko")).expect("updates/vicodec.ko in the initramfs");
        assert_eq!(modinfo(&ko, "vermagic").unwrap().split_whitespace().next(), Some(kver.as_str()));
        let dep = std::fs::read_to_string(mods.join("modules.dep")).unwrap();
        let line = dep.lines().find(|l| l.starts_with("updates/vicodec.ko:")).expect("a modules.dep line for vicodec");
        for m in ["v4l2-mem2mem", "videobuf2-vmalloc", "videobuf2-v4l2", "videodev", "mc"] {
            assert!(line.split_whitespace().any(|f| f.ends_with(&format!("/{m}.ko"))), "{m} missing from {line}");
        }
        for f in line.split_whitespace().skip(1) {
            assert!(mods.join(f).exists(), "{f} is in vicodec's line but not in the initramfs");
        }
        let load = std::fs::read_to_string(d.path().join("etc/modules")).unwrap();
        assert!(load.lines().any(|l| l == "vivid") && load.lines().any(|l| l == "vicodec"), "{load}");
        let conf = std::fs::read_to_string(d.path().join("etc/modprobe.d/lucid.conf")).unwrap();
        assert!(conf.lines().any(|l| l.starts_with("options vivid n_devs=1 ")), "{conf}");
    }

    #[test]
    fn install_path_is_depmods_updates_directory() {
        assert_eq!(install_path("vicodec"), "updates/vicodec.ko");
    }
}
