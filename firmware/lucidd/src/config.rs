//! Daemon configuration: defaults, then a TOML file, then `LUCID_*` environment variables
//! and command-line flags (clap merges those two; flags win).
//!
//! Owns the meaning and validation of every setting. It must not open devices or sockets:
//! a bad setting is reported here, before anything starts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid setting {key}: {msg}")]
    Invalid { key: &'static str, msg: String },
    /// Entry `index` (from 0) of `evidence.recipients` is not an age X25519 recipient.
    #[error("invalid setting evidence.recipients[{index}] = {value:?}: {msg}")]
    Recipient { index: usize, value: String, msg: String },
}

/// `[evidence]`: who, besides the device, can open a session's recordings (issue #10,
/// "Recipient keys"; docs/design.md, "Recipients file").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// age X25519 recipients (`age1…`, as `age-keygen` prints them). Every session
    /// created while this is non-empty has its data key encrypted to all of them, in one
    /// age file kept with the session and put in its evidence as `recipients.age`.
    pub recipients: Vec<String>,
    /// When false, the device erases its own (KEK-wrapped) copy of a session's data key
    /// when the session stops or is finalized: from then on only a recipient can decrypt
    /// it (`lucidd decrypt`); export, playback and live of it are refused. Needs
    /// `recipients`.
    pub device_can_decrypt: bool,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig { recipients: Vec::new(), device_can_decrypt: true }
    }
}

/// At most this many recipients: each adds about 130 bytes to every session's age file.
pub const MAX_RECIPIENTS: usize = 64;

impl EvidenceConfig {
    /// The recipients, parsed; `Err` names the first entry that is not an age X25519
    /// recipient.
    pub fn parsed_recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        self.recipients
            .iter()
            .enumerate()
            .map(|(index, value)| {
                value.trim().parse::<age::x25519::Recipient>().map_err(|e| ConfigError::Recipient {
                    index,
                    value: value.clone(),
                    msg: format!("not an age X25519 recipient (age1… as age-keygen prints it): {e}"),
                })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(ConfigError::Invalid {
                key: "evidence.recipients",
                msg: format!("at most {MAX_RECIPIENTS} recipients"),
            });
        }
        self.parsed_recipients()?;
        if !self.device_can_decrypt && self.recipients.is_empty() {
            return Err(ConfigError::Invalid {
                key: "evidence.device_can_decrypt",
                msg: "false needs at least one entry in evidence.recipients: otherwise no one could ever decrypt a stopped session".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The synthetic camera: a moving pattern with frame counter and clock.
    Test,
    /// A V4L2 capture device: the Pi camera (bcm2835-unicam / libcamera's V4L2 nodes) or a
    /// USB UVC camera.
    V4l2,
}

/// Which encoder turns camera frames into the recorded codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    /// The camera's own H.264 if it has one; else a V4L2 M2M encoder of the codec if one
    /// is present (bcm2835-codec on Pi 0–4); else the software encoder.
    Auto,
    /// A V4L2 M2M encoder; recording fails if there is none.
    Hardware,
    /// OpenH264 in the daemon (Pi 5, emulators, dev hosts).
    Software,
}

/// The recorded codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CodecChoice {
    H264,
    /// vicodec's FWHT: only to prove the V4L2 encoder path where no H.264 hardware exists
    /// (the emulated image). Needs `encoder = "hardware"` or `"auto"` with vicodec loaded.
    Fwht,
}

impl CodecChoice {
    pub fn media(self) -> lucid_media::Codec {
        match self {
            CodecChoice::H264 => lucid_media::Codec::H264,
            CodecChoice::Fwht => lucid_media::Codec::Fwht,
        }
    }
}

/// `[camera]`: the V4L2 devices. Also settable at run time (`PUT /api/v1/camera`, kept in
/// the store); the file gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CameraConfig {
    /// Capture node, e.g. "/dev/video0"; empty = the first camera found by capability.
    pub device: String,
    pub encoder: EncoderChoice,
    pub codec: CodecChoice,
    /// M2M encoder node; empty = the first one whose capture queue offers the codec.
    pub encoder_device: String,
    /// Capture buffers: enough to ride out a chunk commit (one fsync) without drops.
    pub buffers: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            device: String::new(),
            encoder: EncoderChoice::Auto,
            codec: CodecChoice::H264,
            encoder_device: String::new(),
            buffers: 6,
        }
    }
}

