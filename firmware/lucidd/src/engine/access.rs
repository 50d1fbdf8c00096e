//! Credentials and roles: who a request is, never which route it may call.
//!
//! Owns the admin token, the named viewer tokens (kept only as SHA-256 hashes, persisted in
//! the store's meta table) and the key that signs short-lived media URLs. The HTTP layer
//! asks `identify` / `check_share` and applies its one allow-list (`http::auth`); this
//! module must not know routes, and must never log or return a secret except the one time
//! a new viewer token is handed to the admin who created it.
//!
//! Why hashes: a stolen card or a store dump must not yield a working viewer token, and a
//! token is 192 random bits, so an unsalted SHA-256 is enough (nothing to brute-force).

use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, Result};
use crate::util::{hex, now_rfc3339};

/// Meta-table key of the viewer tokens (a JSON list of `TokenRow`).
const VIEWER_TOKENS: &str = "viewer_tokens";
/// A device keeps at most this many named tokens: the list is scanned per request.
pub const MAX_TOKENS: usize = 64;
/// Longest and shortest life of a share URL.
pub const SHARE_TTL_MAX_SECS: u64 = 7 * 24 * 3600;
pub const SHARE_TTL_MIN_SECS: u64 = 10;
pub const SHARE_TTL_DEFAULT_SECS: u64 = 3600;
/// Prefix of viewer tokens, so a leaked one is recognisable in a scan of logs or code.
const TOKEN_PREFIX: &str = "lucidv_";

/// What a credential may do. Ordered: an admin may do everything a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
}

/// Who sent a request, once its credential checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The device's API token (old Lucid clients send it as `JWT_SECRET_KEY`).
    Admin,
    /// A named viewer token, by id.
    Viewer { token_id: String },
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin => Role::Admin,
            Principal::Viewer { .. } => Role::Viewer,
        }
    }
}

/// A stored viewer token: never the secret, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    /// Hex SHA-256 of the whole token string.
    sha256: String,
}

impl TokenRow {
    /// The listing shape: everything but the hash.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at})
    }
}

