//! Group `boot`: the QEMU board's SD image (qemu-aarch64-virt, or rpi3 in raspi3b) boots through U-Boot to a healthy lucidd,
//! records a session with the synthetic camera whose evidence verifies on the host, and
//! the U-Boot one-shot trial (`lucid_try` in lucid.env) boots the other slot exactly once.
//! The owner's settings file: without one the first boot generates an admin password; a
//! `lucid.toml` written to p1 before a boot names the host and leaves the card without
//! its password.
//! The first boot is on a disk of `GROWN_DISK` (as if the image were written to a 4 GiB
//! card): the data partition and its ext4 grow to the end of it, a second boot of the same
//! disk has nothing to grow, and a grow interrupted by a power cut is finished by the next
//! boot. Prints the boot time to a healthy /health, the image size and the rootfs size.

use std::process::Command;
use std::time::Duration;

use hil_tests::*;

#[path = "../../firmware/lucidd/tests/support/chrony.rs"]
mod chrony;
use chrony::Chrony;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The card the image is "written to" (`./scripts/qemu --disk-size 4G`).
const GROWN_DISK: &str = "4G";
/// What the grown data file system must report: well above the image's 160–512 MiB.
const GROWN_MIN_BYTES: u64 = 3 << 30;

/// The data file system's size as the device reports it (gateway /health).
fn data_total_bytes(dev: &Device) -> u64 {
    let (code, body) = http("GET", &dev.gateway("/health"), None, None).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v = json(&body).unwrap();
    v["services"]["storage_space"]["total_bytes"].as_u64().unwrap_or_else(|| panic!("no total_bytes: {v:#}"))
}

fn grow_lines(console: &str) -> Vec<&str> {
    console.lines().filter(|l| l.contains("lucid-grow:")).collect()
}

