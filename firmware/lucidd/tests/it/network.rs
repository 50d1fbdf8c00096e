//! The Wi-Fi client's API (issue 11, "Network"): `GET`/`PUT /api/v1/network` through the
//! real routers on loopback.
//! - both are admin-only: anonymous callers get 401, viewers 403;
//! - a bad body (short passphrase, bad PSK hash, bad country, psk and psk_hash at once,
//!   unknown keys) is a 4xx and changes nothing, neither the report nor the kept settings;
//! - a good body is kept in `<data_dir>/settings.toml` (the file `lucidd settings`
//!   writes) as the PBKDF2 PSK, and a daemon started again over that data directory joins
//!   the same networks;
//! - neither the passphrase nor the PSK appears in any response (`/health`, the network
//!   and settings reports, the PUT's answer);
//! - with networks but no such interface, or no wpa_supplicant binary, the supervisor
//!   reports `unavailable` with the reason, and the daemon serves on.

use std::time::{Duration, Instant};

use lucidd::config::{Config, WifiNetwork};
use serde_json::{Value, json};

use crate::harness::{Client, Daemon, test_config};

const PASS: &str = "hil-passphrase-42";

fn viewer(d: &Daemon) -> Client {
    let r = d.client().post_json(&d.url("gateway", "/api/v1/tokens"), &json!({"name": "v", "role": "viewer"}));
    assert_eq!(r.status, 201, "{}", r.text());
    Client { http: reqwest::blocking::Client::new(), token: Some(r.json()["token"].as_str().unwrap().to_owned()) }
}