impl CameraConfig {
    /// Checks the settings for a daemon whose frames come from `source`: the file's
    /// `[camera]` at start, and every `PUT /api/v1/camera`.
    pub fn validate(&self, source: SourceKind) -> Result<(), ConfigError> {
        let bad = |key, msg: &str| Err(ConfigError::Invalid { key, msg: msg.into() });
        if !(2..=32).contains(&self.buffers) {
            return bad("camera.buffers", "must be 2..=32");
        }
        if self.codec == CodecChoice::Fwht && self.encoder == EncoderChoice::Software {
            return bad("camera.codec", "fwht has no software encoder; use encoder = \"hardware\" (vicodec)");
        }
        if self.codec == CodecChoice::Fwht && source != SourceKind::V4l2 {
            return bad("camera.codec", "fwht needs the V4L2 camera path (source = \"v4l2\")");
        }
        for (key, v) in [("camera.device", &self.device), ("camera.encoder_device", &self.encoder_device)] {
            if !v.is_empty() && !is_video_node(v) {
                return bad(key, "must be empty (find by capability) or a /dev/videoN path");
            }
        }
        Ok(())
    }
}

/// `/dev/video<N>` exactly: the name the kernel gives every V4L2 node. The path is opened
/// with ioctls by a root daemon, so nothing else is taken — no `..`, no symlink farms
/// (`/dev/v4l/by-id/...`), no other device files, no leading zeros.
fn is_video_node(path: &str) -> bool {
    path.strip_prefix("/dev/video").is_some_and(|n| {
        !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ports {
    pub pipeline: u16,
    pub recorder: u16,
    pub processor: u16,
    pub storage: u16,
    pub gateway: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { pipeline: 8083, recorder: 8084, processor: 8085, storage: 8086, gateway: 8087 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// Time between IDR frames; chunks are cut only there.
    pub keyframe_interval_ms: u32,
}

impl VideoConfig {
    /// The GOP length in frames (an IDR every `keyframe_interval_ms`), at least 1.
    pub fn keyframe_interval_frames(&self) -> u32 {
        (self.fps * self.keyframe_interval_ms / 1000).max(1)
    }
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig { width: 1280, height: 720, fps: 30, bitrate_bps: 2_000_000, keyframe_interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordConfig {
    /// Target chunk duration; a chunk is one or more whole GOPs, so at least one GOP.
    pub chunk_target_ms: u32,
    /// zstd is kept only when it saves at least this many percent of the payload.
    pub compress_min_saving_pct: u8,
    pub zstd_level: i32,
    /// A signed checkpoint every N chunks ...
    pub checkpoint_every_chunks: u64,
    /// ... or every T seconds, whichever comes first, and always at stop.
    pub checkpoint_every_secs: u64,
    /// `manual`: the camera records when a client or the button says so. `continuous`:
    /// it records from boot on, in segments of `segment_seconds` (engine/continuous.rs).
    pub mode: RecordMode,
    /// Length of one continuous segment (a session of its own), cut at the first
    /// keyframe after it; 2..=86400.
    pub segment_seconds: u64,
    /// Continuous mode: how long after the camera stopped by itself (it failed, was
    /// missing at boot, or a client stopped a segment) a new segment is tried; doubled
    /// after each failed try, up to 30 times this. 1..=3600.
    pub restart_secs: u64,
}

/// `[record] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// Sessions are started and stopped through the API or the record button.
    Manual,
    /// The camera records from boot on; a new session every `segment_seconds`.
    Continuous,
}

/// Shortest continuous segment: below two seconds a segment would hold one or two chunks
/// and the cut (a new session row, a signed manifest) would cost more than the video.
pub const MIN_SEGMENT_SECONDS: u64 = 2;
/// Longest continuous segment: a day.
pub const MAX_SEGMENT_SECONDS: u64 = 86_400;

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            chunk_target_ms: 1000,
            compress_min_saving_pct: 5,
            zstd_level: 3,
            checkpoint_every_chunks: 10,
            checkpoint_every_secs: 10,
            mode: RecordMode::Manual,
            segment_seconds: 3600,
            restart_secs: 10,
        }
    }
}

/// How this device switches between its A and B system slots (docs/design.md, "Boot
/// control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootControlKind {
    /// No A/B slots (a development host): the update routes answer 503.
    None,
    /// `lucid.env` on the boot-control partition, read by U-Boot's boot.scr (QEMU, Pi 3).
    UbootEnv,
    /// `autoboot.txt` with `tryboot_a_b=1` for the Raspberry Pi firmware (Pi 4/5).
    RpiTryboot,
}

/// The two partitions of one system slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotDevices {
    /// The slot's FAT boot partition (payload `boot`).
    pub boot: PathBuf,
    /// The slot's squashfs root partition (payload `rootfs`).
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    pub a: SlotDevices,
    pub b: SlotDevices,
}