/// The credentials of one device.
pub struct Access {
    admin_token: String,
    url_key: hmac::Key,
    viewers: RwLock<Vec<TokenRow>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

fn sha256_hex(s: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

/// Constant-time equality, so a token cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The signed text of a share URL: versioned, bound to one session and one expiry.
fn share_message(session_id: &str, expires_unix: u64) -> String {
    format!("lucid-share-v1\n{session_id}\n{expires_unix}")
}

impl Access {
    pub fn new(admin_token: String, url_key: &[u8; 32], viewers: Vec<TokenRow>) -> Access {
        Access { admin_token, url_key: hmac::Key::new(hmac::HMAC_SHA256, url_key), viewers: RwLock::new(viewers) }
    }

    /// Whom a bearer token belongs to, if anyone.
    pub fn identify(&self, bearer: &str) -> Option<Principal> {
        if same(bearer.as_bytes(), self.admin_token.as_bytes()) {
            return Some(Principal::Admin);
        }
        if !bearer.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let h = sha256_hex(bearer);
        let viewers = self.viewers.read().unwrap_or_else(|p| p.into_inner());
        // Every row is compared, found or not, so the scan's time says nothing.
        let mut found = None;
        for row in viewers.iter() {
            if same(h.as_bytes(), row.sha256.as_bytes()) {
                found = Some(row.id.clone());
            }
        }
        found.map(|token_id| Principal::Viewer { token_id })
    }

    /// Signs a media URL for `session_id` valid until `expires_unix`: `(exp, sig)`.
    pub fn sign_share(&self, session_id: &str, expires_unix: u64) -> String {
        B64URL.encode(hmac::sign(&self.url_key, share_message(session_id, expires_unix).as_bytes()).as_ref())
    }

    /// Whether `sig` signs `session_id` until `expires_unix`, and that time is still ahead.
    pub fn check_share(&self, session_id: &str, expires_unix: u64, sig: &str, now_unix: u64) -> bool {
        if expires_unix < now_unix || expires_unix > now_unix.saturating_add(SHARE_TTL_MAX_SECS) {
            return false;
        }
        let Ok(tag) = B64URL.decode(sig) else {
            return false;
        };
        hmac::verify(&self.url_key, share_message(session_id, expires_unix).as_bytes(), &tag).is_ok()
    }
}

/// Loads the stored viewer tokens (empty on a new device).
pub(super) fn load(store: &crate::store::Store) -> Result<Vec<TokenRow>> {
    Ok(store.get_setting::<Vec<TokenRow>>(VIEWER_TOKENS)?.unwrap_or_default())
}

/// A new token as handed to its creator, the only time the secret is shown.
#[derive(Debug, Serialize)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub token: String,
    pub created_at: String,
}

/// Serialises password changes: two at once must not both check the old hash.
static PASSWORD_CHANGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Engine {
    /// Whether the device has an admin password (from the settings file, generated at
    /// first boot, or set here).
    pub fn has_admin_password(&self) -> bool {
        matches!(crate::password::stored(&self.cfg.data_dir), Ok(Some(_)))
    }

    /// Replaces the admin password. `current` must match the stored one when there is
    /// one (the caller already holds the admin token; the password is what a browser
    /// signs in with, so changing it asks for it, as every sign-in page does). Then the
    /// generated password's file on the boot partition, readable by anyone with the card,
    /// is deleted. Returns whether that file was there.
    pub fn change_admin_password(&self, current: Option<&str>, new: &str) -> Result<bool> {
        use crate::password;
        let _one = PASSWORD_CHANGE.lock().unwrap_or_else(|p| p.into_inner());
        password::check_len(new).map_err(|e| EngineError::BadInput(format!("new_password: {e}")))?;
        let stored = password::stored(&self.cfg.data_dir).map_err(|e| EngineError::Internal(e.to_string()))?;
        if let Some(h) = stored {
            match current {
                Some(c) if password::verify(c, &h) => {}
                Some(_) => return Err(EngineError::BadInput("current_password does not match".into())),
                None => return Err(EngineError::BadInput("current_password is required".into())),
            }
        }
        let hash = password::hash(new).map_err(|e| EngineError::Internal(e.to_string()))?;
        password::store(&self.cfg.data_dir, &hash).map_err(|e| EngineError::Internal(e.to_string()))?;
        let removed = crate::settings::remove_generated_password(&self.cfg.settings.dir)
            .map_err(|e| EngineError::Internal(format!("the password changed, but {e}")))?;
        tracing::info!(removed_generated_file = removed, "admin password changed");
        Ok(removed)
    }

    /// Creates a named viewer token; the secret is returned once and stored only hashed.
    pub fn create_token(&self, name: &str, role: Role) -> Result<NewToken> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(EngineError::BadInput("name must be 1-64 printable characters".into()));
        }
        if role != Role::Viewer {
            // The admin credential is the device's API token; named tokens are for viewers.
            return Err(EngineError::BadInput("named tokens have the role \"viewer\"".into()));
        }
        let mut raw = [0u8; 24];
        SystemRandom::new().fill(&mut raw).map_err(|_| EngineError::Internal("system random source failed".into()))?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&raw));
        let row = TokenRow {
            id: crate::util::short_id("tok"),
            name: name.to_owned(),
            role,
            created_at: now_rfc3339(),
            sha256: sha256_hex(&token),
        };
        let mut viewers = self.access.viewers.write().unwrap_or_else(|p| p.into_inner());
        if viewers.len() >= MAX_TOKENS {
            return Err(EngineError::Conflict(format!("a device keeps at most {MAX_TOKENS} tokens: revoke one first")));
        }
        if viewers.iter().any(|r| r.name == row.name) {
            return Err(EngineError::Conflict(format!("a token named {:?} exists", row.name)));
        }
        let mut next = viewers.clone();
        next.push(row.clone());
        // Durable first: a token that works must survive a restart, and one that was never
        // stored must not work.
        self.store().put_setting(VIEWER_TOKENS, &next)?;
        *viewers = next;
        tracing::info!(token_id = %row.id, name = %row.name, "viewer token created");
        Ok(NewToken { id: row.id, name: row.name, role: row.role, token, created_at: row.created_at })
    }

    pub fn list_tokens(&self) -> Vec<TokenRow> {
        self.access.viewers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Revokes a token at once: the next request that carries it is refused.
    pub fn revoke_token(&self, id: &str) -> Result<()> {
        let mut viewers = self.access.viewers.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<TokenRow> = viewers.iter().filter(|r| r.id != id).cloned().collect();
        if next.len() == viewers.len() {
            return Err(EngineError::NotFound { what: "token", id: id.to_owned() });
        }
        self.store().put_setting(VIEWER_TOKENS, &next)?;
        *viewers = next;
        tracing::info!(token_id = %id, "viewer token revoked");
        Ok(())
    }

    /// A signed media URL query (`exp=…&sig=…`) for a camera session, valid `ttl` seconds.
    pub fn share(&self, session_id: &str, ttl_secs: u64, now_unix: u64) -> Result<(u64, String)> {
        if !(SHARE_TTL_MIN_SECS..=SHARE_TTL_MAX_SECS).contains(&ttl_secs) {
            return Err(EngineError::BadInput(format!(
                "ttl_seconds must be {SHARE_TTL_MIN_SECS}..={SHARE_TTL_MAX_SECS}"
            )));
        }
        let row = self.get(session_id)?;
        if row.kind != super::Kind::Camera {
            return Err(EngineError::BadInput(format!("session {session_id} holds uploaded data, not video")));
        }
        let exp = now_unix + ttl_secs;
        Ok((exp, self.access.sign_share(session_id, exp)))
    }

    pub fn access(&self) -> &Access {
        &self.access
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new("admin-secret".into(), &[7u8; 32], Vec::new())
    }

    #[test]
    fn admin_token_identifies_and_others_do_not() {
        let a = access();
        assert_eq!(a.identify("admin-secret"), Some(Principal::Admin));
        assert_eq!(a.identify("admin-secret "), None);
        assert_eq!(a.identify(""), None);
        assert_eq!(a.identify("lucidv_00"), None);
    }

    #[test]
    fn share_signature_is_bound_to_session_and_expiry() {
        let a = access();
        let sig = a.sign_share("sess-1", 1_000);
        assert!(a.check_share("sess-1", 1_000, &sig, 900));
        assert!(!a.check_share("sess-2", 1_000, &sig, 900), "another session");
        assert!(!a.check_share("sess-1", 1_001, &sig, 900), "another expiry");
        assert!(!a.check_share("sess-1", 1_000, &sig, 1_001), "expired");
        assert!(!a.check_share("sess-1", 1_000, "not base64!", 900));
        let other = Access::new("admin-secret".into(), &[8u8; 32], Vec::new());
        assert!(!other.check_share("sess-1", 1_000, &sig, 900), "another device's key");
    }

    #[test]
    fn far_future_expiry_is_refused_even_if_signed() {
        let a = access();
        let exp = 10 + SHARE_TTL_MAX_SECS + 1;
        let sig = a.sign_share("s", exp);
        assert!(!a.check_share("s", exp, &sig, 10));
    }
}
