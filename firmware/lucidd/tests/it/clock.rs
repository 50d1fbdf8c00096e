//! The clock against a real NTP server: chrony's `chronyd` (installed by scripts/setup),
//! serving its own clock on a loopback port, is what lucidd's SNTP poller must reach.
//!
//! The host's clock is never set here (`set_clock` is off, as on any host): the test proves
//! the protocol, the state and the device-log event; stepping a clock is proven in QEMU.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Client, TOKEN, test_config};

#[path = "../support/chrony.rs"]
mod chrony;
use chrony::Chrony;

fn free_tcp_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_clock_is_synchronized_by_a_real_ntp_server_and_the_device_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ntp_port = free_udp_port();
    let mut cfg = test_config(&dir.path().join("data"));
    let p = free_tcp_ports(5);
    (cfg.ports.pipeline, cfg.ports.recorder, cfg.ports.processor, cfg.ports.storage, cfg.ports.gateway) =
        (p[0], p[1], p[2], p[3], p[4]);
    cfg.time.servers = vec![format!("127.0.0.1:{ntp_port}")];
    cfg.time.dhcp_servers_file = dir.path().join("no-dhcp-servers");
    cfg.time.retry_secs = 1;
    let gateway = format!("http://127.0.0.1:{}", p[4]);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = rt.spawn(lucidd::run(cfg, async move {
        let _ = rx.await;
    }));
    let client = Client { http: reqwest::blocking::Client::new(), token: Some(TOKEN.into()) };
    let device = || -> Option<Value> {
        let r = client.http.get(format!("{gateway}/api/v1/device")).send().ok()?;
        r.json().ok()
    };

    // No server yet: unsynchronized, and the reason is reported.
    let d = wait_for("a failed poll", 30, || device().filter(|d| d["clock"]["sntp"]["last_error"].is_string()));
    assert_eq!(d["clock"]["sntp"]["state"], "unsynchronized", "{d:#}");
    // (Unless this host runs systemd-timesyncd, which the report also believes.)
    assert_eq!(d["clock"]["synchronized"], Path::new("/run/systemd/timesync/synchronized").exists(), "{d:#}");
    assert!(d["clock"]["sntp"]["last_error"].as_str().unwrap().contains(&ntp_port.to_string()), "{d:#}");

    let _chrony = Chrony::start(&dir.path().join("chrony"), ntp_port);
    let d = wait_for("synchronized", 30, || device().filter(|d| d["clock"]["sntp"]["state"] == "synchronized"));
    let sntp = &d["clock"]["sntp"];
    assert_eq!(d["clock"]["synchronized"], true, "{d:#}");
    assert_eq!(sntp["server"], format!("127.0.0.1:{ntp_port}"), "{d:#}");
    // chronyd serves this host's own clock: the measured offset is the loopback round
    // trip's noise, far under a second; nothing was stepped (set_clock is off).
    assert!(sntp["offset_us"].as_i64().unwrap().abs() < 1_000_000, "{d:#}");
    assert_eq!(sntp["stepped_us"], 0, "{d:#}");
    assert_eq!(sntp["last_error"], Value::Null, "{d:#}");

    let health: Value = client.http.get(format!("{gateway}/health")).send().unwrap().json().unwrap();
    assert_eq!(health["services"]["clock"]["state"], "synchronized", "{health:#}");

    // One ClockSynchronised event: the first answer, with the step applied (none).
    let events: Value =
        client.http.get(format!("{gateway}/api/v1/device/log/entries?start=0")).send().unwrap().json().unwrap();
    let clock_events: Vec<&Value> = events["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["decoded"])
        .filter(|e| e["type"] == "clock_synchronised")
        .collect();
    assert_eq!(clock_events.len(), 1, "{events:#}");
    assert_eq!(clock_events[0]["offset_us"], 0);

    // A clean stop saves the last known time, the floor of the next start.
    tx.send(()).unwrap();
    rt.block_on(run).unwrap().expect("run returns cleanly");
    let saved: u64 = std::fs::read_to_string(dir.path().join("data/clock")).unwrap().trim().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(saved) < 60, "saved {saved}, now {now}");
}
