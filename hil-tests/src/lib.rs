//! The hardware-in-the-loop harness shared by every test group (`tests/<group>.rs`):
//! a device under test that is either the QEMU board booted from the SD image (console
//! captured, ports forwarded to free host ports, killable mid-flight for power-cut tests)
//! or a real device at an address (`./scripts/hil --target ADDR`).
//!
//! It talks HTTP through `curl` (installed by scripts/setup) so the harness needs no
//! HTTP client crate, and it never edits the pristine image in out/: QEMU runs on a
//! qcow2 overlay or on a scratch copy.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const BOARD: &str = "qemu-aarch64-virt";
/// The token the qemu-aarch64-virt manifest (and the raspi3b variant) puts into
/// lucidd.toml (test images only).
pub const QEMU_TOKEN: &str = "lucid-qemu-test-token";

pub fn repo() -> PathBuf {
    xtask::repo_root()
}

/// The emulated board: `LUCID_HIL_BOARD` (scripts/hil --board), default qemu-aarch64-virt.
pub fn board_name() -> String {
    std::env::var("LUCID_HIL_BOARD").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| BOARD.to_owned())
}

/// The variant whose `[qemu]` table emulates the board: `LUCID_HIL_VARIANT` (scripts/hil
/// --variant), e.g. rpi3's `raspi3b`; none for a board with its own `[qemu]`.
pub fn machine_variant() -> Option<String> {
    std::env::var("LUCID_HIL_VARIANT").ok().filter(|s| !s.is_empty())
}

/// The emulated board's manifest, with the machine variant on top.
pub fn board() -> Result<xtask::board::Board> {
    Ok(xtask::board::load(&repo(), &board_name(), machine_variant().as_deref())?)
}

/// out/NAME/NAME.img, NAME = BOARD[-VARIANT] (out/qemu-aarch64-virt/qemu-aarch64-virt.img by default),
/// or LUCID_HIL_IMAGE.
pub fn image_path() -> PathBuf {
    std::env::var_os("LUCID_HIL_IMAGE").map(PathBuf::from).unwrap_or_else(|| {
        let name = xtask::assemble::out_name(&board_name(), machine_variant().as_deref(), 1);
        repo().join("out").join(&name).join(format!("{name}.img"))
    })
}

/// Where consoles, scratch disks and downloads of a run go: out/hil for the default board,
/// out/hil/NAME for another board or machine variant (out/hil/rpi3-raspi3b), so runs on
/// two machines at once do not share scratch disks.
pub fn work_dir() -> PathBuf {
    let name = xtask::assemble::out_name(&board_name(), machine_variant().as_deref(), 1);
    let d = if name == BOARD { repo().join("out/hil") } else { repo().join("out/hil").join(name) };
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `Some(address)` when the tests run against a real device.
pub fn remote_target() -> Option<String> {
    std::env::var("LUCID_HIL_TARGET").ok().filter(|s| !s.is_empty())
}

/// The host build of lucidd for `lucidd verify`.
pub fn host_lucidd() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LUCID_HOST_LUCIDD") {
        return Ok(p.into());
    }
    for p in ["target/release/lucidd", "target/debug/lucidd"] {
        let p = repo().join(p);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no host lucidd: cargo build -p lucidd (or set LUCID_HOST_LUCIDD)")
}

/// How a QEMU device boots (`Device::from_env_with`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Boot<'a> {
    /// QEMU's real-time clock at power-on (`-rtc base=`, e.g. `2001-01-01T00:00:00`): a
    /// board whose clock is wrong.
    pub rtc_base: Option<&'a str>,
    /// The disk's size as `./scripts/qemu --disk-size` takes it (`4G`): the image as if
    /// written to a card that large, so the first boot grows the data partition.
    pub disk_size: Option<&'a str>,
}

/// A device under test: HTTP on five ports of `host`.
pub struct Device {
    pub host: String,
    /// pipeline, recorder, processor, storage, gateway.
    pub ports: [u16; 5],
    pub token: String,
    pub qemu: Option<Qemu>,
}