/// `[update]`: signed A/B OTA updates. The image writes this section; a dev host keeps
/// `boot_control = "none"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    pub boot_control: BootControlKind,
    /// This device's board name; a bundle for another board is refused.
    pub board: String,
    /// `key=value` lines `board=`, `version=`, `build=` of the running system.
    pub release_file: PathBuf,
    /// Directory of trusted `*.vkey` files (C2SP verifier keys).
    pub trusted_keys_dir: PathBuf,
    /// Where the boot-control partition (p1) is mounted read-write.
    pub bootctl_dir: PathBuf,
    /// The kernel command line, which names the running slot (`lucid.slot=a|b`).
    pub cmdline_path: PathBuf,
    /// The slot devices; required unless `boot_control` is `none`.
    pub slots: Option<Slots>,
    /// Reboot into the new slot after an install, and out of a slot whose self-check
    /// failed. Tests turn it off.
    pub reboot_after_install: bool,
    /// How long the start-up self-check waits for the services to answer.
    pub self_check_timeout_secs: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            boot_control: BootControlKind::None,
            board: String::new(),
            release_file: PathBuf::from("/etc/lucid/release"),
            trusted_keys_dir: PathBuf::from("/etc/lucid/ota-keys"),
            bootctl_dir: PathBuf::from("/boot/ctl"),
            cmdline_path: PathBuf::from("/proc/cmdline"),
            slots: None,
            reboot_after_install: true,
            self_check_timeout_secs: 60,
        }
    }
}

/// `[gpio]`: the record LED and record button on a Raspberry Pi's header, by BCM number
/// (the board manifest sets them). With neither pin set, or without Pi GPIO, the feature
/// reports itself absent and nothing else changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpioConfig {
    /// Output: on while recording, blinking after a camera error.
    pub record_led: Option<u8>,
    /// Input: a press toggles recording of the appliance camera.
    pub record_button: Option<u8>,
    /// The button pulls the pin to GND (internal pull-up); false: to 3V3 (pull-down).
    pub button_active_low: bool,
    /// The button must hold a level this long before a press or release counts.
    pub debounce_ms: u32,
    /// Half the blink period: the LED is on this long, then off this long.
    pub blink_ms: u32,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig { record_led: None, record_button: None, button_active_low: true, debounce_ms: 30, blink_ms: 250 }
    }
}

/// `[http]`: what one client may cost (see `http::serve`). The defaults hold a LAN's worth
/// of browsers and players; tests shrink the timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request head must arrive within this; also how long a keep-alive connection may
    /// sit idle between requests.
    pub header_timeout_secs: u64,
    /// A request body that sends nothing for this long fails the request.
    pub body_idle_secs: u64,
    /// A client that takes no bytes of a response for this long is dropped.
    pub write_timeout_secs: u64,
    /// Connections one port holds.
    pub max_connections_per_port: usize,
    /// Connections all five ports hold together (kept well under the open-files limit).
    pub max_connections: usize,
    /// Idle connections (half a header, or keep-alive between requests) one port holds
    /// before the oldest is closed to make room.
    pub max_idle_per_port: usize,
    /// Export and evidence downloads produced at once; more get 503 with Retry-After.
    pub max_streams: usize,
    /// At shutdown, how long in-flight requests may take to finish.
    pub shutdown_drain_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_secs: 10,
            body_idle_secs: 30,
            write_timeout_secs: 30,
            max_connections_per_port: 512,
            max_connections: 1024,
            max_idle_per_port: 64,
            max_streams: 16,
            shutdown_drain_secs: 5,
        }
    }
}

