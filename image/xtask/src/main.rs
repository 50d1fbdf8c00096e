//! `xtask`: the CLI over the image library (`./scripts/image`, `./scripts/qemu`,
//! `./scripts/flash` call it). Errors become exit codes here: 0 ok, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{assemble, board, buildroot, flash, qemu, repo_root};

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
        /// An image variant from image/variants/ (e.g. broken-daemon).
        #[arg(long)]
        variant: Option<String>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Debian package cache (downloads and unpacked trees).
        #[arg(long, env = "LUCID_IMAGE_CACHE", default_value = "out/cache")]
        cache: PathBuf,
        /// The static aarch64 lucidd to install.
        #[arg(long, default_value = "target/aarch64-unknown-linux-musl/release/lucidd")]
        lucidd: PathBuf,
        #[arg(long, value_enum, default_value = "xz")]
        compress: assemble::Compress,
    },
    /// Boot a board's image in QEMU on a copy-on-write overlay; console on stdout.
    Qemu {
        #[arg(default_value = "qemu-aarch64-virt")]
        board: String,
        /// Image to boot (default out/BOARD/BOARD.img).
        #[arg(long)]
        image: Option<PathBuf>,
        /// First host port; the five services map to it and the next four.
        #[arg(long, env = "LUCID_QEMU_PORT_BASE", default_value_t = 18083)]
        port_base: u16,
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
    Board { board: String, #[arg(long)] variant: Option<String> },
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
        Cmd::Image { board, build, variant, out, cache, lucidd, compress } => {
            let t = std::time::Instant::now();
            let (out, cache, lucidd) = (repo.join(out), repo.join(cache), repo.join(lucidd));
            let o = assemble::Options { repo: repo.clone(), board, variant, build, out, cache, lucidd, compress };
            let r = assemble::build(&o)?;
            println!("built {} in {:.0} s", r.image.display(), t.elapsed().as_secs_f64());
            for (name, size) in &r.sizes {
                println!("  {name:<40} {:>12} bytes ({:.1} MiB)", size, *size as f64 / 1048576.0);
            }
            if r.bundle.is_none() {
                println!("  OTA bundle: not built (this lucidd has no `bundle create` yet)");
            }
        }
        Cmd::Qemu { board, image, port_base } => {
            let b = board::load(&repo, &board, None)?;
            let image = image.unwrap_or_else(|| repo.join("out").join(&board).join(format!("{board}.img")));
            let disk = std::env::temp_dir().join(format!("lucid-qemu-{}.qcow2", std::process::id()));
            qemu::overlay(&image, &disk)?;
            eprintln!("xtask: booting {} (overlay {}); ports {}..{} -> 8083..8087; quit with Ctrl-A X", image.display(), disk.display(), port_base, port_base + 4);
            let st = qemu::command(&b, &disk, &qemu::default_forwards(port_base), true)?.status()?;
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
