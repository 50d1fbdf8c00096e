//! The owner's settings file on the boot partition (issue 11, "First boot"): the real
//! `lucidd settings` that the image's init runs, on a directory standing in for the FAT
//! partition, then the daemon over the result.
//! - `lucid.toml` with a host name, an admin password, a time zone, time servers and a
//!   Wi-Fi network: applied, kept on the data partition, the password and the passphrase
//!   gone from the file (the comments kept), the host name what `lucidd hostname` says;
//!   the daemon reports it, and the admin password changes only with the current one.
//! - a malformed file changes nothing and is reported (console, /health, the admin's
//!   settings report), again at the next boot, until it is fixed;
//! - no password anywhere: one is generated, shown on the console and left in
//!   `lucid-password.txt`, which changing the password deletes;
//! - Raspberry Pi Imager's `custom.toml`.

use lucidd::config::{Config, RecordMode};
use serde_json::json;

use crate::harness::{Daemon, lucidd, test_config};

struct Card {
    _tmp: tempfile::TempDir,
    boot: std::path::PathBuf,
    data: std::path::PathBuf,
    image_config: std::path::PathBuf,
}

/// A boot partition, an empty data partition and the image's config naming them.
fn card() -> Card {
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("boot");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&boot).unwrap();
    let image_config = tmp.path().join("lucidd.toml");
    std::fs::write(
        &image_config,
        format!("data_dir = {:?}\n[network]\nmdns = false\n[settings]\ndir = {:?}\n", data, boot),
    )
    .unwrap();
    Card { _tmp: tmp, boot, data, image_config }
}

impl Card {
    /// `lucidd settings`, as rcS runs it at every boot: its console output.
    fn boot(&self) -> String {
        let (code, out, err) = lucidd(&[&"settings", &"--config", &self.image_config]);
        assert_eq!(code, 0, "lucidd settings: {out}{err}");
        out
    }

    fn hostname(&self) -> String {
        let (code, out, err) = lucidd(&[&"hostname", &"--config", &self.image_config]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.boot.join(name)).unwrap()
    }

    /// The daemon on this card, as `lucidd run --config` would configure it (the test's
    /// small video and token over it).
    fn daemon(self) -> Daemon {
        let layered = Config::load_layered(Some(&self.image_config), None).unwrap();
        let mut cfg = test_config(&self.data);
        cfg.network = layered.network;
        cfg.time = layered.time;
        cfg.settings = layered.settings;
        let tmp = self._tmp;
        Daemon::start_with(tmp, cfg)
    }
}

const LUCID_TOML: &str = r#"# Porch camera, written on my laptop.
hostname = "porch-cam"
admin_password = "correct horse battery"
timezone = "Europe/Berlin"

[time]
servers = ["ntp.example.org", "10.0.0.1:123"]

[record]
mode = "continuous"
segment_seconds = 600

[[wifi]]
ssid = "IEEE"
psk = "password"
country = "DE"
"#;