/// `[network]`: how the device names itself on the LAN, and the Wi-Fi it joins (`wifi`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// One DNS label; empty (the default) for `lucid-<first 4 hex of the device id>`.
    pub hostname: String,
    /// Answer `<hostname>.local` and advertise `_http._tcp` and `_lucid._tcp` over mDNS.
    pub mdns: bool,
    /// Wi-Fi networks from the owner's settings file (`settings`) or
    /// `PUT /api/v1/network`, PSKs already hashed; `wifi` joins them when the list is not
    /// empty and `wifi_interface` exists.
    pub wifi: Vec<WifiNetwork>,
    /// The wireless interface wpa_supplicant drives.
    pub wifi_interface: String,
    /// The wpa_supplicant binary; empty (the default): `/sbin/wpa_supplicant` (Debian's
    /// package) or `/usr/sbin/wpa_supplicant` (Buildroot's). A device without it reports
    /// Wi-Fi "unavailable".
    pub wpa_supplicant: PathBuf,
    /// The DHCP client run on the wireless interface once associated (busybox udhcpc).
    pub udhcpc: PathBuf,
    /// udhcpc's script (the image's, which also writes the DHCP time servers).
    pub udhcpc_script: PathBuf,
    /// Where the generated wpa_supplicant config (0600) and its control socket live.
    pub wifi_run_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            hostname: String::new(),
            mdns: true,
            wifi: Vec::new(),
            wifi_interface: "wlan0".into(),
            wpa_supplicant: PathBuf::new(),
            udhcpc: "/sbin/udhcpc".into(),
            udhcpc_script: "/usr/share/udhcpc/default.script".into(),
            wifi_run_dir: "/run/lucid/wifi".into(),
        }
    }
}

/// One Wi-Fi network: WPA2-PSK, the PSK as wpa_supplicant takes it (64 hex digits, the
/// PBKDF2 of passphrase and SSID), never the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WifiNetwork {
    pub ssid: String,
    /// 64 hex digits; empty for an open network.
    #[serde(default)]
    pub psk_hash: String,
    /// ISO 3166-1 alpha-2 regulatory country, e.g. "DE" (the radio's allowed channels).
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub hidden: bool,
}

/// At most this many Wi-Fi networks are kept.
pub const MAX_WIFI_NETWORKS: usize = 16;

impl WifiNetwork {
    pub fn validate(&self) -> Result<(), String> {
        if self.ssid.is_empty() || self.ssid.len() > 32 {
            return Err(format!("ssid {:?} must be 1..=32 bytes", self.ssid));
        }
        if !self.psk_hash.is_empty()
            && (self.psk_hash.len() != 64 || !self.psk_hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("psk_hash of {:?} must be 64 hex digits (as wpa_passphrase prints it)", self.ssid));
        }
        if !self.country.is_empty()
            && (self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!("country {:?} must be two capital letters (ISO 3166-1), e.g. \"DE\"", self.country));
        }
        Ok(())
    }
}

/// `[settings]`: where the owner's settings file lives (the FAT partition a PC sees).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsConfig {
    /// Directory of `lucid.toml` (and Raspberry Pi Imager's `custom.toml`), where the
    /// generated admin password is left as `lucid-password.txt`. Empty: no settings file
    /// (a host); the image sets the boot-control partition, `/boot/ctl`.
    pub dir: PathBuf,
}

