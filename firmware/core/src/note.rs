//! Signed checkpoints: the C2SP tlog-checkpoint body inside a C2SP signed note, signed
//! with Ed25519; the verifier-key text (C2SP vkey); and the device id derived from the
//! device's public key.
//!
//! It owns the note text format and the Ed25519 identity of a device. It must not store
//! keys or decide when to checkpoint (the daemon does), and the verifier must reject
//! every malformed or non-canonical note rather than guess.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::digest::{Context, SHA256, digest};
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::hex;
use crate::merkle::Hash;

/// The C2SP signature-type byte for Ed25519.
const ALG_ED25519: u8 = 0x01;
/// Signature lines start with an em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// A note with more signature lines than this is rejected (C2SP signed-note allows
/// verifiers to bound the work an attacker can cause).
const MAX_SIGNATURES: usize = 100;

/// Why a key, a note or a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name or origin that is empty or holds whitespace, control characters or '+'.
    #[error("invalid name {name:?}: must be non-empty without whitespace or '+'")]
    BadName { name: String },
    /// The PKCS#8 document is not an Ed25519 key.
    #[error("Ed25519 key rejected: {reason}")]
    BadKey { reason: String },
    /// The random number generator failed.
    #[error("random number generator failed")]
    Rng,
    /// The verifier key text is malformed.
    #[error("malformed verifier key: {reason}")]
    BadVkey { reason: &'static str },
    /// The note text is not a well-formed signed note.
    #[error("malformed signed note: {reason}")]
    Malformed { reason: &'static str },
    /// The note body is not a canonical checkpoint.
    #[error("malformed checkpoint: {reason}")]
    BadCheckpoint { reason: &'static str },
    /// No signature line from this verifier's key.
    #[error("no signature by {name}")]
    NoSignature { name: String },
    /// A signature from this verifier's key (or a detached one) does not verify.
    #[error("signature by {name} does not verify")]
    BadSignature { name: String },
}

/// Checks a key name or checkpoint origin: non-empty, no whitespace, no control
/// characters, no '+' (which separates vkey fields).
pub fn validate_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+') {
        return Err(NoteError::BadName { name: name.to_owned() });
    }
    Ok(())
}

/// The C2SP key id: the first 4 bytes of SHA-256(name ‖ '\n' ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public_key);
    let mut id = [0u8; 4];
    id.copy_from_slice(&ctx.finish().as_ref()[..4]);
    id
}

/// The device id: `"lucid-"` and the first 8 bytes of SHA-256(public key) in lowercase
/// hex. Derived, never configured, so it cannot be claimed without the key.
pub fn device_id_from_public_key(public_key: &[u8; 32]) -> String {
    format!("lucid-{}", hex::encode(&digest(&SHA256, public_key).as_ref()[..8]))
}

/// The checkpoint origin of a session: `lucid/<device id>/<session id>`.
pub fn session_origin(device_id: &str, session_id: &str) -> String {
    format!("lucid/{device_id}/{session_id}")
}

