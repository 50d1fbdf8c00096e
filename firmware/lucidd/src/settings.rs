//! The owner's settings file on the boot partition: what a person (or an imaging tool)
//! writes on a PC before the first boot, applied once per change by `lucidd settings`
//! from the image's init, before anything reads the config.
//!
//! Owns the file's schema (`lucid.toml`; the hostname, Wi-Fi and time-zone keys of the
//! `custom.toml` that Raspberry Pi Imager writes), turning it into the device's kept
//! settings (`<data dir>/settings.toml`, a partial config that `Config::load_layered`
//! puts over the image's), taking the secrets out of the file once they are kept (the
//! admin password hashed into `password`'s file and removed, Wi-Fi passphrases replaced
//! by their PSK), the generated admin password when there is none, and the report of
//! what happened (`<data dir>/settings-status.json`, shown in `/health` and
//! `/api/v1/device`). A file that does not parse or validate changes nothing: it is
//! reported and left as it is for the owner to fix.
//!
//! Parsing, validation and the rewrite are pure (`parse`, `overlay`, `scrubbed`); `apply`
//! does the file IO. It must not start services or touch the network, and must never
//! print or store a plaintext secret except the generated password, once, on the console
//! and in `lucid-password.txt` (see `password`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, SETTINGS_OVERLAY, WifiNetwork, merge_tables};
use crate::password::{self, PasswordError};
use crate::util::{hex, now_rfc3339};

/// The settings file, in the settings directory.
pub const FILE: &str = "lucid.toml";
/// Raspberry Pi Imager's first-boot file (Raspberry Pi OS Bookworm), read when there is
/// no `lucid.toml`.
pub const IMAGER_FILE: &str = "custom.toml";
/// The report of the last apply, in the data directory.
pub const STATUS: &str = "settings-status.json";
/// A settings file is a page of text: refuse anything larger unread.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file} is {size} bytes; a settings file is at most {MAX_FILE_BYTES}")]
    TooLarge { file: String, size: u64 },
    #[error("{file}: {msg}")]
    Parse { file: String, msg: String },
    #[error("{file}: {key}: {msg}")]
    Invalid { file: String, key: String, msg: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Write(#[from] crate::keys::KeyError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SettingsError + '_ {
    move |source| SettingsError::Io { path: path.to_owned(), source }
}

/// `lucid.toml`. Every key is optional; what is absent keeps its current value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LucidFile {
    hostname: Option<String>,
    admin_password: Option<String>,
    admin_password_hash: Option<String>,
    timezone: Option<String>,
    time: Option<TimeIn>,
    record: Option<toml::Table>,
    #[serde(default)]
    wifi: Vec<WifiIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeIn {
    servers: Vec<String>,
}

/// One Wi-Fi network as an owner gives it: in `lucid.toml`'s `[[wifi]]` and in the body
/// of `PUT /api/v1/network`. Not `Debug`: it may hold a passphrase.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WifiIn {
    pub ssid: String,
    pub psk: Option<String>,
    pub psk_hash: Option<String>,
    pub country: Option<String>,
    #[serde(default)]
    pub hidden: bool,
}

impl std::fmt::Debug for WifiIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WifiIn")
            .field("ssid", &self.ssid)
            .field("psk_set", &self.psk.is_some())
            .field("psk_hash_set", &self.psk_hash.is_some())
            .field("country", &self.country)
            .field("hidden", &self.hidden)
            .finish()
    }
}

/// The keys of `[record]` an owner may set here (the rest are the image's business).
const RECORD_KEYS: &[&str] = &["mode", "segment_seconds"];

/// The admin password a file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Plain(String),
    Hash(String),
}

/// What a settings file asks for, validated, secrets not yet hashed.
#[derive(Debug, Default)]
pub struct Settings {
    pub hostname: Option<String>,
    pub admin: Option<Admin>,
    pub timezone: Option<String>,
    pub time_servers: Option<Vec<String>>,
    pub record: toml::Table,
    /// `(network, passphrase)`: the passphrase, when given, still to be turned into the
    /// PSK (which needs the SSID).
    pub wifi: Vec<(WifiNetwork, Option<String>)>,
    /// Keys of an Imager file this firmware has no use for (users, SSH, keyboard).
    pub ignored: Vec<String>,
}

