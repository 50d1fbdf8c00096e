//! lucid-core: every Lucid format that must be reproduced byte for byte by someone who
//! does not trust the device. It owns the chunk header and record encodings, sealing
//! (AEAD) and key wrapping, the RFC 9162 Merkle log, signed checkpoints (C2SP signed
//! notes), the signed session manifest and the evidence bundle with its verifier.
//!
//! Architecture invariant: this crate does no IO (no files, sockets, clocks or threads)
//! and compiles for every target, so the daemon, the offline verifier and the tests all
//! run the same code. Randomness comes in through `ring::rand::SecureRandom` arguments.