/// A signed tree head of one session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name: `lucid/<device id>/<session id>`.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The C2SP tlog-checkpoint body: origin, decimal size and base64 root, each
    /// followed by a newline. Lucid writes no extension lines.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses a body strictly: exactly three lines, canonical decimal, canonical base64
    /// of exactly 32 bytes. Extension lines are rejected because Lucid never writes
    /// them, so their presence means the note is not ours.
    fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        let bad = |reason| NoteError::BadCheckpoint { reason };
        let text = body.strip_suffix('\n').ok_or(bad("body does not end with a newline"))?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(bad("body is not exactly origin, size and root lines"));
        };
        validate_name(origin).map_err(|_| bad("origin is empty or has whitespace or '+'"))?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("size is not a decimal number"));
        }
        if size.len() > 1 && size.starts_with('0') {
            return Err(bad("size has a leading zero"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size does not fit in 64 bits"))?;
        let raw = B64.decode(root).map_err(|_| bad("root is not standard base64"))?;
        let root: Hash = raw.as_slice().try_into().map_err(|_| bad("root is not 32 bytes"))?;
        if B64.encode(root) != lines[2] {
            return Err(bad("root base64 is not canonical"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }
}

/// The size line of a note's body, without verifying anything: for writers that file
/// notes they produced themselves.
pub(crate) fn unverified_size(note: &str) -> Result<u64, NoteError> {
    let (body, _) = split_note(note)?;
    Ok(Checkpoint::parse_body(body)?.size)
}

/// A signing identity: a key name and an Ed25519 key pair.
pub struct Signer {
    name: String,
    keypair: Ed25519KeyPair,
    public_key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("vkey", &self.vkey()).finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh Ed25519 key as a PKCS#8 v2 document, for the daemon to store.
    pub fn generate_pkcs8(rng: &dyn SecureRandom) -> Result<Vec<u8>, NoteError> {
        Ed25519KeyPair::generate_pkcs8(rng).map(|d| d.as_ref().to_vec()).map_err(|_| NoteError::Rng)
    }

    /// A signer named `name` from a PKCS#8 (v1 or v2) Ed25519 document.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Signer, NoteError> {
        validate_name(name)?;
        let keypair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| NoteError::BadKey { reason: e.to_string() })?;
        let public_key: [u8; 32] = keypair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::BadKey { reason: "public key is not 32 bytes".into() })?;
        Ok(Signer { name: name.to_owned(), keypair, public_key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The C2SP key id of this name and key.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.public_key)
    }

    /// The verifier key text: `<name>+<key id hex>+<base64(0x01 ‖ public key)>`.
    pub fn vkey(&self) -> String {
        self.verifier().vkey()
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier { name: self.name.clone(), public_key: self.public_key }
    }

    /// A detached Ed25519 signature over `msg` (used for manifests).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.keypair.sign(msg).as_ref());
        sig
    }
}

/// Signs a checkpoint as a C2SP signed note: body, blank line, and one signature line
/// `— <name> <base64(key id ‖ signature)>`.
pub fn sign_checkpoint(checkpoint: &Checkpoint, signer: &Signer) -> Result<String, NoteError> {
    validate_name(&checkpoint.origin)?;
    let body = checkpoint.body();
    let sig = signer.sign(body.as_bytes());
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&signer.key_id());
    blob.extend_from_slice(&sig);
    Ok(format!("{body}\n{SIG_PREFIX}{} {}\n", signer.name, B64.encode(blob)))
}

/// Splits a signed note into its body (with its final newline) and signature block.
fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    let bad = |reason| NoteError::Malformed { reason };
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("control character other than newline"));
    }
    // The body's lines are never empty, so the last blank line separates the body from
    // the signatures.
    let split = note.rfind("\n\n").ok_or(bad("no blank line before the signatures"))?;
    let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
    if sigs.is_empty() {
        return Err(bad("no signature lines"));
    }
    if !sigs.ends_with('\n') {
        return Err(bad("signature block does not end with a newline"));
    }
    Ok((body, sigs))
}

/// One parsed signature line.
struct SigLine<'a> {
    name: &'a str,
    key_id: [u8; 4],
    sig: Vec<u8>,
}

fn parse_sig_lines(sigs: &str) -> Result<Vec<SigLine<'_>>, NoteError> {
    let bad = |reason| NoteError::Malformed { reason };
    let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(bad("too many signature lines"));
    }
    lines
        .into_iter()
        .map(|line| {
            let rest = line.strip_prefix(SIG_PREFIX).ok_or(bad("signature line does not start with an em dash"))?;
            let (name, b64) = rest.split_once(' ').ok_or(bad("signature line has no key name"))?;
            validate_name(name).map_err(|_| bad("signature key name is invalid"))?;
            let blob = B64.decode(b64).map_err(|_| bad("signature is not standard base64"))?;
            if blob.len() < 5 {
                return Err(bad("signature is shorter than a key id and one byte"));
            }
            let mut key_id = [0u8; 4];
            key_id.copy_from_slice(&blob[..4]);
            Ok(SigLine { name, key_id, sig: blob[4..].to_vec() })
        })
        .collect()
}

/// A verifying identity: a key name and an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    public_key: [u8; 32],
}

impl Verifier {
    /// A verifier from a name and public key.
    pub fn from_public_key(name: &str, public_key: [u8; 32]) -> Result<Verifier, NoteError> {
        validate_name(name)?;
        Ok(Verifier { name: name.to_owned(), public_key })
    }

    /// Parses verifier key text `<name>+<8 hex key id>+<base64(0x01 ‖ public key)>`,
    /// checking that the key id matches the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Verifier, NoteError> {
        let bad = |reason| NoteError::BadVkey { reason };
        // The name and key id cannot contain '+', but standard base64 can: split at the
        // first two only (as Go's sumdb/note does).
        let parts: Vec<&str> = vkey.splitn(3, '+').collect();
        let [name, id_hex, key_b64] = parts[..] else {
            return Err(bad("not three '+'-separated fields"));
        };
        validate_name(name).map_err(|_| bad("invalid key name"))?;
        let key = B64.decode(key_b64).map_err(|_| bad("key is not standard base64"))?;
        if key.len() != 33 || key[0] != ALG_ED25519 {
            return Err(bad("key is not 0x01 followed by a 32-byte Ed25519 key"));
        }
        let public_key: [u8; 32] = key[1..].try_into().map_err(|_| bad("key is not 32 bytes"))?;
        if id_hex != hex::encode(&key_id(name, &public_key)) {
            return Err(bad("key id does not match the name and key"));
        }
        Ok(Verifier { name: name.to_owned(), public_key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The C2SP key id.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.public_key)
    }