/// The WPA2 pre-shared key of a passphrase, as `wpa_passphrase` prints it: PBKDF2-HMAC-SHA1
/// of the passphrase salted with the SSID, 4096 rounds, 32 bytes (IEEE 802.11i H.4).
pub fn wpa_psk(ssid: &str, passphrase: &str) -> String {
    let mut out = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(4096).expect("nonzero");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA1, rounds, ssid.as_bytes(), passphrase.as_bytes(), &mut out);
    hex(&out)
}

fn invalid(file: &str, key: &str, msg: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { file: file.into(), key: key.into(), msg: msg.into() }
}

fn wifi_in(file: &str, w: WifiIn) -> Result<(WifiNetwork, Option<String>), SettingsError> {
    let key = format!("wifi {:?}", w.ssid);
    if w.psk.is_some() && w.psk_hash.is_some() {
        return Err(invalid(file, &key, "give psk or psk_hash, not both"));
    }
    if let Some(p) = &w.psk
        && !(8..=63).contains(&p.len())
    {
        return Err(invalid(file, &key, "a WPA2 passphrase is 8..=63 characters"));
    }
    let net = WifiNetwork {
        ssid: w.ssid,
        psk_hash: w.psk_hash.unwrap_or_default().to_ascii_lowercase(),
        country: w.country.unwrap_or_default(),
        hidden: w.hidden,
    };
    net.validate().map_err(|m| invalid(file, &key, m))?;
    Ok((net, w.psk))
}

/// `n` with its passphrase, if one was given, turned into the PSK wpa_supplicant takes.
fn hashed(n: &WifiNetwork, passphrase: Option<&str>) -> WifiNetwork {
    let mut n = n.clone();
    if let Some(p) = passphrase {
        n.psk_hash = wpa_psk(&n.ssid, p);
    }
    n
}

/// Networks as an owner gives them (`origin` names where, for errors), validated like the
/// settings file's and with passphrases hashed: what `[network] wifi` keeps.
pub fn wifi_networks(origin: &str, input: Vec<WifiIn>) -> Result<Vec<WifiNetwork>, SettingsError> {
    if input.len() > crate::config::MAX_WIFI_NETWORKS {
        return Err(invalid(origin, "wifi", format!("at most {} networks", crate::config::MAX_WIFI_NETWORKS)));
    }
    input.into_iter().map(|w| wifi_in(origin, w).map(|(n, p)| hashed(&n, p.as_deref()))).collect()
}

/// Writes the kept settings (`<data_dir>/settings.toml`, atomically, 0600) with a header
/// naming what wrote them. The one writer: `lucidd settings` and `PUT /api/v1/network`.
pub fn keep(data_dir: &Path, kept: &toml::Table, source: &str) -> Result<(), SettingsError> {
    let header = format!(
        "# The device's kept settings: written by {source} on {}.\n\
         # Layered over the image's config; the web app changes them too.\n",
        now_rfc3339()
    );
    write_atomic(
        &data_dir.join(SETTINGS_OVERLAY),
        format!("{header}{}", toml::to_string(kept).expect("table serialises")).as_bytes(),
    )
}

/// Parses `lucid.toml` (`name` = FILE) or Imager's `custom.toml` (`name` = IMAGER_FILE).
pub fn parse(name: &str, text: &str) -> Result<Settings, SettingsError> {
    let parse_err = |e: toml::de::Error| SettingsError::Parse { file: name.into(), msg: e.to_string() };
    if name == IMAGER_FILE {
        return parse_imager(text.parse::<toml::Table>().map_err(parse_err)?);
    }
    let f: LucidFile = toml::from_str(text).map_err(parse_err)?;
    let admin = match (f.admin_password, f.admin_password_hash) {
        (Some(_), Some(_)) => {
            return Err(invalid(name, "admin_password", "give admin_password or admin_password_hash, not both"));
        }
        (Some(p), None) => {
            password::check_len(&p).map_err(|e| invalid(name, "admin_password", e.to_string()))?;
            Some(Admin::Plain(p))
        }
        (None, Some(h)) => {
            password::check_hash(&h).map_err(|e| invalid(name, "admin_password_hash", e.to_string()))?;
            Some(Admin::Hash(h.trim().to_owned()))
        }
        (None, None) => None,
    };
    if let Some(r) = &f.record
        && let Some(k) = r.keys().find(|k| !RECORD_KEYS.contains(&k.as_str()))
    {
        return Err(invalid(
            name,
            &format!("record.{k}"),
            format!("not a setting of this file (only {RECORD_KEYS:?})"),
        ));
    }
    let wifi = f.wifi.into_iter().map(|w| wifi_in(name, w)).collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        hostname: f.hostname,
        admin,
        timezone: f.timezone,
        time_servers: f.time.map(|t| t.servers),
        record: f.record.unwrap_or_default(),
        wifi,
        ignored: Vec::new(),
    })
}