/// `[time]`: where the clock comes from (see `clock`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeConfig {
    /// NTP servers (`host` or `host:port`), asked after those DHCP handed out.
    pub servers: Vec<String>,
    /// One server per line, written by the image's DHCP client script; absent: none.
    pub dhcp_servers_file: PathBuf,
    /// Step the system clock (the device, which has no RTC and no other time daemon);
    /// off on a host, where the clock belongs to the OS.
    pub set_clock: bool,
    /// Seconds between polls once synchronized.
    pub poll_secs: u64,
    /// Seconds between tries until the first answer.
    pub retry_secs: u64,
    /// IANA time zone for showing times to people (e.g. "Europe/Berlin"); records and
    /// manifests are always UTC. Empty: UTC.
    pub timezone: String,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            servers: vec!["pool.ntp.org".into()],
            dhcp_servers_file: PathBuf::from("/run/lucid/ntp-servers"),
            set_clock: false,
            poll_secs: 1024,
            retry_secs: 16,
            timezone: String::new(),
        }
    }
}

/// `[retention]`: when the device deletes old recordings by itself (see
/// `engine::retention`). Every limit is optional; with none set only the sessions' own
/// `storage_config.retention_days` apply. Locked sessions and the recording one are never
/// deleted by these rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Closed sessions that ended more than this many days ago are deleted.
    pub max_age_days: Option<u32>,
    /// The oldest closed sessions are deleted while the data partition has less than
    /// this share of its size free.
    pub keep_free_percent: Option<u8>,
    /// The oldest closed sessions are deleted while the store holds more than this many
    /// bytes (its own accounting: the sessions' value logs, not the file sizes).
    pub max_store_bytes: Option<u64>,
    /// A data session (uploaded through the Lucid services) counts as closed once it is
    /// finalized, or when nothing was written to it for this long.
    pub idle_close_seconds: u64,
    /// How often the rules are checked in the background (they are also checked before an
    /// append that would break a space limit).
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: None,
            keep_free_percent: None,
            max_store_bytes: None,
            idle_close_seconds: 3600,
            interval_ms: 10_000,
        }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, msg: &str| Err(ConfigError::Invalid { key, msg: msg.into() });
        if self.max_age_days.is_some_and(|d| !(1..=36_500).contains(&d)) {
            return bad("retention.max_age_days", "must be 1..=36500 days (leave it out for no age limit)");
        }
        if self.keep_free_percent.is_some_and(|p| !(1..=90).contains(&p)) {
            return bad("retention.keep_free_percent", "must be 1..=90 percent (leave it out for no free-space rule)");
        }
        // Below a few chunks' worth no recording could ever fit.
        if self.max_store_bytes.is_some_and(|b| b < 64 << 10) {
            return bad("retention.max_store_bytes", "must be at least 65536 (64 KiB); leave it out for no cap");
        }
        if !(1..=30 * 86_400).contains(&self.idle_close_seconds) {
            return bad("retention.idle_close_seconds", "must be 1..=2592000 (30 days)");
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return bad("retention.interval_ms", "must be 100..=3600000");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub ports: Ports,
    pub source: SourceKind,
    pub video: VideoConfig,
    /// The V4L2 camera and encoder (used when `source = "v4l2"`).
    pub camera: CameraConfig,
    pub record: RecordConfig,
    /// Bearer token for mutating routes; generated into the data dir when unset.
    #[serde(skip_serializing)]
    pub api_token: Option<String>,
    /// Origins allowed to call the API from a browser: empty (the default) for none, a
    /// comma-separated list, or `*` (any origin, never with credentials).
    pub cors_origins: String,
    /// Storage reports unhealthy below this many free bytes (an SD card is small).
    pub min_free_bytes: u64,
    /// Largest JSON request body accepted (base64 chunk uploads included).
    pub max_body_bytes: usize,
    /// Largest decoded chunk accepted from clients.
    pub max_chunk_bytes: usize,
    /// Signed A/B OTA updates.
    pub update: UpdateConfig,
    /// Record LED and button on a Raspberry Pi.
    pub gpio: GpioConfig,
    /// Timeouts and connection limits of the five HTTP services.
    pub http: HttpConfig,
    /// Host name and mDNS advertisement.
    pub network: NetworkConfig,
    /// NTP servers and whether the clock is set.
    pub time: TimeConfig,
    /// Automatic deletion of old sessions.
    pub retention: RetentionConfig,
    /// Recipient keys of the sessions' data keys.
    pub evidence: EvidenceConfig,
    /// The owner's settings file on the boot partition.
    pub settings: SettingsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./var/lucid"),
            bind: IpAddr::from([0, 0, 0, 0]),
            ports: Ports::default(),
            source: SourceKind::Test,
            video: VideoConfig::default(),
            camera: CameraConfig::default(),
            record: RecordConfig::default(),
            api_token: None,
            cors_origins: String::new(),
            min_free_bytes: 1 << 30,
            // 10 MiB decoded is the contract's chunk limit; base64 adds a third, plus JSON.
            max_body_bytes: 14 << 20,
            max_chunk_bytes: 10 << 20,
            update: UpdateConfig::default(),
            gpio: GpioConfig::default(),
            http: HttpConfig::default(),
            network: NetworkConfig::default(),
            time: TimeConfig::default(),
            retention: RetentionConfig::default(),
            evidence: EvidenceConfig::default(),
            settings: SettingsConfig::default(),
        }
    }
}

