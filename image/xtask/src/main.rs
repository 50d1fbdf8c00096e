//! `xtask`: the CLI over the image library (`./scripts/image`, `./scripts/qemu`,
//! `./scripts/flash` call it). Errors become exit codes here: 0 ok, 1 failure, 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{assemble, board, buildroot, flash, from_buildroot, qemu, repo_root};

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "Lucid SD image tooling")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build out/BOARD/: the SD image, a compressed copy and the OTA bundle.
    Image {
        board: String,
        /// Build number (monotonic; an OTA test builds 2 over 1).
        #[arg(long, default_value_t = 1)]
        build: u64,
        /// An image variant from image/variants/ (e.g. broken-daemon), or several stacked
        /// left to right (`raspi3b,broken-daemon`: out/BOARD-raspi3b-broken-daemon/).
        #[arg(long)]
        variant: Option<String>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Debian package cache (downloads and unpacked trees).
        #[arg(long, env = "LUCID_IMAGE_CACHE", default_value = "out/cache")]
        cache: PathBuf,
        /// The static aarch64 lucidd to install (./scripts/image sets LUCID_LUCIDD from
        /// CARGO_TARGET_DIR, where it just built it).
        #[arg(long, env = "LUCID_LUCIDD", default_value = "target/aarch64-unknown-linux-musl/release/lucidd")]
        lucidd: PathBuf,
        #[arg(long, value_enum, default_value = "xz")]
        compress: assemble::Compress,
        /// Buildroot's BINARIES_DIR: make the image from Buildroot's kernel, device trees,
        /// rpi-firmware/, u-boot.bin and rootfs.squashfs (post-image.sh) instead of Debian
        /// packages.
        #[arg(long)]
        from_buildroot: Option<PathBuf>,
        /// With --from-buildroot: Buildroot's TARGET_DIR (busybox and modules for the
        /// initramfs, lucidd for the bundle).
        #[arg(long, env = "TARGET_DIR")]
        target_dir: Option<PathBuf>,
        /// With --from-buildroot: where the OTA keys `rootfs-files` used are (the Debian
        /// build uses OUT/keys).
        #[arg(long, default_value = "out/keys")]
        keys: PathBuf,
    },
    /// Buildroot post-build: install the generated /etc/lucid files, OTA key, fstab and
    /// mount points into TARGET_DIR (what `image` generates into its own root).
    RootfsFiles {
        board: String,
        target_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        build: u64,
        #[arg(long)]
        variant: Option<String>,
        /// Development keys are made here once (LUCID_OTA_KEY/LUCID_OTA_VKEY win).
        #[arg(long, default_value = "out/keys")]
        keys: PathBuf,
    },
    /// Boot a board's image in QEMU on a copy-on-write overlay; console on stdout.
    Qemu {
        #[arg(default_value = "qemu-aarch64-virt")]
        board: String,
        /// A test variant that says how QEMU emulates the board (e.g. rpi3's `raspi3b`).
        #[arg(long)]
        variant: Option<String>,
        /// Image to boot (default out/NAME/NAME.img, NAME = BOARD[-VARIANT]); its `work/` dir beside it.
        #[arg(long)]
        image: Option<PathBuf>,
        /// First host port; the five services map to it and the next four.
        #[arg(long, env = "LUCID_QEMU_PORT_BASE", default_value_t = 18083)]
        port_base: u16,
        /// Boot as if the image were written to a card of this size (`4G`, `512M`, bytes):
        /// the overlay is that large, and the first boot grows the data partition to it.
        #[arg(long, value_name = "SIZE", value_parser = qemu::parse_size)]
        disk_size: Option<u64>,
    },
    /// Write an image to a removable card (checks, confirmation, progress, verify).
    Flash {
        image: PathBuf,
        device: PathBuf,
        /// Skip the question (the removable/mounted checks still run).
        #[arg(long)]
        yes: bool,
    },
    /// Print a board's merged manifest and generated lucidd.toml.
    Board {
        board: String,
        #[arg(long)]
        variant: Option<String>,
    },
    /// Check the Buildroot external tree (references, defconfig completeness).
    CheckBuildroot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let repo = repo_root();
    std::env::set_current_dir(&repo)?;
    match cli.cmd {
        Cmd::Image { board, build, variant, out, cache, lucidd, compress, from_buildroot, target_dir, keys } => {
            let t = std::time::Instant::now();
            let (out, cache, lucidd) = (repo.join(out), repo.join(cache), repo.join(lucidd));
            let r = match from_buildroot {
                None => {
                    let o =
                        assemble::Options { repo: repo.clone(), board, variant, build, out, cache, lucidd, compress };
                    assemble::build(&o)?
                }
                Some(binaries) => {
                    let target = target_dir
                        .ok_or_else(|| anyhow::anyhow!("--from-buildroot needs --target-dir (or TARGET_DIR)"))?;
                    let o = from_buildroot::Options {
                        repo: repo.clone(),
                        board,
                        variant,
                        build,
                        binaries: repo.join(binaries),
                        target: repo.join(target),
                        out,
                        keys: repo.join(keys),
                        compress,
                    };
                    from_buildroot::image(&o)?
                }
            };
            println!("built {} in {:.0} s", r.image.display(), t.elapsed().as_secs_f64());
            for (name, size) in &r.sizes {
                println!("  {name:<40} {:>12} bytes ({:.1} MiB)", size, *size as f64 / 1048576.0);
            }
            if r.bundle.is_none() {
                println!("  OTA bundle: not built (this lucidd has no `bundle create` yet)");
            }
        }
        Cmd::RootfsFiles { board, target_dir, build, variant, keys } => {
            let target = repo.join(target_dir);
            from_buildroot::rootfs_files(&repo, &board, variant.as_deref(), &target, build, &repo.join(keys))?;
            println!("installed /etc/lucid (board {board}, build {build}) into {}", target.display());
        }
        Cmd::Qemu { board, variant, image, port_base, disk_size } => {
            let b = board::load(&repo, &board, variant.as_deref())?;
            let image = image.unwrap_or_else(|| {
                let name = assemble::out_name(&board, variant.as_deref(), 1);
                repo.join("out").join(&name).join(format!("{name}.img"))
            });
            let work = image.parent().unwrap_or(Path::new(".")).join("work");
            let disk = std::env::temp_dir().join(format!("lucid-qemu-{}.qcow2", std::process::id()));
            qemu::overlay_for(&b, &image, &disk, disk_size)?;
            eprintln!(
                "xtask: booting {} (overlay {}); ports {}..{} -> 8083..8087; quit with Ctrl-A X",
                image.display(),
                disk.display(),
                port_base,
                port_base + 4
            );
            let st = qemu::command(&b, &work, &disk, &qemu::default_forwards(port_base), true)?.status()?;
            let _ = std::fs::remove_file(&disk);
            if !st.success() {
                anyhow::bail!("qemu exited with {st}");
            }
        }
        Cmd::Flash { image, device, yes } => {
            let sys = flash::SysPaths::default();
            let kind = flash::image_kind(&image)?;
            let name = flash::check_device(&device, &sys, true)?;
            flash::confirm(&image, &device, &name, &sys, yes)?;
            let n = flash::write_and_verify(&image, kind, &device)?;
            println!("wrote and verified {n} bytes on {}", device.display());
        }
        Cmd::Board { board, variant } => {
            let b = board::load(&repo, &board, variant.as_deref())?;
            println!("{b:#?}\n--- /etc/lucid/lucidd.toml ---\n{}", assemble::lucidd_config(&b)?);
        }
        Cmd::CheckBuildroot => {
            let problems = buildroot::check(&repo);
            if !problems.is_empty() {
                anyhow::bail!("buildroot/ has problems:\n  {}", problems.join("\n  "));
            }
            println!("buildroot/: every referenced file exists; every defconfig is complete");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The Buildroot hooks' xtask command lines are ones this CLI accepts.
    use super::*;

    /// The `"$XTASK" ...` command of a hook (continuation lines joined), with the shell
    /// variables replaced by sample values.
    fn hook_args(hook: &str) -> Vec<String> {
        let text = std::fs::read_to_string(repo_root().join("buildroot/board").join(hook)).unwrap();
        let text = text.replace("\\\n", " ");
        let line = text.lines().find(|l| l.starts_with("\"$XTASK\"")).expect("a \"$XTASK\" line");
        let mut args = vec!["xtask".to_owned()];
        for w in line.split_whitespace().skip(1) {
            let w = w.trim_matches('"');
            args.push(match w {
                "$BOARD" => "rpi4".to_owned(),
                w if w.starts_with("${LUCID_BUILD") => "3".to_owned(),
                w if w.contains('$') => "/tmp/x".to_owned(),
                w => w.to_owned(),
            });
        }
        args
    }

    #[test]
    fn post_build_calls_rootfs_files() {
        let cli = Cli::try_parse_from(hook_args("post-build.sh")).unwrap();
        assert!(matches!(cli.cmd, Cmd::RootfsFiles { ref board, build: 3, .. } if board == "rpi4"), "{cli:?}");
    }

    #[test]
    fn post_image_calls_image_from_buildroot() {
        let cli = Cli::try_parse_from(hook_args("post-image.sh")).unwrap();
        match cli.cmd {
            Cmd::Image { board, build, from_buildroot, target_dir, .. } => {
                assert_eq!((board.as_str(), build), ("rpi4", 3));
                assert!(from_buildroot.is_some() && target_dir.is_some());
            }
            c => panic!("{c:?}"),
        }
    }
}