/// Imager's `custom.toml`: `[system] hostname`, `[wlan] ssid/password/password_encrypted/
/// hidden/country`, `[locale] timezone`. The rest (`[user]`, `[ssh]`, keyboard) configures
/// a Raspberry Pi OS this device does not run: listed as ignored.
fn parse_imager(t: toml::Table) -> Result<Settings, SettingsError> {
    let f = IMAGER_FILE;
    let mut s = Settings::default();
    let get = |table: &str, key: &str| t.get(table).and_then(|v| v.get(key)).cloned();
    let string = |table: &str, key: &str| -> Result<Option<String>, SettingsError> {
        match get(table, key) {
            None => Ok(None),
            Some(toml::Value::String(v)) => Ok(Some(v)),
            Some(_) => Err(invalid(f, &format!("{table}.{key}"), "must be a string")),
        }
    };
    s.hostname = string("system", "hostname")?;
    s.timezone = string("locale", "timezone")?;
    if let Some(ssid) = string("wlan", "ssid")? {
        let password = string("wlan", "password")?;
        let encrypted = matches!(get("wlan", "password_encrypted"), Some(toml::Value::Boolean(true)));
        let hidden = matches!(get("wlan", "hidden"), Some(toml::Value::Boolean(true)));
        let (psk, psk_hash) = if encrypted { (None, password) } else { (password, None) };
        let country = string("wlan", "country")?;
        s.wifi.push(wifi_in(f, WifiIn { ssid, psk, psk_hash, country, hidden })?);
    }
    let used: &[(&str, &[&str])] = &[
        ("config_version", &[]),
        ("system", &["hostname"]),
        ("wlan", &["ssid", "password", "password_encrypted", "hidden", "country"]),
        ("locale", &["timezone"]),
    ];
    for (k, v) in &t {
        let Some((_, keys)) = used.iter().find(|(name, _)| name == k) else {
            s.ignored.push(k.clone());
            continue;
        };
        if let toml::Value::Table(inner) = v {
            s.ignored.extend(inner.keys().filter(|ik| !keys.contains(&ik.as_str())).map(|ik| format!("{k}.{ik}")));
        }
    }
    Ok(s)
}

/// The kept settings `s` makes (hashing Wi-Fi passphrases), as a partial config.
pub fn overlay(s: &Settings) -> toml::Table {
    let mut out = toml::Table::new();
    let mut section = |name: &str, key: &str, v: toml::Value| {
        out.entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table")
            .insert(key.to_owned(), v);
    };
    if let Some(h) = &s.hostname {
        section("network", "hostname", h.clone().into());
    }
    if !s.wifi.is_empty() {
        let nets: Vec<WifiNetwork> = s.wifi.iter().map(|(n, pass)| hashed(n, pass.as_deref())).collect();
        section("network", "wifi", toml::Value::try_from(nets).expect("networks serialise"));
    }
    if let Some(tz) = &s.timezone {
        section("time", "timezone", tz.clone().into());
    }
    if let Some(servers) = &s.time_servers {
        section("time", "servers", toml::Value::try_from(servers).expect("strings serialise"));
    }
    for (k, v) in &s.record {
        section("record", k, v.clone());
    }
    out
}