    /// The verifier key text.
    pub fn vkey(&self) -> String {
        let mut key = Vec::with_capacity(33);
        key.push(ALG_ED25519);
        key.extend_from_slice(&self.public_key);
        format!("{}+{}+{}", self.name, hex::encode(&self.key_id()), B64.encode(key))
    }

    /// The device id of this key.
    pub fn device_id(&self) -> String {
        device_id_from_public_key(&self.public_key)
    }

    /// Verifies a detached Ed25519 signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), NoteError> {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(msg, sig)
            .map_err(|_| NoteError::BadSignature { name: self.name.clone() })
    }

    /// Verifies a signed checkpoint note and returns the checkpoint. Requires at least
    /// one signature line with this verifier's name and key id; every such line must
    /// verify (a bad signature from a known key is an attack, not noise). Lines from
    /// other keys are ignored, as C2SP requires, but must still be well formed.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let (body, sigs) = split_note(note)?;
        let my_id = self.key_id();
        let mut verified = false;
        for line in parse_sig_lines(sigs)? {
            if line.name == self.name && line.key_id == my_id {
                self.verify(body.as_bytes(), &line.sig)?;
                verified = true;
            }
        }
        if !verified {
            return Err(NoteError::NoSignature { name: self.name.clone() });
        }
        Checkpoint::parse_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn signer(name: &str) -> Signer {
        let rng = SystemRandom::new();
        Signer::from_pkcs8(name, &Signer::generate_pkcs8(&rng).unwrap()).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint { origin: "lucid/lucid-0011223344556677/sess-1".into(), size: 20, root: [0x5a; 32] }
    }

    #[test]
    fn round_trip_and_exact_text() {
        let s = signer("lucid-dev");
        let cp = checkpoint();
        let note = sign_checkpoint(&cp, &s).unwrap();
        let root_b64 = B64.encode([0x5a; 32]);
        let (body, rest) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{body}\n"), format!("lucid/lucid-0011223344556677/sess-1\n20\n{root_b64}\n"));
        assert!(rest.starts_with("\u{2014} lucid-dev "));
        assert!(rest.ends_with('\n'));
        let blob = B64.decode(rest.trim_end().rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(blob.len(), 68);
        assert_eq!(blob[..4], s.key_id());
        let v = Verifier::from_vkey(&s.vkey()).unwrap();
        assert_eq!(v, s.verifier());
        assert_eq!(v.verify_checkpoint(&note).unwrap(), cp);
    }

    #[test]
    fn key_id_and_vkey_match_the_spec() {
        let s = signer("example.com/device");
        let pk = s.public_key();
        let mut input = b"example.com/device".to_vec();
        input.push(0x0a);
        input.push(0x01);
        input.extend_from_slice(&pk);
        let hash = digest(&SHA256, &input);
        assert_eq!(s.key_id(), hash.as_ref()[..4]);
        let id_hex: String = hash.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        let mut typed = vec![1u8];
        typed.extend_from_slice(&pk);
        assert_eq!(s.vkey(), format!("example.com/device+{id_hex}+{}", B64.encode(typed)));
        let dev_hash = digest(&SHA256, &pk);
        let dev: String = dev_hash.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(device_id_from_public_key(&pk), format!("lucid-{dev}"));
        assert_eq!(device_id_from_public_key(&pk).len(), 6 + 16);
    }

    #[test]
    fn vkey_rejects_malformed() {
        let s = signer("dev");
        let good = s.vkey();
        let parts: Vec<&str> = good.splitn(3, '+').collect();
        for bad in [
            String::new(),
            "dev".into(),
            format!("dev+{}", parts[1]),
            format!("other+{}+{}", parts[1], parts[2]),
            format!("dev+00000000+{}", parts[2]),
            // Upper-case hex (the key hash is lower-case; one of all digits has no case,
            // so a letter is forced in to keep this case from passing as the good key).
            format!("dev+{}A+{}", &parts[1][..7].to_uppercase(), parts[2]),
            format!("dev+{}+AAAA", parts[1]),
            format!("{good}+x"),
            format!("d v+{}+{}", parts[1], parts[2]),
        ] {
            assert!(Verifier::from_vkey(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tampering_each_line_fails() {
        let s = signer("dev");
        let v = s.verifier();
        let note = sign_checkpoint(&checkpoint(), &s).unwrap();
        let lines: Vec<&str> = note.split('\n').collect();
        // lines: origin, size, root, "", sig, "" (after the final newline)
        let variants = [
            (0, "lucid/lucid-0011223344556677/sess-2".to_owned()),
            (1, "21".to_owned()),
            (1, "020".to_owned()),
            (2, B64.encode([0x5b; 32])),
            (4, lines[4].replace("dev", "dex")),
            (4, {
                let mut blob = B64.decode(lines[4].rsplit(' ').next().unwrap()).unwrap();
                blob[10] ^= 1;
                format!("\u{2014} dev {}", B64.encode(blob))
            }),
        ];
        for (i, replacement) in variants {
            let mut l = lines.clone();
            l[i] = &replacement;
            assert!(v.verify_checkpoint(&l.join("\n")).is_err(), "line {i} -> {replacement:?}");
        }
    }

    #[test]
    fn wrong_key_and_foreign_lines() {
        let s = signer("dev");
        let other = signer("dev"); // same name, different key
        let note = sign_checkpoint(&checkpoint(), &s).unwrap();
        assert!(matches!(other.verifier().verify_checkpoint(&note), Err(NoteError::NoSignature { .. })));
        // A co-signature from another key is ignored, in either order.
        let cosig = sign_checkpoint(&checkpoint(), &signer("witness")).unwrap();
        let cosig_line = cosig.split("\n\n").nth(1).unwrap();
        let both = format!("{note}{cosig_line}");
        assert_eq!(s.verifier().verify_checkpoint(&both).unwrap(), checkpoint());
        // A bad signature that claims to be ours rejects the note even next to a good one.
        let forged_line = sign_checkpoint(&checkpoint(), &other).unwrap();
        let mut blob = B64.decode(forged_line.trim_end().rsplit(' ').next().unwrap()).unwrap();
        blob[..4].copy_from_slice(&s.key_id());
        let both = format!("{note}\u{2014} dev {}\n", B64.encode(blob));
        assert!(matches!(s.verifier().verify_checkpoint(&both), Err(NoteError::BadSignature { .. })));
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let s = signer("dev");
        let v = s.verifier();
        let sign_body = |body: &str| {
            let mut blob = s.key_id().to_vec();
            blob.extend_from_slice(&s.sign(body.as_bytes()));
            format!("{body}\n\u{2014} dev {}\n", B64.encode(blob))
        };
        let root = B64.encode([1u8; 32]);
        // Correctly signed but non-canonical or malformed bodies.
        for body in [
            format!("o\n007\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("o\n1\n{}\n", B64.encode([1u8; 31])),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            format!("o\n1\n{root}\next\n"),
            format!("o p\n1\n{root}\n"),
            format!("\n1\n{root}\n"),
            format!("o\n1\n{root}"),
        ] {
            assert!(v.verify_checkpoint(&sign_body(&body)).is_err(), "{body:?}");
        }
        assert_eq!(v.verify_checkpoint(&sign_body(&format!("o\n0\n{root}\n"))).unwrap().size, 0);
        let good = sign_checkpoint(&checkpoint(), &s).unwrap();
        for bad in [
            good.trim_end().to_owned(),
            good.replace('\u{2014}', "-"),
            good.replace("\n\n", "\n"),
            good.replace("\n\n", "\r\n\n"),
            format!("{good}\n"),
            good.split("\n\n").next().unwrap().to_owned() + "\n\n",
        ] {
            assert!(v.verify_checkpoint(&bad).is_err(), "{bad:?}");
        }
        assert!(sign_checkpoint(&Checkpoint { origin: "a b".into(), size: 1, root: [0; 32] }, &s).is_err());
        assert!(Signer::from_pkcs8("dev", b"not a key").is_err());
        assert!(Signer::from_pkcs8("a+b", &Signer::generate_pkcs8(&SystemRandom::new()).unwrap()).is_err());
    }

    #[test]
    fn detached_signatures() {
        let s = signer("dev");
        let sig = s.sign(b"hello");
        s.verifier().verify(b"hello", &sig).unwrap();
        assert!(s.verifier().verify(b"hellO", &sig).is_err());
        assert!(s.verifier().verify(b"hello", &sig[..63]).is_err());
    }
}
