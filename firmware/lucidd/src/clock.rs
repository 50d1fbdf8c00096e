//! The wall clock: whether it can be trusted, and setting it where nothing else does.
//!
//! A Pi has no real-time clock. Without help its clock starts where the last shutdown (or
//! the kernel's build) left it, and every record and manifest would carry that time. This
//! module owns three things:
//! - the **floor** (`floor_target`): at start, on a device that sets its own clock, the
//!   clock is never left before the firmware's source date or the last time this device
//!   saved (`<data dir>/clock`, written every ten minutes and at shutdown, as gokrazy and
//!   nerves_time do), so a reboot without network does not go back in time;
//! - **SNTP** (`sntpc`): the servers handed out by DHCP (the image's udhcpc script writes
//!   them to `[time] dhcp_servers_file`) and then `[time] servers` are asked in turn;
//!   a good answer makes the state `synchronized`, with the measured offset, and on a
//!   device with `set_clock` a step of more than `STEP_THRESHOLD` sets the clock;
//! - the **state** (`ClockStatus`) that `/health`, `GET /api/v1/device` and the device
//!   log (`ClockSynchronised`, through the engine) report, so evidence says whether its
//!   wall-clock times were trustworthy.
//!
//! It must not slew or discipline the clock (no drift model: a step per poll is enough
//! for second-granular records), and it never sets the clock on a host where another
//! daemon owns it: `set_clock` is off by default and on in the image's config only.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Offsets below this are reported but not stepped: the records carry milliseconds, and a
/// step back by a few milliseconds would only reorder nothing for no gain.
pub const STEP_THRESHOLD_US: i64 = 500_000;

/// The last-known-time file in the data directory.
pub const SAVED_FILE: &str = "clock";

/// The firmware's source date (Unix seconds): `SOURCE_DATE_EPOCH` of the build, else the
/// date this line was last changed. The clock of a device that sets its own is never left
/// before it.
pub fn firmware_floor_secs() -> u64 {
    option_env!("SOURCE_DATE_EPOCH").and_then(|s| s.trim().parse().ok()).unwrap_or(1_795_651_200) // 2026-11-26
}

/// Where the clock should be stepped at start, if anywhere: the later of the firmware's
/// date and the saved time, when the clock is before it. Pure, for tests.
pub fn floor_target(now_secs: u64, saved_secs: Option<u64>, firmware_secs: u64) -> Option<u64> {
    let floor = saved_secs.unwrap_or(0).max(firmware_secs);
    (now_secs < floor).then_some(floor)
}

/// What the device knows about its clock.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClockStatus {
    /// `synchronized` once an NTP server answered in this run, else `unsynchronized`.
    pub state: &'static str,
    /// Measured offset of the system clock from the server at the last answer (µs,
    /// server minus system, before any step).
    pub offset_us: Option<i64>,
    /// The step applied at the last answer (µs; 0 when none was needed or allowed).
    pub stepped_us: Option<i64>,
    /// The server that answered last (as configured, not resolved).
    pub server: Option<String>,
    /// When it answered (RFC 3339, by the clock after any step).
    pub last_sync: Option<String>,
    /// Why the last poll failed, if it did.
    pub last_error: Option<String>,
    /// Whether this device sets its clock (`[time] set_clock`).
    pub set_clock: bool,
    /// The step applied at start by the floor (µs), if any.
    pub floor_step_us: Option<i64>,
}

/// The shared state: written by the poller, read by the HTTP handlers.
#[derive(Debug)]
pub struct Clock {
    status: Mutex<ClockStatus>,
}

fn lock(m: &Mutex<ClockStatus>) -> std::sync::MutexGuard<'_, ClockStatus> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Clock {
    pub fn new(set_clock: bool) -> Clock {
        Clock { status: Mutex::new(ClockStatus { state: "unsynchronized", set_clock, ..ClockStatus::default() }) }
    }

    pub fn status(&self) -> ClockStatus {
        lock(&self.status).clone()
    }

    pub fn synchronized(&self) -> bool {
        lock(&self.status).state == "synchronized"
    }

    pub(crate) fn record_floor(&self, step_us: i64) {
        lock(&self.status).floor_step_us = Some(step_us);
    }

    /// Records a poll's result; returns true when this is the first answer of the run or
    /// a step was applied (the two cases the device log records).
    pub(crate) fn record(&self, r: &Result<Answer, String>) -> bool {
        let mut s = lock(&self.status);
        match r {
            Ok(a) => {
                let first = s.state != "synchronized";
                s.state = "synchronized";
                s.offset_us = Some(a.offset_us);
                s.stepped_us = Some(a.stepped_us);
                s.server = Some(a.server.clone());
                s.last_sync = Some(crate::util::now_rfc3339());
                s.last_error = None;
                first || a.stepped_us != 0
            }
            Err(e) => {
                s.last_error = Some(e.clone());
                false
            }
        }
    }
}

/// One good answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub server: String,
    pub offset_us: i64,
    pub stepped_us: i64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Steps the system clock by `delta_us` (CLOCK_REALTIME). Needs CAP_SYS_TIME.
fn step(delta_us: i64) -> std::io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(std::io::Error::other)?;
    let target = now.as_micros() as i128 + delta_us as i128;
    set_unix_micros(target)
}

