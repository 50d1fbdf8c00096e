//! How a device is found on the LAN: its host name and its mDNS/DNS-SD advertisement.
//!
//! Owns the default host name (`lucid-` + the first four hex digits of the device id, so
//! two devices on one network differ without anyone typing a name), the validation of a
//! configured one, and the responder that answers `<hostname>.local` and advertises two
//! services on the gateway port: `_http._tcp` (the web app, what a browser's or a phone's
//! service list shows) and `_lucid._tcp` (TXT `id`, `version`, `api`, for tools that look
//! for Lucid devices and must tell them apart before connecting).
//!
//! It must not advertise anything secret: the TXT record holds the device id (already
//! public: it is the origin of every checkpoint the device signs), the firmware version
//! and the API's base path — never a token, key or session. It does not set the kernel's
//! host name or talk to DHCP: the image's init does that with `lucidd hostname` before the
//! network comes up, so DHCP and mDNS announce the same name.

use std::collections::HashMap;

use mdns_sd::{ServiceDaemon, ServiceInfo};

/// The service type of the Lucid API, for clients that look for Lucid devices.
pub const LUCID_SERVICE: &str = "_lucid._tcp.local.";
/// The service type browsers and phones list web interfaces under.
pub const HTTP_SERVICE: &str = "_http._tcp.local.";
/// Base path of the API, advertised as TXT `api`.
pub const API_BASE: &str = "/api/v1";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("host name {name:?}: {why}")]
    BadHostname { name: String, why: &'static str },
    #[error("mDNS responder: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// The host name the device uses: the configured one, or `lucid-<first 4 hex of the
/// device id>` (`lucid-3f2a` for `lucid-3f2a9c…`). The device id is derived from the
/// device key, so the default is stable across restarts and updates, and differs between
/// devices with a chance of 1 in 65 536 per pair (a collision is still resolved by mDNS's
/// own conflict rules, which rename the later one).
pub fn hostname(configured: &str, device_id: &str) -> Result<String, DiscoveryError> {
    if !configured.is_empty() {
        check_hostname(configured)?;
        return Ok(configured.to_ascii_lowercase());
    }
    let hex = device_id.strip_prefix("lucid-").unwrap_or(device_id);
    let short: String = hex.chars().filter(char::is_ascii_hexdigit).take(4).collect();
    let name = format!("lucid-{}", short.to_ascii_lowercase());
    check_hostname(&name)?;
    Ok(name)
}

/// One DNS label (RFC 1123): 1–63 letters, digits and hyphens, not starting or ending
/// with a hyphen. A single label, because `.local` is appended and DHCP sends it as is.
pub fn check_hostname(name: &str) -> Result<(), DiscoveryError> {
    let bad = |why| Err(DiscoveryError::BadHostname { name: name.to_owned(), why });
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("may only hold letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    Ok(())
}

/// The running responder; dropping it (or [`Advertiser::stop`]) withdraws the services
/// with goodbye packets, so browsers forget the device at once rather than after the TTL.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullnames: Vec<String>,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser").field("services", &self.fullnames).finish()
    }
}

/// What one device advertises.
#[derive(Debug, Clone)]
pub struct Advert {
    pub hostname: String,
    pub device_id: String,
    pub version: String,
    /// The gateway port (the web app and the appliance API).
    pub port: u16,
}

impl Advert {
    /// The TXT record of `_lucid._tcp`.
    pub fn txt(&self) -> HashMap<String, String> {
        HashMap::from([
            ("id".to_owned(), self.device_id.clone()),
            ("version".to_owned(), self.version.clone()),
            ("api".to_owned(), API_BASE.to_owned()),
        ])
    }
}

impl Advertiser {
    /// Starts the responder on every non-loopback interface (addresses follow the
    /// interfaces as DHCP or Wi-Fi change them) and registers both services.
    pub fn start(ad: &Advert) -> Result<Advertiser, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        let host = format!("{}.local.", ad.hostname);
        let mut fullnames = Vec::new();
        for (ty, txt) in
            [(LUCID_SERVICE, ad.txt()), (HTTP_SERVICE, HashMap::from([("path".to_owned(), "/".to_owned())]))]
        {
            let info = ServiceInfo::new(ty, &ad.hostname, &host, "", ad.port, txt)?.enable_addr_auto();
            fullnames.push(info.get_fullname().to_owned());
            daemon.register(info)?;
        }
        tracing::info!(host = %host, port = ad.port, "advertising over mDNS: {LUCID_SERVICE} {HTTP_SERVICE}");
        Ok(Advertiser { daemon, fullnames })
    }

    /// Withdraws the services and stops the responder's thread.
    pub fn stop(self) {
        for name in &self.fullnames {
            // Wait briefly for the goodbye packets to leave; a failure only means
            // browsers forget the device after the record's TTL instead of at once.
            if let Ok(rx) = self.daemon.unregister(name) {
                let _ = rx.recv_timeout(std::time::Duration::from_millis(500));
            }
        }
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_comes_from_the_device_id() {
        assert_eq!(hostname("", "lucid-3F2a9c0011223344").unwrap(), "lucid-3f2a");
        assert_eq!(hostname("Garage-Cam", "lucid-3f2a9c0011223344").unwrap(), "garage-cam");
    }

    #[test]
    fn a_configured_name_must_be_one_dns_label() {
        for bad in ["", "-cam", "cam-", "cam.local", "cam_1", "cäm", &"a".repeat(64), "two words"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
        for ok in ["a", "lucid-3f2a", "CAM-01", &"a".repeat(63)] {
            assert!(check_hostname(ok).is_ok(), "{ok:?}");
        }
    }
}