/// The file's text with its secrets out: `admin_password`/`admin_password_hash` removed
/// (kept hashed on the data partition; a comment says so), each Wi-Fi passphrase replaced
/// by its PSK. Comments and order are kept (`toml_edit`). `None`: nothing to take out.
pub fn scrubbed(name: &str, text: &str, s: &Settings, when: &str) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let mut changed = false;
    if name == IMAGER_FILE {
        if let Some(w) = doc.get_mut("wlan").and_then(|w| w.as_table_like_mut())
            && !w.get("password_encrypted").and_then(|v| v.as_bool()).unwrap_or(false)
            && let (Some(ssid), Some(pass)) =
                (w.get("ssid").and_then(|v| v.as_str()), w.get("password").and_then(|v| v.as_str()))
        {
            let psk = wpa_psk(ssid, pass);
            w.insert("password", toml_edit::value(psk));
            w.insert("password_encrypted", toml_edit::value(true));
            changed = true;
        }
        return changed.then(|| doc.to_string());
    }
    for key in ["admin_password", "admin_password_hash"] {
        changed |= doc.remove(key).is_some();
    }
    if s.admin.is_some() {
        let note = format!(
            "# admin_password: applied on {when} and kept, hashed, on the device; removed from here.\n\
             # Write a new one here to replace it, or change it in the web app.\n"
        );
        let prefix = doc.decor().prefix().and_then(|p| p.as_str()).unwrap_or("").to_owned();
        doc.decor_mut().set_prefix(format!("{prefix}{note}"));
    }
    if let Some(nets) = doc.get_mut("wifi").and_then(|w| w.as_array_of_tables_mut()) {
        for net in nets.iter_mut() {
            if let (Some(ssid), Some(pass)) =
                (net.get("ssid").and_then(|v| v.as_str()), net.get("psk").and_then(|v| v.as_str()))
            {
                let psk = wpa_psk(ssid, pass);
                net.remove("psk");
                net.insert("psk_hash", toml_edit::value(psk));
                changed = true;
            }
        }
    }
    changed.then(|| doc.to_string())
}

/// What became of a settings file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No settings file.
    #[default]
    None,
    Applied,
    /// The same file as last time: nothing to do.
    Unchanged,
    /// It did not parse or validate: nothing changed.
    Rejected,
}

/// What `apply` found and did; also the status file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `applied`, `unchanged` (the same file as last time), `rejected` (nothing changed),
    /// or `none` (no settings file).
    pub state: State,
    /// The file it was about (`lucid.toml` or `custom.toml`).
    #[serde(default)]
    pub file: String,
    /// BLAKE3 of the file as it was left (after the secrets came out): a file is applied
    /// once, so later changes from the web app are not undone at the next boot.
    #[serde(default)]
    pub digest: String,
    /// When it was applied or rejected.
    #[serde(default)]
    pub at: String,
    /// Why a file was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kept settings it set (config keys), and the Imager keys it ignored.
    #[serde(default)]
    pub applied: Vec<String>,
    #[serde(default)]
    pub ignored: Vec<String>,
}

