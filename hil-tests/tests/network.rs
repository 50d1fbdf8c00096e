//! Group `network`: Wi-Fi in QEMU. The network variant of the qemu-aarch64-virt image
//! loads mac80211_hwsim with two radios; its rcS hook makes wlan1 an access point
//! (hostapd, WPA2-PSK "lucid-hil", udhcpd leasing 192.168.77.100-150). The test writes the
//! network to the settings file on the card (`[[wifi]]` with the passphrase) before the
//! first boot, then through the wired port forward and the admin API:
//! (1) lucidd's Wi-Fi client joins: `GET /api/v1/network` says connected to lucid-hil,
//!     with an address from the pool and a signal, and /health says so too;
//! (2) the access point goes away (hostapd killed through the console shell): the client
//!     reports it lost the network;
//! (3) the access point comes back: the client rejoins by itself and has an address again;
//! (4) `PUT /api/v1/network` with a wrong passphrase takes it off the network for good (15 s
//!     watched), and with the right one brings it back.
//!
//! Timings of each step are printed. QEMU only: it edits the card and drives the AP.

use std::time::{Duration, Instant};

use hil_tests::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);

fn network_image() -> std::path::PathBuf {
    repo().join("out").join(format!("{BOARD}-network")).join(format!("{BOARD}-network.img"))
}

fn network(dev: &Device) -> serde_json::Value {
    let (code, b) = http("GET", &dev.gateway("/api/v1/network"), Some(&dev.token), None).unwrap();
    assert_eq!(code, 200, "GET /api/v1/network: {}", String::from_utf8_lossy(&b));
    json(&b).unwrap()
}

