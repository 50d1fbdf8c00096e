//! The admin password: its hash format, checking it, storing it, and the generated one.
//!
//! Owns `<data dir>/keys/admin-password` (one line, 0600) and the string format
//! `$pbkdf2-sha512$i=ITER$SALT$HASH` (PHC style, base64 without padding). It must never
//! log a password or a hash, and never keep a plaintext password anywhere.
//!
//! Why PBKDF2-HMAC-SHA512 at 210 000 iterations: it is what OWASP's password storage
//! guidance gives for PBKDF2, `ring` (already the daemon's one crypto crate) implements
//! it, and it costs a Pi a fraction of a second per login. A memory-hard hash (Argon2)
//! would be stronger against GPUs; the iteration count is in the string, so a later
//! firmware can raise it or change the function and still read old hashes.
//!
//! Why a generated password at all: a device on a shelf has no console anyone reads. It
//! is shown on the console and left on the boot partition (`lucid-password.txt`) for an
//! owner who can read the card; anyone else who can read the card can too, which is why
//! the file goes away as soon as the admin sets a password of their own.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations of a new hash.
pub const ITERATIONS: u32 = 210_000;
/// Shortest and longest password accepted (NIST SP 800-63B: at least 8; a bound on the
/// work an attacker can make one login do).
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;
/// Where the generated password is left for the owner, beside the settings file.
pub const GENERATED_FILE: &str = "lucid-password.txt";
const ALGORITHM: &str = "pbkdf2-sha512";
/// Letters and digits a person reads off a screen or a file without confusing them
/// (no 0/o, 1/l/i): 31 symbols, 16 of them give 79 bits.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password must be {MIN_LEN}..={MAX_LEN} bytes")]
    Length,
    #[error("not a password hash this firmware reads (expected $pbkdf2-sha512$i=N$SALT$HASH)")]
    Format,
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("the system random source failed")]
    Rng,
}

pub fn check_len(password: &str) -> Result<(), PasswordError> {
    if (MIN_LEN..=MAX_LEN).contains(&password.len()) { Ok(()) } else { Err(PasswordError::Length) }
}

/// A new hash of `password` with a random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    check_len(password)?;
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt).map_err(|_| PasswordError::Rng)?;
    Ok(hash_with(password, &salt, ITERATIONS))
}

fn hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 64];
    let n = NonZeroU32::new(iterations).expect("iterations > 0");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA512, n, salt, password.as_bytes(), &mut out);
    format!("${ALGORITHM}$i={iterations}${}${}", B64.encode(salt), B64.encode(out))
}

struct Parsed {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn parse(s: &str) -> Result<Parsed, PasswordError> {
    let mut parts = s.trim().split('$');
    let (Some(""), Some(ALGORITHM), Some(i), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PasswordError::Format);
    };
    let iterations = i
        .strip_prefix("i=")
        .and_then(|n| n.parse::<u32>().ok())
        // A hash from a file must not make one login run for minutes.
        .filter(|n| (1_000..=10_000_000).contains(n))
        .and_then(NonZeroU32::new)
        .ok_or(PasswordError::Format)?;
    let salt = B64.decode(salt).map_err(|_| PasswordError::Format)?;
    let hash = B64.decode(hash).map_err(|_| PasswordError::Format)?;
    if salt.len() < 8 || hash.len() != 64 {
        return Err(PasswordError::Format);
    }
    Ok(Parsed { iterations, salt, hash })
}

/// Checks the shape of a hash given by an imaging tool (`admin_password_hash`).
pub fn check_hash(s: &str) -> Result<(), PasswordError> {
    parse(s).map(|_| ())
}

/// Whether `password` matches `stored` (constant time in the comparison).
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_LEN {
        return false;
    }
    match parse(stored) {
        Ok(p) => {
            pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA512, p.iterations, &p.salt, password.as_bytes(), &p.hash).is_ok()
        }
        Err(_) => false,
    }
}

/// A password for a person to type: 16 symbols in four groups, `abcd-efgh-jkmn-pqrs`.
pub fn generate() -> Result<String, PasswordError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(19);
    let mut n = 0;
    while n < 16 {
        let mut b = [0u8; 1];
        rng.fill(&mut b).map_err(|_| PasswordError::Rng)?;
        // Rejection sampling keeps every symbol equally likely: 248 = 8 * 31.
        if b[0] >= 248 {
            continue;
        }
        if n > 0 && n % 4 == 0 {
            out.push('-');
        }
        out.push(ALPHABET[(b[0] % 31) as usize] as char);
        n += 1;
    }
    Ok(out)
}

fn stored_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("admin-password")
}

/// The stored hash, if the device has an admin password.
pub fn stored(data_dir: &Path) -> Result<Option<String>, PasswordError> {
    Ok(crate::keys::read_secret(&stored_path(data_dir))?.map(|b| String::from_utf8_lossy(&b).trim().to_owned()))
}

/// Replaces the stored hash (atomically: temp file, fsync, rename).
pub fn store(data_dir: &Path, hash: &str) -> Result<(), PasswordError> {
    check_hash(hash)?;
    crate::keys::keys_dir(data_dir)?;
    crate::keys::write_secret(&stored_path(data_dir), format!("{hash}\n").as_bytes())?;
    Ok(())
}

/// The text of `lucid-password.txt`.
pub fn generated_file_text(hostname: &str, password: &str) -> String {
    format!(
        "Lucid admin password of {hostname}: {password}\n\
         \n\
         The device made it at its first boot because lucid.toml named none. Anyone who can\n\
         read this card can read it: sign in at http://{hostname}.local/ and set your own\n\
         password (PUT /api/v1/admin/password); the device then deletes this file.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_with("correct horse", b"0123456789abcdef", 1_000);
        assert!(h.starts_with("$pbkdf2-sha512$i=1000$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("", &h));
        let mut tampered = h.clone();
        tampered.pop();
        tampered.push(if h.ends_with('A') { 'B' } else { 'A' });
        assert!(!verify("correct horse", &tampered));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "plain",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha512$i=10$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha512$i=99999999999$c2FsdHNhbHQ$aGFzaA",
            "$pbkdf2-sha512$i=1000$!!$aGFzaA",
            "$pbkdf2-sha512$i=1000$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(check_hash(bad).is_err(), "{bad}");
            assert!(!verify("whatever1", bad), "{bad}");
        }
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(matches!(hash("short"), Err(PasswordError::Length)));
        assert!(matches!(hash(&"x".repeat(MAX_LEN + 1)), Err(PasswordError::Length)));
    }

    #[test]
    fn generated_passwords_are_readable_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 19);
        assert!(a.split('-').all(|g| g.len() == 4 && g.bytes().all(|c| ALPHABET.contains(&c))), "{a}");
        check_len(&a).unwrap();
    }
}