impl Status {
    /// The last status, if any.
    pub fn load(data_dir: &Path) -> Option<Status> {
        let bytes = std::fs::read(data_dir.join(STATUS)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Temp file, fsync, rename, fsync of the directory: a power cut leaves the old file or
/// the new one. Private (0600) where the file system keeps modes; FAT does not.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SettingsError> {
    Ok(crate::keys::write_secret(path, bytes)?)
}

fn keys_of(t: &toml::Table) -> Vec<String> {
    t.iter()
        .flat_map(|(k, v)| match v {
            toml::Value::Table(inner) => inner.keys().map(|ik| format!("{k}.{ik}")).collect::<Vec<_>>(),
            _ => vec![k.clone()],
        })
        .collect()
}

/// Applies the settings file of `cfg.settings.dir` if it changed since the last apply,
/// and records the result in the status file. `image_config` is the image's config file,
/// without the kept settings: the merged result must load and validate before anything
/// is written.
pub fn apply(image_config: Option<&Path>, cfg: &Config) -> Result<Status, SettingsError> {
    // The first boot: the daemon has not made its data directory yet.
    std::fs::create_dir_all(&cfg.data_dir).map_err(io(&cfg.data_dir))?;
    let status = apply_file(image_config, &cfg.data_dir, &cfg.settings.dir)?;
    if status.state == State::Unchanged {
        return Ok(status);
    }
    write_atomic(&cfg.data_dir.join(STATUS), &serde_json::to_vec_pretty(&status).expect("status serialises"))?;
    Ok(status)
}

/// Makes an admin password when the device has none and there is a settings directory
/// to leave it in (`lucid-password.txt`); returns it, for the console, once.
pub fn ensure_admin_password(cfg: &Config, hostname: &str) -> Result<Option<String>, SettingsError> {
    let dir = &cfg.settings.dir;
    if dir.as_os_str().is_empty() || password::stored(&cfg.data_dir)?.is_some() {
        return Ok(None);
    }
    let p = password::generate()?;
    // The file first, then the hash: a power cut between the two leaves no hash, so the
    // next boot makes a new password and overwrites the file. The other order could
    // leave a hash of a password nobody was shown.
    write_atomic(&dir.join(password::GENERATED_FILE), password::generated_file_text(hostname, &p).as_bytes())?;
    password::store(&cfg.data_dir, &password::hash(&p)?)?;
    Ok(Some(p))
}

fn apply_file(image_config: Option<&Path>, data_dir: &Path, dir: &Path) -> Result<Status, SettingsError> {
    let none = Status { state: State::None, at: now_rfc3339(), ..Status::default() };
    if dir.as_os_str().is_empty() {
        return Ok(none);
    }
    let Some(name) = [FILE, IMAGER_FILE].into_iter().find(|n| dir.join(n).is_file()) else {
        return Ok(none);
    };
    let path = dir.join(name);
    let size = std::fs::metadata(&path).map_err(io(&path))?.len();
    let rejected = |e: SettingsError| Status {
        state: State::Rejected,
        file: name.into(),
        at: now_rfc3339(),
        error: Some(e.to_string()),
        ..Status::default()
    };
    if size > MAX_FILE_BYTES {
        return Ok(rejected(SettingsError::TooLarge { file: name.into(), size }));
    }
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let digest = blake3::hash(&bytes).to_hex().to_string();
    if let Some(last) = Status::load(data_dir)
        && last.digest == digest
        && last.file == name
    {
        // Applied (or rejected) before: a boot does not undo later changes, and a rejected
        // file is reported again until the owner fixes it.
        let state = if last.state == State::Rejected { State::Rejected } else { State::Unchanged };
        return Ok(Status { state, ..last });
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => {
            let e = SettingsError::Parse { file: name.into(), msg: "not UTF-8 text".into() };
            return Ok(Status { digest, ..rejected(e) });
        }
    };
    let s = match parse(name, &text) {
        Ok(s) => s,
        Err(e) => return Ok(Status { digest, ..rejected(e) }),
    };
    // The kept settings so far with this file's over them must make a valid config.
    let mut kept = Config::kept_settings(data_dir)?;
    let new = overlay(&s);
    merge_tables(&mut kept, &new);
    if let Err(e) = Config::with_kept(image_config, Some(data_dir), &kept).and_then(|c| c.validate()) {
        return Ok(Status { digest, ..rejected(SettingsError::Config(e)) });
    }
    // Keep, then take the secrets out of the card: a power cut between the two leaves the
    // file as it was, and the next boot applies it again to the same result.
    if let Some(admin) = &s.admin {
        let hash = match admin {
            Admin::Plain(p) => password::hash(p)?,
            Admin::Hash(h) => h.clone(),
        };
        password::store(data_dir, &hash)?;
    }
    keep(data_dir, &kept, &format!("`lucidd settings` from {}", path.display()))?;
    let left = match scrubbed(name, &text, &s, &now_rfc3339()) {
        Some(clean) => {
            write_atomic(&path, clean.as_bytes())?;
            clean
        }
        None => text,
    };
    let mut applied: Vec<String> = keys_of(&new);
    if s.admin.is_some() {
        applied.push("admin_password".into());
    }
    let applied: Vec<String> = applied.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    Ok(Status {
        state: State::Applied,
        file: name.into(),
        digest: blake3::hash(left.as_bytes()).to_hex().to_string(),
        at: now_rfc3339(),
        error: None,
        applied,
        ignored: s.ignored,
    })
}

/// Removes the generated password's file (the admin chose a password of their own).
pub fn remove_generated_password(dir: &Path) -> Result<bool, SettingsError> {
    if dir.as_os_str().is_empty() {
        return Ok(false);
    }
    let p = dir.join(password::GENERATED_FILE);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_on_the_card_is_a_valid_settings_file() {
        let text = include_str!("../../../image/bootctl/lucid.toml.example");
        let s = parse(FILE, text).unwrap();
        assert!(s.hostname.is_some() && s.admin.is_some() && s.timezone.is_some() && s.wifi.len() == 1);
        Config::with_kept(None, None, &overlay(&s)).unwrap().validate().unwrap();
    }

    #[test]
    fn the_psk_is_the_one_of_ieee_802_11i() {
        // IEEE 802.11i-2004, H.4.3, test vector 1.
        assert_eq!(wpa_psk("IEEE", "password"), "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e");
    }

    const FULL: &str = r#"# my porch camera
hostname = "porch"
admin_password = "correct horse battery"
timezone = "Europe/Berlin"

[time]
servers = ["ntp.example.org"]

[record]
mode = "continuous"

[[wifi]]
ssid = "Home"
psk = "password"
country = "DE"
"#;

    #[test]
    fn a_full_file_becomes_kept_settings_without_secrets() {
        let s = parse(FILE, FULL).unwrap();
        assert_eq!(s.admin, Some(Admin::Plain("correct horse battery".into())));
        let o = overlay(&s);
        assert_eq!(o["network"]["hostname"].as_str(), Some("porch"));
        assert_eq!(o["network"]["wifi"][0]["psk_hash"].as_str(), Some(wpa_psk("Home", "password").as_str()));
        assert_eq!(o["time"]["timezone"].as_str(), Some("Europe/Berlin"));
        assert_eq!(o["record"]["mode"].as_str(), Some("continuous"));
        let text = toml::to_string(&o).unwrap();
        assert!(!text.contains("correct horse") && !text.contains("\"password\""), "{text}");

        let clean = scrubbed(FILE, FULL, &s, "2026-11-26T10:00:00Z").unwrap();
        assert!(!clean.contains("correct horse"), "{clean}");
        assert!(!clean.contains("psk = "), "{clean}");
        assert!(clean.contains("# my porch camera"), "comments are kept: {clean}");
        assert!(clean.contains("admin_password: applied on 2026-11-26T10:00:00Z"), "{clean}");
        // The scrubbed file applies again to the same settings (the PSK now pre-hashed),
        // with no password: a later boot does not reset one changed in the web app.
        let again = parse(FILE, &clean).unwrap();
        assert_eq!(again.admin, None);
        assert_eq!(overlay(&again)["network"], o["network"]);
        assert_eq!(scrubbed(FILE, &clean, &again, "later"), None);
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, needle) in [
            ("hostname = ", "line 1, column 12"),
            ("colour = \"red\"", "unknown field"),
            ("admin_password = \"short\"", "admin_password"),
            ("admin_password = \"longenough\"\nadmin_password_hash = \"x\"", "not both"),
            ("admin_password_hash = \"$md5$x\"", "admin_password_hash"),
            ("[[wifi]]\nssid = \"A\"\npsk = \"short\"", "8..=63"),
            ("[[wifi]]\nssid = \"A\"\npsk_hash = \"abc\"", "64 hex"),
            ("[[wifi]]\nssid = \"A\"\ncountry = \"Germany\"", "two capital"),
            ("[record]\nchunk_target_ms = 5", "record.chunk_target_ms"),
        ] {
            let e = parse(FILE, text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn imager_custom_toml_gives_hostname_wifi_and_zone() {
        let text = r#"config_version = 1
[system]
hostname = "cam1"
[user]
name = "pi"
password = "$5$abc"
password_encrypted = true
[wlan]
ssid = "Home"
password = "password"
password_encrypted = false
hidden = false
country = "GB"
[locale]
keymap = "gb"
timezone = "Europe/London"
"#;
        let s = parse(IMAGER_FILE, text).unwrap();
        assert_eq!(s.hostname.as_deref(), Some("cam1"));
        assert_eq!(s.timezone.as_deref(), Some("Europe/London"));
        assert_eq!(s.ignored, vec!["locale.keymap".to_string(), "user".to_string()]);
        let o = overlay(&s);
        assert_eq!(o["network"]["wifi"][0]["psk_hash"].as_str(), Some(wpa_psk("Home", "password").as_str()));
        assert_eq!(o["network"]["wifi"][0]["country"].as_str(), Some("GB"));
        let clean = scrubbed(IMAGER_FILE, text, &s, "now").unwrap();
        assert!(clean.contains("password_encrypted = true") && !clean.contains("password = \"password\""), "{clean}");
        // Encrypted already: Imager's PSK is taken as it is.
        let s2 = parse(IMAGER_FILE, &clean).unwrap();
        assert_eq!(overlay(&s2)["network"]["wifi"], o["network"]["wifi"]);
    }
}