fn network(d: &Daemon) -> Value {
    let r = d.client().get(&d.url("gateway", "/api/v1/network"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn kept(d: &Daemon) -> Option<String> {
    std::fs::read_to_string(d.dir.path().join("settings.toml")).ok()
}

#[test]
fn network_routes_are_admin_only() {
    let d = Daemon::start();
    let url = d.url("gateway", "/api/v1/network");
    let body = json!({"wifi": [{"ssid": "Home", "psk": PASS}]});
    assert_eq!(d.anon().get(&url).status, 401);
    assert_eq!(d.anon().put_json(&url, &body).status, 401);
    let v = viewer(&d);
    assert_eq!(v.get(&url).status, 403);
    assert_eq!(v.put_json(&url, &body).status, 403);
    assert!(kept(&d).is_none(), "a refused PUT wrote the kept settings");
    let n = network(&d);
    assert_eq!(n["wifi"]["state"], "disabled");
    assert_eq!(n["wifi"]["networks"], json!([]));
    assert!(n["hostname"].as_str().unwrap().starts_with("lucid-"));
    assert!(n["interfaces"].as_array().unwrap().iter().all(|i| i["name"] != "lo"));
}

#[test]
fn a_bad_network_body_changes_nothing() {
    let d = Daemon::start();
    let url = d.url("gateway", "/api/v1/network");
    let good = json!({"wifi": [{"ssid": "Home", "psk": PASS, "country": "DE"}]});
    assert_eq!(d.client().put_json(&url, &good).status, 200);
    let before_report = network(&d);
    let before_file = kept(&d).unwrap();
    let bad = [
        (json!({"wifi": [{"ssid": "A", "psk": "short"}]}), "8..=63"),
        (json!({"wifi": [{"ssid": "A", "psk_hash": "abc"}]}), "64 hex"),
        (json!({"wifi": [{"ssid": "A", "psk": PASS, "country": "Germany"}]}), "two capital"),
        (json!({"wifi": [{"ssid": "A", "psk": PASS, "psk_hash": "0".repeat(64)}]}), "not both"),
        (json!({"wifi": [{"ssid": "", "psk": PASS}]}), "1..=32"),
        (json!({"wifi": [{"ssid": "x".repeat(33), "psk": PASS}]}), "1..=32"),
        (json!({"wifi": (0..17).map(|i| json!({"ssid": format!("n{i}")})).collect::<Vec<_>>()}), "at most 16"),
    ];
    for (body, why) in bad {
        let r = d.client().put_json(&url, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(why), "{body}: {}", r.text());
        assert!(!r.text().contains(PASS), "the passphrase in an error: {}", r.text());
    }
    for body in [json!({"wifi": [{"ssid": "A", "password": PASS}]}), json!({"networks": []}), json!({"wifi": "Home"})] {
        let r = d.client().put_json(&url, &body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
    }
    // Far over the route's 16 KiB bound.
    let huge = json!({"wifi": [{"ssid": "A", "psk": "p".repeat(40_000)}]});
    assert_eq!(d.client().put_json(&url, &huge).status, 413);
    assert_eq!(network(&d), before_report);
    assert_eq!(kept(&d).unwrap(), before_file);
}

#[test]
fn networks_are_kept_hashed_survive_a_restart_and_never_come_back_out() {
    let d = Daemon::start();
    let url = d.url("gateway", "/api/v1/network");
    let hash = lucidd::settings::wpa_psk("Caf\u{e9} \"1\"", PASS);
    let open_hash = "ab".repeat(32);
    let r = d.client().put_json(
        &url,
        &json!({"wifi": [
            {"ssid": "Caf\u{e9} \"1\"", "psk": PASS, "country": "DE", "hidden": true},
            {"ssid": "Shop", "psk_hash": open_hash.to_uppercase()},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let nets = &r.json()["wifi"]["networks"];
    assert_eq!(
        nets,
        &json!([
            {"ssid": "Caf\u{e9} \"1\"", "country": "DE", "hidden": true, "psk_set": true},
            {"ssid": "Shop", "country": "", "hidden": false, "psk_set": true},
        ])
    );
    let file = kept(&d).unwrap();
    assert!(file.contains(&hash) && file.contains(&open_hash), "{file}");
    assert!(!file.contains(PASS), "{file}");
    // No response gives the passphrase or either PSK back.
    let admin = d.client();
    let mut bodies = vec![r.text()];
    for path in ["/api/v1/network", "/api/v1/settings", "/health"] {
        let r = admin.get(&d.url("gateway", path));
        assert!(r.status == 200 || r.status == 503, "{path}: {}", r.status);
        bodies.push(r.text());
    }
    for b in &bodies {
        for secret in [PASS, hash.as_str(), open_hash.as_str(), &open_hash.to_uppercase()] {
            assert!(!b.contains(secret), "a secret in a response: {b}");
        }
    }
    let health: Value = serde_json::from_str(&bodies[3]).unwrap();
    assert!(health["services"]["network"]["wifi"].is_string(), "{health}");

    // A restart over the same data directory: the config layered from the kept settings.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(d.dir.path(), dir.path());
    drop(d);
    let layered = Config::load_layered(None, Some(dir.path())).unwrap();
    let mut cfg = test_config(dir.path());
    cfg.network.wifi = layered.network.wifi;
    assert_eq!(
        cfg.network.wifi,
        vec![
            WifiNetwork { ssid: "Caf\u{e9} \"1\"".into(), psk_hash: hash.clone(), country: "DE".into(), hidden: true },
            WifiNetwork { ssid: "Shop".into(), psk_hash: open_hash.clone(), country: String::new(), hidden: false },
        ]
    );
    let d2 = Daemon::start_with(dir, cfg);
    assert_eq!(&network(&d2)["wifi"]["networks"], nets);
    // An empty list turns Wi-Fi off and is kept too.
    let r = d2.client().put_json(&d2.url("gateway", "/api/v1/network"), &json!({"wifi": []}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["wifi"]["networks"], json!([]));
    assert!(!kept(&d2).unwrap().contains(&hash));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Runs the real supervisor (as `lucidd::run` does) until it reports `unavailable`.
fn supervised(interface: &str, wpa_supplicant: &str) -> (Daemon, tokio::runtime::Runtime, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.network.wifi =
        vec![WifiNetwork { ssid: "Home".into(), psk_hash: "ab".repeat(32), country: "DE".into(), hidden: false }];
    cfg.network.wifi_interface = interface.into();
    cfg.network.wpa_supplicant = wpa_supplicant.into();
    cfg.network.wifi_run_dir = dir.path().join("run-wifi");
    let d = Daemon::start_with(dir, cfg);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let e = d.engine.clone();
    rt.spawn(lucidd::wifi::supervise(e.wifi.clone(), e.cfg.network.clone(), e.hostname()));
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let n = network(&d);
        if n["wifi"]["state"] == "unavailable" || start.elapsed() > Duration::from_secs(10) {
            return (d, rt, n);
        }
    }
}

#[test]
fn wifi_is_unavailable_without_its_interface_or_wpa_supplicant_and_the_daemon_serves_on() {
    let (d, _rt, n) = supervised("lucidnowlan0", "");
    assert_eq!(n["wifi"]["state"], "unavailable", "{n}");
    assert_eq!(n["wifi"]["reason"], "no interface lucidnowlan0", "{n}");
    assert_eq!(n["wifi"]["interface"], "lucidnowlan0");
    assert_eq!(n["wifi"]["networks"][0]["psk_set"], true);
    let h = d.client().get(&d.url("gateway", "/health")).json();
    assert_eq!(h["services"]["network"]["wifi"], "unavailable", "{h}");
    assert_eq!(h["services"]["network"]["reason"], "no interface lucidnowlan0", "{h}");
    // An interface that exists everywhere, and no binary.
    let (_d, _rt, n) = supervised("lo", "/nonexistent/wpa_supplicant");
    assert_eq!(n["wifi"]["state"], "unavailable", "{n}");
    assert_eq!(n["wifi"]["reason"], "no wpa_supplicant at /nonexistent/wpa_supplicant", "{n}");
}