#[test]
fn a_settings_file_is_applied_once_and_its_secrets_leave_the_card() {
    let card = card();
    std::fs::write(card.boot.join("lucid.toml"), LUCID_TOML).unwrap();
    let out = card.boot();
    assert!(out.contains("lucid-settings: applied lucid.toml: admin_password, network.hostname, network.wifi, record.mode, record.segment_seconds, time.servers, time.timezone"), "{out}");
    assert!(!out.contains("admin password:"), "a password was given: none is generated: {out}");

    let left = card.file("lucid.toml");
    assert!(!left.contains("correct horse"), "the password is still on the card:\n{left}");
    assert!(!left.contains("psk = "), "the passphrase is still on the card:\n{left}");
    // IEEE 802.11i's test vector (SSID "IEEE", "password"): what wpa_passphrase prints.
    assert!(left.contains("psk_hash = \"f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e\""), "{left}");
    assert!(left.contains("# Porch camera, written on my laptop."), "the owner's comments stay:\n{left}");
    assert!(!card.boot.join("lucid-password.txt").exists());
    let kept = std::fs::read_to_string(card.data.join("settings.toml")).unwrap();
    assert!(!kept.contains("correct horse") && kept.contains("porch-cam"), "{kept}");
    let stored = std::fs::read_to_string(card.data.join("keys/admin-password")).unwrap();
    assert!(stored.starts_with("$pbkdf2-sha512$i=210000$"), "{stored}");
    assert_eq!(card.hostname(), "porch-cam");
    let layered = Config::load_layered(Some(&card.image_config), None).unwrap();
    assert_eq!((layered.record.mode, layered.record.segment_seconds), (RecordMode::Continuous, 600));

    // The next boot: the same file, nothing to do.
    let again = card.boot();
    assert!(again.contains("lucid-settings: lucid.toml unchanged since"), "{again}");

    let d = card.daemon();
    let c = d.client();
    let health = d.anon().get(&d.url("gateway", "/health")).json();
    assert_eq!(health["services"]["settings"]["state"], "applied", "{health}");
    let anon = d.anon().get(&d.url("gateway", "/api/v1/settings"));
    assert_eq!(anon.status, 401, "the settings report is the admin's");
    let report = c.get(&d.url("gateway", "/api/v1/settings")).json();
    assert_eq!(report["hostname"], "porch-cam");
    assert_eq!(report["timezone"], "Europe/Berlin");
    assert_eq!(report["time_servers"], json!(["ntp.example.org", "10.0.0.1:123"]));
    assert_eq!(report["wifi"], json!([{"ssid": "IEEE", "country": "DE", "hidden": false, "psk_set": true}]));
    assert_eq!(report["admin_password_set"], true);
    assert!(!report.to_string().contains("f42c6fc5"), "no PSK in the report: {report}");

    let pw = d.url("gateway", "/api/v1/admin/password");
    let r = c.put_json(&pw, &json!({"new_password": "a new password"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("current_password is required"), "{}", r.text());
    let r = c.put_json(&pw, &json!({"current_password": "wrong horse battery", "new_password": "a new password"}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("does not match"), "{}", r.text());
    let r = c.put_json(&pw, &json!({"current_password": "correct horse battery", "new_password": "short"}));
    assert_eq!(r.status, 400);
    let r = c.put_json(&pw, &json!({"current_password": "correct horse battery", "new_password": "a new password"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let stored2 = std::fs::read_to_string(d.dir.path().join("data/keys/admin-password")).unwrap();
    assert_ne!(stored, stored2);
    assert!(lucidd::password::verify("a new password", &stored2));
    let viewer = d.anon().put_json(&pw, &json!({"current_password": "a new password", "new_password": "mine now!"}));
    assert_eq!(viewer.status, 401);
}

#[test]
fn a_malformed_file_changes_nothing_and_is_reported_until_fixed() {
    let card = card();
    std::fs::write(card.boot.join("lucid.toml"), "hostname = \"first\"\n").unwrap();
    assert!(card.boot().contains("applied lucid.toml: network.hostname"));
    let kept_before = std::fs::read_to_string(card.data.join("settings.toml")).unwrap();

    for (text, why) in [
        ("hostname = \"second\"\nadmin_password = \"oops\n", "TOML parse error"),
        ("hostname = \"Not A Label!\"\n", "network.hostname"),
        ("hostnmae = \"typo\"\n", "unknown field `hostnmae`"),
        ("[[wifi]]\nssid = \"Home\"\npsk = \"short\"\n", "8..=63"),
        ("[record]\nmode = \"sometimes\"\n", "unknown variant `sometimes`"),
        ("[record]\nsegment_seconds = 1\n", "record.segment_seconds"),
    ] {
        std::fs::write(card.boot.join("lucid.toml"), text).unwrap();
        let out = card.boot();
        assert!(out.contains("lucid-settings: REJECTED lucid.toml (nothing changed)"), "{text:?}: {out}");
        assert!(out.contains(why), "{text:?}: {out}");
        assert_eq!(card.file("lucid.toml"), text, "a rejected file is left as the owner wrote it");
        assert_eq!(std::fs::read_to_string(card.data.join("settings.toml")).unwrap(), kept_before);
        assert_eq!(card.hostname(), "first");
        // Reported again at the next boot, not forgotten.
        assert!(card.boot().contains("REJECTED"), "{text:?}");
    }
    let big = format!("hostname = \"x\"\n#{}\n", "a".repeat(70 * 1024));
    std::fs::write(card.boot.join("lucid.toml"), &big).unwrap();
    assert!(card.boot().contains("at most 65536"), "a huge file is refused unread");

    std::fs::write(card.boot.join("lucid.toml"), "hostname = \"Not A Label!\"\n").unwrap();
    card.boot();
    let d = card.daemon();
    let health = d.anon().get(&d.url("gateway", "/health"));
    let h = health.json();
    assert_eq!(h["services"]["settings"]["state"], "rejected", "{h}");
    assert!(h["services"]["settings"].get("error").is_none(), "the error may quote the file: admin only");
    let report = d.client().get(&d.url("gateway", "/api/v1/settings")).json();
    assert_eq!(report["file"]["state"], "rejected");
    assert!(report["file"]["error"].as_str().unwrap().contains("network.hostname"), "{report}");
    assert_eq!(report["hostname"], "first", "the kept settings stand");
}

#[test]
fn without_a_password_one_is_generated_shown_once_and_its_file_goes_when_changed() {
    let card = card();
    let out = card.boot();
    assert!(out.contains("lucid-settings: no settings file"), "{out}");
    let line = out.lines().find(|l| l.contains("admin password:")).unwrap_or_else(|| panic!("{out}"));
    let generated = line.split("admin password: ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    assert_eq!(generated.len(), 19, "{generated}");
    let file = card.file("lucid-password.txt");
    assert!(file.contains(&generated), "{file}");
    let host = card.hostname();
    assert!(file.contains(&format!("http://{host}.local/")), "{file}");
    // Once: the next boot keeps it and shows nothing.
    assert!(!card.boot().contains("admin password:"));

    let boot = card.boot.clone();
    let d = card.daemon();
    let r = d.client().put_json(
        &d.url("gateway", "/api/v1/admin/password"),
        &json!({"current_password": generated, "new_password": "my own password"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["generated_password_file_removed"], true);
    assert!(!boot.join("lucid-password.txt").exists(), "the card no longer holds a password");
}

#[test]
fn raspberry_pi_imager_custom_toml_names_the_host_and_the_network() {
    let card = card();
    std::fs::write(
        card.boot.join("custom.toml"),
        "config_version = 1\n[system]\nhostname = \"imager-cam\"\n[user]\nname = \"pi\"\npassword = \"$5$x\"\npassword_encrypted = true\n\
         [wlan]\nssid = \"Home\"\npassword = \"password\"\npassword_encrypted = false\nhidden = false\ncountry = \"GB\"\n\
         [locale]\nkeymap = \"gb\"\ntimezone = \"Europe/London\"\n",
    )
    .unwrap();
    let out = card.boot();
    assert!(out.contains("applied custom.toml: network.hostname, network.wifi, time.timezone"), "{out}");
    assert!(out.contains("ignored (not used by this device): locale.keymap, user"), "{out}");
    assert_eq!(card.hostname(), "imager-cam");
    let left = card.file("custom.toml");
    assert!(left.contains("password_encrypted = true") && !left.contains("password = \"password\""), "{left}");
}
