//! The image tooling as a library, so `hil-tests` reuses the board manifests and the QEMU
//! command line instead of copying them. `main.rs` is the thin CLI over it.
//!
//! Modules: `board` (manifests), `deb` (Debian packages), `assemble` (the SD image),
//! `qemu` (boot the test board), `flash` (write a card safely), `buildroot` (check the
//! BR2_EXTERNAL tree), `from_buildroot` (the same image from Buildroot's outputs),
//! `kmod` (out-of-tree kernel modules for the Debian kernel), `dynlink` (Debian programs
//! with their shared libraries in the root file system). Only this crate runs the
//! external image tools.

pub mod assemble;
pub mod board;
pub mod buildroot;
pub mod deb;
pub mod dynlink;
pub mod flash;
pub mod from_buildroot;
pub mod kmod;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The repository root (this crate lives in image/xtask).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// Run a command; a non-zero exit is an error naming the command.
pub fn run(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("cannot start {c:?}"))?;
    if !st.success() {
        bail!("command failed ({st}): {c:?}");
    }
    Ok(())
}

/// Run a command and return its stdout.
pub fn run_output(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("cannot start {c:?}"))?;
    if !out.status.success() {
        bail!("command failed ({}): {c:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cp -a src/. dst/`: keeps modes and symlinks.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    run(Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dst))
}

#[cfg(test)]
mod tidy {
    //! The repository's tidy rule (firmware/lucidd/tests/it/tidy.rs) applied to the image
    //! tool and the hil tests: every `.rs` file opens with a `//!` doc.
    use std::path::{Path, PathBuf};

    fn rs(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                rs(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_rust_file_of_image_and_hil_tests_starts_with_a_module_doc() {
        let mut files = Vec::new();
        rs(&crate::repo_root().join("image"), &mut files);
        rs(&crate::repo_root().join("hil-tests"), &mut files);
        assert!(files.len() >= 8);
        let bad: Vec<_> = files.iter().filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!")).collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }
}