fn set_unix_micros(us: i128) -> std::io::Result<()> {
    if us < 0 {
        return Err(std::io::Error::other("a time before 1970"));
    }
    let ts = libc::timespec { tv_sec: (us / 1_000_000) as _, tv_nsec: ((us % 1_000_000) * 1000) as _ };
    // SAFETY: `ts` is a valid timespec on the stack; clock_settime only reads it.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// At start, on a device that sets its clock: steps it forward to the floor if it is
/// behind. Returns the step applied (µs).
pub fn apply_floor(data_dir: &Path) -> std::io::Result<Option<i64>> {
    let saved = std::fs::read_to_string(data_dir.join(SAVED_FILE)).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let now = now_secs();
    match floor_target(now, saved, firmware_floor_secs()) {
        Some(t) => {
            set_unix_micros(t as i128 * 1_000_000)?;
            Ok(Some((t as i64 - now as i64) * 1_000_000))
        }
        None => Ok(None),
    }
}

/// Saves the current time as the device's last known time (temp file, rename): what the
/// floor starts from after a reboot without network. Only a time after the firmware's
/// floor is saved, so a clock that never got one does not persist a wrong time.
pub fn save_now(data_dir: &Path) -> std::io::Result<()> {
    let now = now_secs();
    if now < firmware_floor_secs() {
        return Ok(());
    }
    let path = data_dir.join(SAVED_FILE);
    let tmp = data_dir.join(format!("{SAVED_FILE}.tmp"));
    std::fs::write(&tmp, format!("{now}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// The servers to ask, in order: those DHCP handed out (one per line in `dhcp_file`,
/// when it exists), then the configured ones. Each may carry a port (`host:port`).
pub fn servers(configured: &[String], dhcp_file: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_to_string(dhcp_file)
        .map(|t| t.split_whitespace().take(8).map(str::to_owned).collect())
        .unwrap_or_default();
    for s in configured {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    let with_port = if server.parse::<SocketAddr>().is_ok()
        || server.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        server.to_owned()
    } else {
        format!("{server}:123")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("{server}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{server}: no IPv4 address"))
}

/// Asks one server. Blocking (DNS and one UDP round trip, at most `timeout`).
pub fn query(server: &str, timeout: Duration) -> Result<i64, String> {
    let addr = resolve(server)?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("{server}: bind: {e}"))?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| format!("{server}: {e}"))?;
    let sock = sntpc_net_std::UdpSocketWrapper::new(sock);
    let ctx = sntpc::NtpContext::new(sntpc::StdTimestampGen::default());
    let r = sntpc::sync::get_time(addr, &sock, ctx).map_err(|e| format!("{server}: {e:?}"))?;
    // An unsynchronised server (leap indicator 3, or stratum 0 = kiss-o'-death) is not a
    // time source: taking its time would "synchronise" to a clock as lost as ours.
    if r.leap_indicator == 3 || r.stratum == 0 {
        return Err(format!(
            "{server}: the server is not synchronised (stratum {}, leap {})",
            r.stratum, r.leap_indicator
        ));
    }
    Ok(r.offset())
}

/// One poll: asks the servers in order until one answers; steps the clock when allowed
/// and needed.
pub fn poll(servers: &[String], set_clock: bool, timeout: Duration) -> Result<Answer, String> {
    if servers.is_empty() {
        return Err("no time server configured".into());
    }
    let mut errors = Vec::new();
    for server in servers {
        match query(server, timeout) {
            Ok(offset_us) => {
                let mut stepped_us = 0;
                if set_clock && offset_us.abs() > STEP_THRESHOLD_US {
                    step(offset_us).map_err(|e| format!("cannot set the clock: {e}"))?;
                    stepped_us = offset_us;
                }
                return Ok(Answer { server: server.clone(), offset_us, stepped_us });
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_later_of_the_firmware_date_and_the_saved_time() {
        let fw = 1_700_000_000;
        assert_eq!(floor_target(0, None, fw), Some(fw), "a clock at 1970 goes to the firmware date");
        assert_eq!(floor_target(0, Some(fw + 50), fw), Some(fw + 50), "or to the saved time, if later");
        assert_eq!(floor_target(0, Some(fw - 50), fw), Some(fw), "an older saved time does not pull it back");
        assert_eq!(floor_target(fw + 100, Some(fw + 50), fw), None, "a clock ahead of both is left alone");
    }

    #[test]
    fn dhcp_servers_come_first_and_are_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ntp");
        assert_eq!(servers(&["pool.ntp.org".into()], &f), ["pool.ntp.org"]);
        std::fs::write(&f, "10.0.2.2\npool.ntp.org\n").unwrap();
        assert_eq!(servers(&["pool.ntp.org".into()], &f), ["10.0.2.2", "pool.ntp.org"]);
    }

    #[test]
    fn the_state_reports_the_first_answer_and_steps() {
        let c = Clock::new(true);
        assert_eq!(c.status().state, "unsynchronized");
        assert!(!c.record(&Err("timeout".into())));
        assert_eq!(c.status().last_error.as_deref(), Some("timeout"));
        let a = Answer { server: "s".into(), offset_us: 1_000, stepped_us: 0 };
        assert!(c.record(&Ok(a.clone())), "the first answer is an event");
        assert!(!c.record(&Ok(a)), "a later answer without a step is not");
        assert!(c.record(&Ok(Answer { server: "s".into(), offset_us: 9_000_000, stepped_us: 9_000_000 })));
        assert!(c.synchronized());
    }
}