/// A time zone name as the IANA database spells them; the zone itself is the reader's
/// business (the device keeps UTC), so only the shape is checked.
fn valid_timezone(tz: &str) -> bool {
    tz.is_empty()
        || (tz.len() <= 64
            && tz
                .split('/')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))))
}

/// The device's kept settings, a partial config written by `lucidd settings` from the
/// owner's file and layered over the image's config (see `settings`).
pub const SETTINGS_OVERLAY: &str = "settings.toml";

/// Puts every key of `over` into `base`, table by table (arrays and values are replaced).
pub fn merge_tables(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Config {
    fn table_of_file(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        text.parse::<toml::Table>().map_err(|e| ConfigError::Parse { path: path.into(), msg: e.to_string() })
    }

    /// The image's config file (`file`, or the defaults) with the device's kept settings
    /// (`<data_dir>/settings.toml`) over it; `data_dir` overrides the file's. What every
    /// command runs on.
    pub fn load_layered(file: Option<&Path>, data_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let dir = match data_dir {
            Some(d) => d.to_path_buf(),
            None => Self::with_kept(file, None, &toml::Table::new())?.data_dir,
        };
        Self::with_kept(file, Some(&dir), &Self::kept_settings(&dir)?)
    }

    /// The kept settings in `data_dir` (none yet: empty). They may not move the data
    /// directory: they live in it.
    pub fn kept_settings(data_dir: &Path) -> Result<toml::Table, ConfigError> {
        let path = data_dir.join(SETTINGS_OVERLAY);
        if !path.exists() {
            return Ok(toml::Table::new());
        }
        let kept = Self::table_of_file(&path)?;
        if kept.contains_key("data_dir") {
            return Err(ConfigError::Parse { path, msg: "data_dir cannot be a kept setting".into() });
        }
        Ok(kept)
    }

    /// `file`'s config (or the defaults) with `kept` over it, in `data_dir` when given.
    /// `lucidd settings` checks a settings file's result with this before keeping it.
    pub fn with_kept(file: Option<&Path>, data_dir: Option<&Path>, kept: &toml::Table) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(p) => Self::table_of_file(p)?,
            None => toml::Table::new(),
        };
        merge_tables(&mut table, kept);
        let origin = file.unwrap_or(Path::new("(defaults)"));
        let mut c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin.into(), msg: e.to_string() })?;
        if let Some(d) = data_dir {
            c.data_dir = d.to_path_buf();
        }
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = &self.video;
        let bad = |key, msg: &str| Err(ConfigError::Invalid { key, msg: msg.into() });
        if v.width < 16
            || v.height < 16
            || !v.width.is_multiple_of(2)
            || !v.height.is_multiple_of(2)
            || v.width > 3840
            || v.height > 2160
        {
            return bad("video.width/height", "must be even, between 16x16 and 3840x2160");
        }
        if !(1..=120).contains(&v.fps) {
            return bad("video.fps", "must be 1..=120");
        }
        if !(1_000..=50_000_000).contains(&v.bitrate_bps) {
            return bad("video.bitrate_bps", "must be 1000..=50000000");
        }
        if !(100..=60_000).contains(&v.keyframe_interval_ms) {
            return bad("video.keyframe_interval_ms", "must be 100..=60000");
        }
        self.camera.validate(self.source)?;
        let r = &self.record;
        if !(100..=60_000).contains(&r.chunk_target_ms) {
            return bad("record.chunk_target_ms", "must be 100..=60000");
        }
        if r.compress_min_saving_pct > 100 {
            return bad("record.compress_min_saving_pct", "must be 0..=100");
        }
        if !(1..=19).contains(&r.zstd_level) {
            return bad("record.zstd_level", "must be 1..=19");
        }
        if r.checkpoint_every_chunks == 0 || r.checkpoint_every_secs == 0 {
            return bad("record.checkpoint_every_*", "must be at least 1");
        }
        if !(MIN_SEGMENT_SECONDS..=MAX_SEGMENT_SECONDS).contains(&r.segment_seconds) {
            return bad("record.segment_seconds", "must be 2..=86400 (seconds of one continuous segment)");
        }
        if !(1..=3600).contains(&r.restart_secs) {
            return bad("record.restart_secs", "must be 1..=3600 (seconds before continuous recording is tried again)");
        }
        let p = &self.ports;
        let mut all = [p.pipeline, p.recorder, p.processor, p.storage, p.gateway];
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1] && w[0] != 0) {
            return bad("ports", "the five services need five different ports");
        }
        if self.max_chunk_bytes == 0 || self.max_chunk_bytes > 64 << 20 {
            // Larger client chunks are split into several sealed parts; 64 MiB bounds the
            // memory one request may pin on a 1 GiB Pi.
            return bad("max_chunk_bytes", "must be 1..=64 MiB");
        }
        if self.max_body_bytes < self.max_chunk_bytes {
            return bad("max_body_bytes", "must be at least max_chunk_bytes");
        }
        let u = &self.update;
        if u.boot_control != BootControlKind::None {
            if u.slots.is_none() {
                return bad("update.slots", "must name the A and B devices when boot_control is set");
            }
            if u.board.is_empty() || u.board.chars().any(|c| c.is_whitespace() || c == '+') {
                return bad("update.board", "must be a board name without whitespace or '+'");
            }
            if !(1..=3600).contains(&u.self_check_timeout_secs) {
                return bad("update.self_check_timeout_secs", "must be 1..=3600");
            }
        }
        let h = &self.http;
        if [h.header_timeout_secs, h.body_idle_secs, h.write_timeout_secs].iter().any(|t| !(1..=3600).contains(t)) {
            return bad("http.*_secs", "timeouts must be 1..=3600 seconds");
        }
        if h.max_connections_per_port == 0 || h.max_connections == 0 || h.max_idle_per_port == 0 || h.max_streams == 0 {
            return bad("http.max_*", "limits must be at least 1");
        }
        if h.max_connections > 60_000 || h.max_streams > 256 {
            return bad("http.max_connections/max_streams", "at most 60000 connections and 256 streams");
        }
        if !self.network.hostname.is_empty()
            && let Err(e) = crate::discovery::check_hostname(&self.network.hostname)
        {
            return bad("network.hostname", &e.to_string());
        }
        let t = &self.time;
        if t.servers.len() > 8
            || t.servers.iter().any(|s| s.is_empty() || s.len() > 253 || s.contains(char::is_whitespace))
        {
            return bad("time.servers", "at most 8 host names or addresses, each 1..=253 characters without spaces");
        }
        if !(16..=86_400).contains(&t.poll_secs) || !(1..=3600).contains(&t.retry_secs) {
            return bad("time.poll_secs/retry_secs", "poll_secs must be 16..=86400 and retry_secs 1..=3600");
        }
        if !valid_timezone(&t.timezone) {
            return bad(
                "time.timezone",
                "an IANA zone name such as \"Europe/Berlin\" (letters, digits, _ + - /; at most 64)",
            );
        }
        if self.network.wifi.len() > MAX_WIFI_NETWORKS {
            return bad("network.wifi", &format!("at most {MAX_WIFI_NETWORKS} networks"));
        }
        for w in &self.network.wifi {
            w.validate().map_err(|msg| ConfigError::Invalid { key: "network.wifi", msg })?;
        }
        let g = &self.gpio;
        // BCM 0..=27 are the GPIOs on the 40-pin header of every supported Pi.
        if g.record_led.is_some_and(|p| p > 27) || g.record_button.is_some_and(|p| p > 27) {
            return bad("gpio.record_led/record_button", "must be a header BCM GPIO number, 0..=27");
        }
        if g.record_led.is_some() && g.record_led == g.record_button {
            return bad("gpio.record_led/record_button", "the LED and the button need two different pins");
        }
        if !(1..=1000).contains(&g.debounce_ms) {
            return bad("gpio.debounce_ms", "must be 1..=1000");
        }
        if !(20..=10_000).contains(&g.blink_ms) {
            return bad("gpio.blink_ms", "must be 20..=10000");
        }
        self.retention.validate()?;
        self.evidence.validate()
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("lucid.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_checked_one_by_one() {
        let good = "age1pf60hpr2q5jz7wk39tft3g9g8vdjtq6ssxwyuadznrejg8whe5fsxr45fc";
        let ok = EvidenceConfig { recipients: vec![good.into()], device_can_decrypt: false };
        assert!(ok.validate().is_ok());
        let bad = EvidenceConfig { recipients: vec![good.into(), "age1nope".into()], device_can_decrypt: true };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("evidence.recipients[1]") && e.contains("age1nope"), "{e}");
        let none = EvidenceConfig { recipients: vec![], device_can_decrypt: false };
        assert!(none.validate().unwrap_err().to_string().contains("evidence.device_can_decrypt"));
    }

    #[test]
    fn camera_nodes_are_canonical_video_paths() {
        for ok in ["/dev/video0", "/dev/video11", "/dev/video255"] {
            assert!(is_video_node(ok), "{ok}");
        }
        for bad in [
            "/dev/video",
            "/dev/video00",
            "/dev/video01",
            "/dev/video1234",
            "/dev/video0/",
            "/dev/video0x",
            "/dev/video-1",
            "/dev/../dev/video0",
            "/dev/./video0",
            "/dev//video0",
            "/dev/v4l/by-id/usb-cam-video-index0",
            "/dev/sda",
            "/dev/media0",
            "video0",
            "/tmp/video0",
        ] {
            assert!(!is_video_node(bad), "{bad}");
            let cam = CameraConfig { device: bad.into(), ..CameraConfig::default() };
            assert!(cam.validate(SourceKind::V4l2).is_err(), "{bad}");
            let enc = CameraConfig { encoder_device: bad.into(), ..CameraConfig::default() };
            assert!(enc.validate(SourceKind::V4l2).is_err(), "{bad}");
        }
        assert!(CameraConfig::default().validate(SourceKind::V4l2).is_ok());
        let cam = CameraConfig { device: "/dev/video2".into(), ..CameraConfig::default() };
        assert!(cam.validate(SourceKind::V4l2).is_ok());
    }

    #[test]
    fn retention_limits_are_checked_with_their_key() {
        assert!(RetentionConfig::default().validate().is_ok());
        let key = |r: RetentionConfig| match r.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let d = RetentionConfig::default;
        assert_eq!(key(RetentionConfig { max_age_days: Some(0), ..d() }), "retention.max_age_days");
        assert_eq!(key(RetentionConfig { keep_free_percent: Some(95), ..d() }), "retention.keep_free_percent");
        assert_eq!(key(RetentionConfig { max_store_bytes: Some(1000), ..d() }), "retention.max_store_bytes");
        assert_eq!(key(RetentionConfig { idle_close_seconds: 0, ..d() }), "retention.idle_close_seconds");
        assert_eq!(key(RetentionConfig { interval_ms: 10, ..d() }), "retention.interval_ms");
        let ok = RetentionConfig {
            max_age_days: Some(7),
            keep_free_percent: Some(10),
            max_store_bytes: Some(128 << 20),
            ..d()
        };
        assert!(ok.validate().is_ok());
        let toml = "[retention]\nmax_age_days = 7\nmax_store_bytes = 134217728\n";
        let c: Config = toml::from_str(toml).unwrap();
        assert_eq!((c.retention.max_age_days, c.retention.max_store_bytes), (Some(7), Some(128 << 20)));
        assert_eq!(c.retention.idle_close_seconds, 3600);
    }
}