impl Device {
    pub fn url(&self, service: usize, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.ports[service], path)
    }

    pub fn gateway(&self, path: &str) -> String {
        self.url(4, path)
    }

    /// The device from the environment: a real one, or QEMU booted from `disk`.
    pub fn from_env(name: &str) -> Result<Device> {
        Self::from_env_image(name, &image_path())
    }

    /// Like `from_env`, with QEMU's real-time clock starting at `rtc_base` (`-rtc
    /// base=`, e.g. `2001-01-01T00:00:00`): a board whose clock is wrong at power-on.
    /// A real target's clock is what it is.
    pub fn from_env_rtc(name: &str, rtc_base: &str) -> Result<Device> {
        Self::from_env_with(name, &Boot { rtc_base: Some(rtc_base), ..Boot::default() })
    }

    /// Like `from_env`, booting `image` (a variant's) in QEMU.
    pub fn from_env_image(name: &str, image: &Path) -> Result<Device> {
        Self::from_env_inner(name, image, &[], None)
    }

    /// Like `from_env` with the options of `boot` (a clock, a disk size); a real target
    /// ignores them.
    pub fn from_env_with(name: &str, boot: &Boot) -> Result<Device> {
        let extra = boot.rtc_base.map(|b| vec!["-rtc".to_owned(), format!("base={b}")]).unwrap_or_default();
        let size = boot.disk_size.map(xtask::qemu::parse_size).transpose()?;
        Self::from_env_inner(name, &image_path(), &extra, size)
    }

    fn from_env_inner(name: &str, image: &Path, extra: &[String], disk_size: Option<u64>) -> Result<Device> {
        if let Some(addr) = remote_target() {
            let token =
                std::env::var("LUCID_HIL_TOKEN").context("a real target needs LUCID_HIL_TOKEN (its API token)")?;
            return Ok(Device { host: addr, ports: [8083, 8084, 8085, 8086, 8087], token, qemu: None });
        }
        let disk = work_dir().join(format!("{name}.qcow2"));
        xtask::qemu::overlay_for(&board()?, image, &disk, disk_size)?;
        Self::boot_qemu_with(name, &disk, "qcow2", extra)
    }

    /// Boot the QEMU board on `disk` (an overlay or a scratch copy, never out/'s image).
    pub fn boot_qemu(name: &str, disk: &Path, format: &str) -> Result<Device> {
        Self::boot_qemu_with(name, disk, format, &[])
    }

    fn boot_qemu_with(name: &str, disk: &Path, format: &str, extra: &[String]) -> Result<Device> {
        if format == "raw" && board()?.qemu.is_some_and(|q| q.drive == xtask::board::QemuDrive::Sd) {
            // QEMU's SD card model takes power-of-two sizes only; this is a scratch copy.
            let f = std::fs::OpenOptions::new().write(true).open(disk)?;
            f.set_len(f.metadata()?.len().next_power_of_two())?;
        }
        let ports = free_ports()?;
        let q = Qemu::start_with(name, disk, format, &ports, extra)?;
        Ok(Device { host: "127.0.0.1".into(), ports, token: QEMU_TOKEN.into(), qemu: Some(q) })
    }

    /// Wait until all five services answer /health with 200; returns the time taken.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            let mut all = true;
            for i in 0..5 {
                if http("GET", &self.url(i, "/health"), None, None)?.0 != 200 {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                let tail = self.qemu.as_ref().map(|q| q.console_tail(40)).unwrap_or_default();
                bail!("not healthy after {timeout:?}; console tail:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Five free host ports (bound and released: a small race, fine for a test machine).
pub fn free_ports() -> Result<[u16; 5]> {
    let socks: Vec<std::net::TcpListener> =
        (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let mut p = [0u16; 5];
    for (i, s) in socks.iter().enumerate() {
        p[i] = s.local_addr()?.port();
    }
    Ok(p)
}

/// A running QEMU with its console captured (kept in memory and in `work_dir()`/NAME.console).
pub struct Qemu {
    child: Child,
    /// The console's input: a shell on it exists only in test variants (`console_shell`).
    stdin: Option<std::process::ChildStdin>,
    console: Arc<Mutex<String>>,
    pub started: Instant,
    pub log: PathBuf,
    /// Ends the hot-plug thread (`hotplug_each_boot`) with the machine.
    stop: Arc<AtomicBool>,
}

/// Where Linux starts on the console: once per boot, before any driver.
const KERNEL_START: &str = "Booting Linux on physical CPU";
/// Linux's dwc2 has registered its root hub (`usb usb1: Manufacturer: ... dwc2_hsotg`).
const DWC2_UP: &str = "dwc2_hsotg";
/// The kernel's last line before it resets the board (an OTA's reboot, a rollback's).
const RESTART: &str = "reboot: Restarting system";

/// Plugs the machine's hot-plugged devices (`xtask::qemu::hotplug_devices`: raspi3b's hub
/// and usb-net) in through the monitor once Linux's dwc2 is up (xtask::qemu::command says
/// why), on every boot. A device QEMU kept across a reset would be present from power-on
/// for the next kernel, which 7.2's DWC2 model loses the same way, so the devices are
/// unplugged (`device_del`, in reverse) when the kernel announces the restart, and plugged
/// back once the next kernel's dwc2 is up, as on the first boot. A reset without that line
/// gets the unplug at the next dwc2 line instead.
fn hotplug_each_boot(mon: &Path, console: &Mutex<String>, plug: &[String], stop: &AtomicBool) {
    let mut monitor: Option<std::os::unix::net::UnixStream> = None;
    // Console offset of the kernel start whose dwc2 got the devices, while they are in.
    let mut plugged: Option<usize> = None;
    let mut last_boot: Option<usize> = None;
    let ids: Vec<&str> = plug.iter().rev().filter_map(|d| d.split(',').find_map(|kv| kv.strip_prefix("id="))).collect();
    let send = |m: &mut Option<std::os::unix::net::UnixStream>, cmd: &str| {
        if m.is_none() {
            *m = std::os::unix::net::UnixStream::connect(mon).ok();
        }
        m.as_mut().is_some_and(|s| writeln!(s, "{cmd}").is_ok())
    };
    while !stop.load(Ordering::Relaxed) {
        let (boot, restart) = {
            let c = console.lock().unwrap();
            let boot = c.rfind(KERNEL_START).filter(|&at| c[at..].contains(DWC2_UP));
            (boot, c.rfind(RESTART))
        };
        if let Some(at) = plugged {
            let restarting = restart.is_some_and(|r| r > at);
            let rebooted = boot.is_some_and(|b| b != at);
            if restarting || rebooted {
                for id in &ids {
                    send(&mut monitor, &format!("device_del {id}"));
                }
                // USB devices leave at once; the pause lets the monitor finish.
                std::thread::sleep(Duration::from_secs(1));
                plugged = None;
                last_boot = Some(at);
            }
        }
        let new_boot = plugged.is_none() && boot.is_some() && boot != last_boot;
        if new_boot && plug.iter().all(|d| send(&mut monitor, &format!("device_add {d}"))) {
            plugged = boot;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Qemu {
    pub fn start(name: &str, disk: &Path, format: &str, ports: &[u16; 5]) -> Result<Qemu> {
        Self::start_with(name, disk, format, ports, &[])
    }

    /// `start` with extra QEMU arguments (appended last).
    pub fn start_with(name: &str, disk: &Path, format: &str, ports: &[u16; 5], extra: &[String]) -> Result<Qemu> {
        let board = board()?;
        let fwd: Vec<(u16, u16)> = ports.iter().enumerate().map(|(i, h)| (*h, 8083 + i as u16)).collect();
        // U-Boot and the DTB a machine like raspi3b starts come from the image's own build.
        let work = image_path().parent().unwrap_or(Path::new(".")).join("work");
        let mut c = xtask::qemu::command(&board, &work, disk, &fwd, false)?;
        if format != "qcow2" {
            // The harness may boot a raw scratch copy (tests that edit p1 with mtools).
            let args: Vec<String> = c
                .get_args()
                .map(|a| a.to_string_lossy().replace("format=qcow2", &format!("format={format}")))
                .collect();
            c = Command::new(c.get_program());
            c.args(args);
        }
        c.args(extra);
        let log = work_dir().join(format!("{name}.console"));
        let mut file = std::fs::File::create(&log)?;
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("qemu-system-aarch64")?;
        let out = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let console = Arc::new(Mutex::new(String::new()));
        let sink = console.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let _ = file.write_all(&line);
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let plug = xtask::qemu::hotplug_devices(&board);
        if !plug.is_empty() {
            let (mon, seen, stop) = (xtask::qemu::monitor_path(disk), console.clone(), stop.clone());
            std::thread::spawn(move || hotplug_each_boot(&mon, &seen, &plug, &stop));
        }
        Ok(Qemu { child, stdin, console, started: Instant::now(), log, stop })
    }

    /// Types one command line into the console (a test variant's shell).
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("console input already closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    pub fn console_tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wait until `needle` appears on the console `count` times in all.
    pub fn wait_console(&self, needle: &str, count: usize, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if self.console().matches(needle).count() >= count {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                bail!(
                    "{needle:?} not seen {count}x on the console after {timeout:?}; tail:\n{}",
                    self.console_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pull the plug: SIGKILL, no shutdown (power-cut tests).
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP request through curl: (status, body). Status 0 when nothing answered.
pub fn http(method: &str, url: &str, token: Option<&str>, json: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let body = tempfile_path("body");
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-X", method, "-o"]).arg(&body).args(["-w", "%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(j) = json {
        c.args(["-H", "content-type: application/json", "--data-binary", j]);
    }
    c.arg(url);
    let out = c.output().context("curl")?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let bytes = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    Ok((code, bytes))
}

pub fn json(bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).with_context(|| format!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

fn tempfile_path(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    work_dir().join(format!(".{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Byte offset of partition `n` of a raw image (from `sfdisk -J`).
pub fn partition_offset(image: &Path, n: u32) -> Result<u64> {
    let out = Command::new("sfdisk").arg("-J").arg(image).output().context("sfdisk")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let suffix = n.to_string();
    for p in v["partitiontable"]["partitions"].as_array().context("no partitions")? {
        let node = p["node"].as_str().unwrap_or("");
        if node.ends_with(&suffix) && !node[..node.len() - suffix.len()].ends_with(|c: char| c.is_ascii_digit()) {
            return Ok(p["start"].as_u64().context("start")? * 512);
        }
    }
    bail!("no partition {n} in {}", image.display())
}

/// Read a file from the FAT partition `n` of a raw image (mtools, no mount).
pub fn fat_read(image: &Path, n: u32, name: &str) -> Result<String> {
    let off = partition_offset(image, n)?;
    let out = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(format!("::{name}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()?;
    if !out.status.success() {
        bail!("mtype {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Write a file into the FAT partition `n` of a raw image.
pub fn fat_write(image: &Path, n: u32, name: &str, content: &str) -> Result<()> {
    let off = partition_offset(image, n)?;
    let src = tempfile_path("fat");
    std::fs::write(&src, content)?;
    let st = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{off}", image.display()))
        .arg(&src)
        .arg(format!("::{name}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()?;
    let _ = std::fs::remove_file(&src);
    if !st.success() {
        bail!("mcopy {name} failed");
    }
    Ok(())
}

/// A sparse scratch copy of `src` in `work_dir()`/NAME (raw), for tests that boot a disk more
/// than once or inspect its bytes afterwards; out/'s image stays pristine.
pub fn scratch_copy(src: &Path, name: &str) -> Result<PathBuf> {
    let disk = work_dir().join(name);
    let _ = std::fs::remove_file(&disk);
    let st = Command::new("cp").arg("--sparse=always").arg(src).arg(&disk).status().context("cp")?;
    if !st.success() {
        bail!("cp {} {} failed", src.display(), disk.display());
    }
    Ok(disk)
}

/// The raw bytes of partition `n` of a raw image (start and size from `sfdisk -J`).
pub fn partition_bytes(image: &Path, n: u32) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let out = Command::new("sfdisk").arg("-J").arg(image).output().context("sfdisk")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let start = partition_offset(image, n)?;
    let size = v["partitiontable"]["partitions"]
        .as_array()
        .context("no partitions")?
        .iter()
        .find(|p| p["start"].as_u64().map(|s| s * 512) == Some(start))
        .and_then(|p| p["size"].as_u64())
        .context("partition size")?
        * 512;
    let mut f = std::fs::File::open(image)?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; size as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// The variant list of one of this run's images: the machine variant (`raspi3b`), then
/// `extra` stacked on it (`raspi3b,broken-daemon`, see `xtask::board::variant_layers`).
pub fn stacked_variant(extra: Option<&str>) -> Option<String> {
    match (machine_variant(), extra) {
        (Some(m), Some(e)) => Some(format!("{m},{e}")),
        (m, e) => m.or(e.map(str::to_owned)),
    }
}

/// The OTA bundle of a build of the board under test in out/NAME/
/// (`xtask::assemble::out_name`), `extra` stacked on its machine variant.
pub fn bundle_path(extra: Option<&str>, build: u64) -> Result<PathBuf> {
    let (board, variant) = (board_name(), stacked_variant(extra));
    let dir = repo().join("out").join(xtask::assemble::out_name(&board, variant.as_deref(), build));
    let found = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "{}: build it with ./scripts/image {board} --build {build}{}",
                dir.display(),
                variant.as_deref().map(|v| format!(" --variant {v}")).unwrap_or_default()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "lucidota"));
    found.with_context(|| format!("no .lucidota in {}", dir.display()))
}

/// POST a file as a streamed `application/octet-stream` body (curl -T streams it rather
/// than loading it): (status, body, time taken).
pub fn upload(url: &str, token: &str, file: &Path, timeout: Duration) -> Result<(u16, Vec<u8>, Duration)> {
    let body = tempfile_path("upload");
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-m", &timeout.as_secs().to_string(), "-X", "POST", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "content-type: application/octet-stream", "-H", "Expect:", "-T"])
        .arg(file)
        .arg(url)
        .output()
        .context("curl")?;
    let took = t.elapsed();
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let bytes = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    Ok((code, bytes, took))
}

/// Starts a raw HTTP/1.1 upload of `file` and sends only its first `send` bytes, so a
/// test can cut the power while the device is in the middle of writing a slot. The
/// returned connection is left open (the device keeps waiting for the rest).
pub fn partial_upload(
    host: &str,
    port: u16,
    path: &str,
    token: &str,
    file: &Path,
    send: usize,
) -> Result<std::net::TcpStream> {
    let data = std::fs::read(file)?;
    let mut s = std::net::TcpStream::connect((host, port))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )?;
    for chunk in data[..send.min(data.len())].chunks(1 << 20) {
        s.write_all(chunk)?;
    }
    Ok(s)
}

/// Creates a session and starts recording the device's camera; returns its id.
pub fn start_session(dev: &Device, name: &str) -> String {
    let t = Some(dev.token.as_str());
    let (code, body) =
        http("POST", &dev.gateway("/api/v1/sessions"), t, Some(&format!(r#"{{"name":"{name}"}}"#))).unwrap();
    assert!(code == 200 || code == 201, "create: {code} {}", String::from_utf8_lossy(&body));
    let sid = json(&body).unwrap()["session_id"].as_str().unwrap().to_owned();
    let (code, body) = http("POST", &dev.gateway(&format!("/api/v1/sessions/{sid}/start")), t, None).unwrap();
    assert_eq!(code, 200, "start: {}", String::from_utf8_lossy(&body));
    sid
}

/// Stops a recording; returns its final statistics (at least two chunks, or the test fails).
pub fn stop_session(dev: &Device, sid: &str) -> serde_json::Value {
    let (code, body) =
        http("POST", &dev.gateway(&format!("/api/v1/sessions/{sid}/stop")), Some(&dev.token), None).unwrap();
    assert_eq!(code, 200, "stop: {}", String::from_utf8_lossy(&body));
    let stats = json(&body).unwrap()["final_statistics"].clone();
    assert!(stats["chunks_count"].as_u64().unwrap_or(0) >= 2, "too few chunks: {stats}");
    stats
}

/// Creates a session, records 8 s of the device's camera, stops it, and returns its id and
/// final statistics.
pub fn record_session(dev: &Device, name: &str) -> (String, serde_json::Value) {
    let sid = start_session(dev, name);
    std::thread::sleep(Duration::from_secs(8));
    let stats = stop_session(dev, &sid);
    (sid, stats)
}

/// Downloads a session's evidence and checks it with the host's `lucidd verify`, pinned to
/// the device id the device reports (as an owner who noted it at set-up would).
pub fn verify_evidence(dev: &Device, sid: &str, tag: &str) {
    let (code, evidence) = http("GET", &dev.gateway(&format!("/api/v1/sessions/{sid}/evidence")), None, None).unwrap();
    assert_eq!(code, 200, "evidence of {sid}: {}", String::from_utf8_lossy(&evidence));
    let (code, device) = http("GET", &dev.gateway("/api/v1/device"), None, None).unwrap();
    assert_eq!(code, 200, "device: {}", String::from_utf8_lossy(&device));
    let device_id = json(&device).unwrap()["device_id"].as_str().unwrap().to_owned();
    let path = work_dir().join(format!("{tag}-evidence.tar"));
    std::fs::write(&path, &evidence).unwrap();
    let out = Command::new(host_lucidd().unwrap())
        .arg("verify")
        .args(["--device-id", &device_id])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lucidd verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