/// The NTP server a board's config names on QEMU's host side (`10.0.2.2:PORT` in
/// `[lucidd.config.time] servers`), if any: the test serves it on this host's loopback.
fn host_ntp_port() -> Option<u16> {
    let b = board().ok()?;
    let servers = b.lucidd.config.get("time")?.get("servers")?.as_array()?.clone();
    servers.iter().filter_map(|s| s.as_str()?.strip_prefix("10.0.2.2:")?.parse().ok()).next()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
#[ignore = "boots QEMU; run by ./scripts/hil boot"]
fn boots_to_healthy_services_and_records_a_verifiable_session() {
    // A board whose config names a host-side NTP server boots with its RTC in 2001 (as a
    // Pi without one boots at whatever time it has): lucidd must move the clock to its
    // floor, then to the right time from NTP, and say so.
    let ntp = host_ntp_port().map(|p| (p, Chrony::start(&work_dir().join("chrony"), p)));
    let boot = Boot { rtc_base: ntp.as_ref().map(|_| "2001-01-01T00:00:00"), disk_size: Some(GROWN_DISK) };
    let dev = Device::from_env_with("boot", &boot).unwrap();
    let healthy = dev.wait_healthy(BOOT_TIMEOUT).unwrap();
    let since_power_on = dev.qemu.as_ref().map(|q| q.started.elapsed());
    // The first boot on a larger card grew the data partition (container, link, the
    // partition, the kernel's view, the ext4) before lucidd started.
    let total = data_total_bytes(&dev);
    if let Some(q) = &dev.qemu {
        let c = q.console();
        let lines = grow_lines(&c);
        for want in [
            "write MBR: extended partition 4",
            "partition 7 ->",
            "(BLKPG_RESIZE_PARTITION)",
            "(EXT4_IOC_RESIZE_FS)",
            "lucid-grow: done: /data is",
        ] {
            assert!(lines.iter().any(|l| l.contains(want)), "no {want:?} among the grow lines:\n{}", lines.join("\n"));
        }
        assert!(total > GROWN_MIN_BYTES, "data is {total} bytes on a {GROWN_DISK} disk:\n{}", lines.join("\n"));
        println!("hil boot: data partition grown on the first boot of a {GROWN_DISK} disk: {} MiB", total >> 20);
    }
    if let Some(q) = &dev.qemu {
        let c = q.console();
        assert!(c.contains("lucid: slot a"), "U-Boot did not pick slot a");
        assert!(c.contains("lucid.slot=a"), "kernel command line lacks lucid.slot=a");
        // Armed where the board (or its machine variant) says so: not on raspi3b, whose QEMU
        // model resets at once (image/variants/raspi3b.toml).
        let arm = board().unwrap().hardware.watchdog.is_some_and(|w| w.arm);
        assert_eq!(c.contains("watchdog armed"), arm, "watchdog armed: expected {arm}");
    }

    // The name DHCP sent and mDNS announces: lucid-<4 hex of the device id>, set by the
    // init before the network came up, and the one the daemon reports.
    let (code, device) = http("GET", &dev.gateway("/api/v1/device"), None, None).unwrap();
    assert_eq!(code, 200, "device: {}", String::from_utf8_lossy(&device));
    let device = json(&device).unwrap();
    let (id, name) = (device["device_id"].as_str().unwrap(), device["hostname"].as_str().unwrap());
    assert_eq!(name, format!("lucid-{}", &id[6..10]), "{device}");
    if let Some(q) = &dev.qemu {
        assert!(q.console().contains(&format!("lucid-rcS: hostname {name}")), "the init did not set {name}");
        // No lucid.toml on the card: the first boot made an admin password and showed it
        // (it is also in lucid-password.txt on p1, which the trial-boot test reads).
        let c = q.console();
        assert!(c.contains("lucid-settings: no settings file"), "lucidd settings did not run");
        assert!(c.contains("lucid-settings: admin password: "), "no admin password was generated");
    }

    if ntp.is_some() && remote_target().is_none() {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let device = loop {
            let (_, d) = http("GET", &dev.gateway("/api/v1/device"), None, None).unwrap();
            let d = json(&d).unwrap();
            if d["clock"]["sntp"]["state"] == "synchronized" {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "the clock never synchronized: {d:#}");
            std::thread::sleep(Duration::from_secs(1));
        };
        let sntp = &device["clock"]["sntp"];
        assert_eq!(sntp["set_clock"], true, "{device:#}");
        assert!(
            sntp["floor_step_us"].as_i64().unwrap_or(0) > 0,
            "the 2001 clock was not moved to its floor: {device:#}"
        );
        assert!(sntp["stepped_us"].as_i64().unwrap_or(0) != 0, "NTP did not step the clock: {device:#}");
        let now = time::OffsetDateTime::parse(
            device["clock"]["now"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let skew = (now.unix_timestamp() - unix_now()).abs();
        assert!(skew < 10, "the device's clock is {skew} s off the host's: {device:#}");
        let (_, ev) = http("GET", &dev.gateway("/api/v1/device/log/entries?start=0"), None, None).unwrap();
        let ev = json(&ev).unwrap();
        let steps: Vec<i64> = ev["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["decoded"]["type"] == "clock_synchronised")
            .filter_map(|e| e["decoded"]["offset_us"].as_i64())
            .collect();
        assert!(steps.first().is_some_and(|s| *s != 0), "no ClockSynchronised with the step: {ev:#}");
        println!(
            "hil boot: RTC at 2001, floor step {} s, NTP step {} s",
            sntp["floor_step_us"].as_i64().unwrap() / 1_000_000,
            sntp["stepped_us"].as_i64().unwrap() / 1_000_000
        );
    }

    let (sid, stats) = record_session(&dev, "hil boot");
    verify_evidence(&dev, &sid, "boot");

    let img = image_path();
    let rootfs = img.with_file_name("rootfs.squashfs");
    println!(
        "hil boot: healthy /health {:.1} s after QEMU start (harness wait {:.1} s)",
        since_power_on.unwrap_or(healthy).as_secs_f64(),
        healthy.as_secs_f64()
    );
    if remote_target().is_none() {
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let xz = img.with_extension("img.xz");
        println!(
            "hil boot: image {} bytes ({:.0} MiB; {:.1} MiB as .xz), rootfs.squashfs {} bytes ({:.1} MiB)",
            size(&img),
            size(&img) as f64 / 1048576.0,
            size(&xz) as f64 / 1048576.0,
            size(&rootfs),
            size(&rootfs) as f64 / 1048576.0
        );
    }
    println!(
        "hil boot: session {sid}: {} chunks, {} frames, evidence verified on the host",
        stats["chunks_count"], stats["frame_count"]
    );

    // A second boot of the same card: nothing left to grow, and the same size. On the virt
    // machine only: the grow is the same code on an SD card, and a raspi3b boot costs a
    // minute of the CI's budget (its first boot above grew mmcblk0p7 all the same).
    if dev.qemu.is_some() && machine_variant().is_none() {
        drop(dev);
        let t = std::time::Instant::now();
        let again = Device::boot_qemu("boot-again", &work_dir().join("boot.qcow2"), "qcow2").unwrap();
        again.wait_healthy(BOOT_TIMEOUT).unwrap();
        let c = again.qemu.as_ref().unwrap().console();
        let lines = grow_lines(&c);
        assert!(
            lines.len() == 2 && lines[1].contains("lucid-grow: nothing to grow"),
            "the second boot grew again:\n{}",
            lines.join("\n")
        );
        assert_eq!(data_total_bytes(&again), total, "the size changed on the second boot");
        println!(
            "hil boot: second boot of the grown disk: healthy in {:.1} s, {}",
            t.elapsed().as_secs_f64(),
            lines[1].trim()
        );
    }
}

#[test]
#[ignore = "boots QEMU; run by ./scripts/hil boot"]
fn a_grow_cut_by_a_power_cut_is_finished_by_the_next_boot() {
    use lucid_core::mbr::{SECTOR, Table, plan_grow};
    use std::os::unix::fs::FileExt;
    if remote_target().is_some() {
        eprintln!("skipped on a real target: it writes the partition table of an image");
        return;
    }
    if machine_variant().is_some() {
        // Two more boots of about a minute each in raspi3b, for code the virt run covers.
        eprintln!("skipped in an emulated real board's machine: the virt machine runs it");
        return;
    }
    let t0 = std::time::Instant::now();
    // The image on a 4 GiB card after a power cut that let only the grow's first write
    // through: the extended container reaches the end, the data partition does not yet.
    let disk = scratch_copy(&image_path(), "grow-cut.img").unwrap();
    let size = xtask::qemu::parse_size(GROWN_DISK).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    f.set_len(size).unwrap();
    let sectors = size / SECTOR;
    let table = |f: &std::fs::File| {
        Table::read(|lba| {
            let mut s = [0u8; SECTOR as usize];
            f.read_exact_at(&mut s, lba * SECTOR).map(|_| s)
        })
        .unwrap()
    };
    let plan = plan_grow(&table(&f), 7, sectors).unwrap();
    assert_eq!(plan.writes[0].lba, 0, "the container comes first: {plan:#?}");
    f.write_all_at(&plan.writes[0].bytes, 0).unwrap();
    table(&f).check(sectors).unwrap();
    drop(f);

    // Boot it, and cut the power again as soon as the grow writes its first sector.
    let mut dev = Device::boot_qemu("grow-cut", &disk, "raw").unwrap();
    let q = dev.qemu.as_mut().unwrap();
    q.wait_console("lucid-grow: write", 1, BOOT_TIMEOUT).unwrap();
    q.kill();
    let c = q.console();
    let first = grow_lines(&c).into_iter().find(|l| l.contains("lucid-grow: write")).unwrap().to_owned();
    assert!(first.contains("write EBR at sector"), "the grow did not resume after the container: {first}");
    drop(dev);
    let f = std::fs::File::open(&disk).unwrap();
    table(&f).check(sectors).unwrap();
    drop(f);

    // The next boot finishes the grow (whatever the cut left: EBRs, the file system) and is healthy.
    let dev = Device::boot_qemu("grow-cut-2", &disk, "raw").unwrap();
    dev.wait_healthy(BOOT_TIMEOUT).unwrap();
    let total = data_total_bytes(&dev);
    let c = dev.qemu.as_ref().unwrap().console();
    let lines = grow_lines(&c);
    assert!(total > GROWN_MIN_BYTES, "data is {total} bytes after the cut grow:\n{}", lines.join("\n"));
    let f = std::fs::File::open(&disk).unwrap();
    let t = table(&f);
    assert_eq!(t.partition(7).unwrap().end(), sectors, "p7 does not reach the end of the disk");
    t.check(sectors).unwrap();
    drop(dev);
    let _ = std::fs::remove_file(&disk);
    println!(
        "hil boot: power cut at the grow's first write ({}), then again at \"{}\": the next boot finished it ({} MiB of data), {:.1} s",
        plan.writes[0].what,
        first.trim(),
        total >> 20,
        t0.elapsed().as_secs_f64()
    );
    println!("hil boot: grow lines of the boot after the cut:\n  {}", lines.join("\n  "));
}

#[test]
#[ignore = "boots QEMU; run by ./scripts/hil boot"]
fn a_one_shot_trial_boots_the_other_slot_and_is_consumed_first() {
    if remote_target().is_some() {
        eprintln!("skipped on a real target: it edits the boot control partition of an image");
        return;
    }
    // A scratch raw copy (sparse), so p1 can be edited with mtools before the boot.
    let disk = work_dir().join("try.img");
    let st = Command::new("cp").arg("--sparse=always").arg(image_path()).arg(&disk).status().unwrap();
    assert!(st.success());
    // Exactly the bytes lucidd writes when it arms a trial.
    fat_write(&disk, 1, "lucid.env", "lucid_active=a\nlucid_try=b\n").unwrap();
    // The owner's settings file, as written on a PC before the first boot.
    let settings = "# written on a laptop\nhostname = \"hil-try\"\nadmin_password = \"hil secret 42\"\n";
    fat_write(&disk, 1, "lucid.toml", settings).unwrap();

    let mut dev = Device::boot_qemu("try", &disk, "raw").unwrap();
    let q = dev.qemu.as_mut().unwrap();
    q.wait_console("lucid-rcS: up:", 1, BOOT_TIMEOUT).unwrap();
    let c = q.console();
    assert!(c.contains("lucid: slot b"), "U-Boot did not take the trial slot b");
    let root = format!("root={} lucid.slot=b", board().unwrap().part(6));
    assert!(c.contains(&root), "kernel was not given slot b's root ({root})");
    assert!(c.contains("lucid-rcS: up: slot b"), "the system did not come up on slot b");
    // The settings file was applied before the host name was set, and left the card
    // without its password (p1 is mounted `sync`: on the disk as soon as written).
    assert!(c.contains("lucid-settings: applied lucid.toml: admin_password, network.hostname"), "settings not applied");
    assert!(c.contains("lucid-rcS: hostname hil-try"), "the init did not take the settings file's host name");
    assert!(!c.contains("lucid-settings: admin password: "), "a password was given: none may be generated");
    q.kill();
    let left = fat_read(&disk, 1, "lucid.toml").unwrap();
    assert!(!left.contains("hil secret 42") && left.contains("# written on a laptop"), "{left}");
    assert!(left.contains("admin_password: applied on"), "{left}");
    // The trial was consumed before the kernel started: a reset now boots slot a.
    assert_eq!(fat_read(&disk, 1, "lucid.env").unwrap(), "lucid_active=a\nlucid_try=\n");
    let _ = std::fs::remove_file(&disk);
    println!("hil boot: lucid_try=b booted slot b once; lucid.env rewritten to lucid_active=a, lucid_try= before boot");
    println!("hil boot: lucid.toml applied (host name hil-try), its password taken off the card");
}
