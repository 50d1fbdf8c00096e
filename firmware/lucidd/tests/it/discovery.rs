//! The device is found on the LAN by an independent mDNS browser (python-zeroconf,
//! installed by scripts/setup), not by our own code.
//!
//! The daemon and the browser run in a network namespace of their own (`unshare -rn`,
//! with a veth pair, so multicast has a non-loopback interface): the test advertises
//! nothing on the host's network and cannot collide with another device there.

use std::process::Command;

use serde_json::Value;

#[test]
fn an_independent_browser_finds_the_device_and_its_txt_record() {
    let python = crate::harness::py_venv().join("bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/setup (it installs zeroconf)", python.display());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("lucidd.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/discovery/browse.py");
    let net = "ip link set lo up && ip link add v0 type veth peer name v1 \
               && ip addr add 10.77.0.1/24 dev v0 && ip addr add 10.77.0.2/24 dev v1 \
               && ip link set v0 up && ip link set v1 up && exec \"$@\"";
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", net, "sh"])
        .arg(&python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_lucidd"))
        .arg(&data)
        .arg(&log)
        .output()
        .expect("unshare runs (util-linux)");
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser failed: {}\n{}\nlucidd:\n{daemon_log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\nlucidd:\n{daemon_log}", String::from_utf8_lossy(&out.stdout)));
    let ctx = format!("{r:#}\nlucidd:\n{daemon_log}");

    let device = &r["device"];
    let id = device["device_id"].as_str().expect(&ctx);
    let hostname = device["hostname"].as_str().expect(&ctx);
    // The default name: lucid- and the first four hex digits of the device id.
    assert_eq!(hostname, format!("lucid-{}", &id["lucid-".len().."lucid-".len() + 4]), "{ctx}");

    let lucid = &r["services"]["_lucid._tcp.local."];
    assert_eq!(lucid["resolved"], true, "{ctx}");
    assert_eq!(lucid["name"], format!("{hostname}._lucid._tcp.local."), "{ctx}");
    assert_eq!(lucid["server"], format!("{hostname}.local."), "{ctx}");
    assert_eq!(lucid["port"], 8087, "{ctx}");
    assert_eq!(lucid["txt"]["id"], id, "{ctx}");
    assert_eq!(lucid["txt"]["version"], device["firmware_version"], "{ctx}");
    assert_eq!(lucid["txt"]["api"], "/api/v1", "{ctx}");
    assert_eq!(lucid["txt"].as_object().unwrap().len(), 3, "nothing else in the TXT record: {ctx}");
    let addrs: Vec<&str> = lucid["addresses"].as_array().expect(&ctx).iter().filter_map(Value::as_str).collect();
    assert!(addrs.iter().any(|a| a.starts_with("10.77.0.")), "the veth addresses are advertised: {ctx}");

    let http = &r["services"]["_http._tcp.local."];
    assert_eq!(http["resolved"], true, "{ctx}");
    assert_eq!(http["server"], format!("{hostname}.local."), "{ctx}");
    assert_eq!(http["port"], 8087, "{ctx}");

    // A clean stop withdraws both services at once (goodbye packets), not after the TTL.
    assert_eq!(r["exit"], 0, "{ctx}");
    assert_eq!(r["goodbye"], serde_json::json!(["_http._tcp.local.", "_lucid._tcp.local."]), "{ctx}");
}