/// Polls the network report until `ok` holds; returns it and the time taken.
fn wait_wifi(dev: &Device, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    loop {
        let n = network(dev);
        if ok(&n["wifi"]) {
            return (n, t.elapsed());
        }
        if t.elapsed() > JOIN_TIMEOUT {
            let tail = dev.qemu.as_ref().map(|q| q.console_tail(30)).unwrap_or_default();
            panic!("wifi not {what} after {JOIN_TIMEOUT:?}: {}\nconsole tail:\n{tail}", n["wifi"]);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn connected_with_lease(w: &serde_json::Value) -> bool {
    let in_pool = w["ipv4"].as_str().and_then(|a| a.strip_prefix("192.168.77.")).and_then(|h| h.parse::<u8>().ok());
    w["state"] == "connected" && w["ssid"] == "lucid-hil" && in_pool.is_some_and(|h| (100..=150).contains(&h))
}

#[test]
#[ignore = "boots QEMU; run by ./scripts/hil network"]
fn joins_the_access_point_from_the_settings_file_and_rejoins_after_it_returns() {
    if remote_target().is_some() {
        eprintln!("skipped on a real target: it edits the card and drives the emulated access point");
        return;
    }
    let t0 = Instant::now();
    let disk = scratch_copy(&network_image(), "network.img").unwrap();
    let passphrase = "lucid-hil-passphrase";
    let settings =
        format!("# written on a laptop\n[[wifi]]\nssid = \"lucid-hil\"\npsk = \"{passphrase}\"\ncountry = \"DE\"\n");
    fat_write(&disk, 1, "lucid.toml", &settings).unwrap();
    let mut dev = Device::boot_qemu("network", &disk, "raw").unwrap();
    let healthy = dev.wait_healthy(BOOT_TIMEOUT).unwrap();
    println!("hil network: healthy after {healthy:?}");
    let c = dev.qemu.as_ref().unwrap().console();
    assert!(c.contains("lucid-rcS: hook /etc/lucid/rc.d/50-hil-ap"), "the access point hook did not run");
    assert!(!c.contains("hook /etc/lucid/rc.d/50-hil-ap failed"), "the access point hook failed");

    // (1) Joined from the settings file.
    let (n, joined) = wait_wifi(&dev, "connected with a lease", connected_with_lease);
    let w = &n["wifi"];
    println!(
        "hil network: joined lucid-hil in {joined:?}: {} signal {} dBm bssid {}",
        w["ipv4"], w["signal_dbm"], w["bssid"]
    );
    assert_eq!(w["interface"], "wlan0");
    assert!(w["signal_dbm"].as_i64().is_some(), "no signal: {w}");
    assert_eq!(
        w["networks"],
        serde_json::json!([{"ssid": "lucid-hil", "country": "DE", "hidden": false, "psk_set": true}])
    );
    let eth = n["interfaces"].as_array().unwrap().iter().find(|i| i["kind"] == "wired").cloned().unwrap_or_default();
    assert_eq!(eth["state"], "up", "the wired interface: {n}");
    assert!(n.to_string().find(passphrase).is_none(), "the passphrase in the report");
    let (_, h) = http("GET", &dev.gateway("/health"), None, None).unwrap();
    let h = json(&h).unwrap();
    assert_eq!(h["services"]["network"]["wifi"], "connected", "{h}");
    assert_eq!(h["services"]["network"]["ssid"], "lucid-hil", "{h}");
    let left = fat_read(&disk, 1, "lucid.toml").unwrap();
    assert!(!left.contains(passphrase), "the passphrase was left on the card: {left}");

    // (2) The access point goes away.
    let q = dev.qemu.as_mut().unwrap();
    // The empty quotes keep the echoed command line from matching what is waited for.
    q.send("").unwrap();
    q.send("killall hostapd; echo ap-\"\"stopped=$?").unwrap();
    q.wait_console("ap-stopped=0", 1, Duration::from_secs(20)).unwrap();
    let (n, lost) = wait_wifi(&dev, "disconnected", |w| w["state"] != "connected");
    println!("hil network: AP stopped; the client reports {} after {lost:?}", n["wifi"]["state"]);

    // (3) It comes back; the device rejoins by itself.
    let q = dev.qemu.as_mut().unwrap();
    q.send("hostapd -B -P /run/hostapd.pid /etc/lucid/hostapd.conf; echo ap-\"\"started=$?").unwrap();
    q.wait_console("ap-started=0", 1, Duration::from_secs(20)).unwrap();
    let (n, rejoined) = wait_wifi(&dev, "connected again with a lease", connected_with_lease);
    println!(
        "hil network: AP back; rejoined in {rejoined:?}: {} signal {} dBm",
        n["wifi"]["ipv4"], n["wifi"]["signal_dbm"]
    );
    // (4) The admin gives a wrong passphrase (PUT, applied at once): the device leaves
    // the network and cannot join it again; the right one brings it back.
    let put = |body: &str| {
        let (code, b) = http("PUT", &dev.gateway("/api/v1/network"), Some(&dev.token), Some(body)).unwrap();
        assert_eq!(code, 200, "PUT /api/v1/network: {}", String::from_utf8_lossy(&b));
        assert!(!String::from_utf8_lossy(&b).contains("passphrase"), "a passphrase in the answer");
    };
    put(r#"{"wifi": [{"ssid": "lucid-hil", "psk": "wrong-passphrase", "country": "DE"}]}"#);
    let (n, left) = wait_wifi(&dev, "off the network", |w| w["state"] != "connected");
    println!("hil network: wrong passphrase PUT; the client reports {} after {left:?}", n["wifi"]["state"]);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        let w = network(&dev)["wifi"].clone();
        assert_ne!(w["state"], "connected", "joined with a wrong passphrase: {w}");
        std::thread::sleep(Duration::from_millis(500));
    }
    put(&format!(r#"{{"wifi": [{{"ssid": "lucid-hil", "psk": "{passphrase}", "country": "DE"}}]}}"#));
    let (n, back) = wait_wifi(&dev, "connected again after the right passphrase", connected_with_lease);
    println!("hil network: right passphrase PUT; connected again in {back:?}: {}", n["wifi"]["ipv4"]);

    // The console carries lucidd's log and the settings report: never the passphrase.
    let c = dev.qemu.as_ref().unwrap().console();
    assert!(!c.contains(passphrase) && !c.contains("wrong-passphrase"), "a passphrase on the console (lucidd's log)");
    println!("hil network: group {:?}", t0.elapsed());
    dev.qemu.as_mut().unwrap().kill();
}
