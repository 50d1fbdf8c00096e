//! The RFC 9162 (Certificate Transparency v2) Merkle tree over SHA-256: leaf and node
//! hashing, tree heads of any prefix, and inclusion and consistency proofs with their
//! verifiers (RFC 9162 §2.1).
//!
//! It owns only the arithmetic of the log. It must not know what a leaf means (that is
//! `chunk::ChunkRecord`), nor sign anything (that is `note`). Verifiers never panic on
//! hostile input: every size, index and proof length is checked before it is used.

use ring::digest::{Context, SHA256, digest};

/// A SHA-256 output: a leaf hash, a node hash or a tree head.
pub type Hash = [u8; 32];

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf index is not inside the tree it is claimed to be in.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A tree size larger than the number of leaves that exist was asked for.
    #[error("tree size {size} is larger than the {available} leaves available")]
    SizeOutOfRange { size: u64, available: u64 },
    /// A consistency proof between sizes that do not grow (m > n).
    #[error("no consistency proof from size {m} to the smaller size {n}")]
    ShrinkingTree { m: u64, n: u64 },
    /// The proof has too many or too few hashes for the claimed sizes.
    #[error("proof has the wrong number of hashes for these tree sizes")]
    ProofLength,
    /// The proof is well formed but recomputes a different root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b"").as_ref())
}

/// `SHA-256(0x00 ‖ data)`: the domain-separated hash of one log entry.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish().as_ref())
}

/// `SHA-256(0x01 ‖ left ‖ right)`: an interior node. The prefix keeps a node from ever
/// being mistaken for a leaf (second-preimage resistance of the tree).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_hash(ctx.finish().as_ref())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(bytes);
    h
}

/// The root of the tree whose leaf hashes are `leaves` (RFC 9162 MTH).
pub fn root(leaves: &[Hash]) -> Hash {
    MerkleTree::from_leaves(leaves).root_of_all()
}

/// The inclusion proof (audit path) of leaf `index` in the tree of the first `size`
/// leaves, bottom-up, as RFC 9162 §2.1.3.1 PATH.
pub fn inclusion_proof(leaves: &[Hash], index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
    MerkleTree::from_leaves(leaves).inclusion_proof(index, size)
}

/// The consistency proof between the trees of the first `m` and first `n` leaves, as
/// RFC 9162 §2.1.4.1 PROOF. Empty when `m == 0` or `m == n`.
pub fn consistency_proof(leaves: &[Hash], m: u64, n: u64) -> Result<Vec<Hash>, MerkleError> {
    MerkleTree::from_leaves(leaves).consistency_proof(m, n)
}

/// An append-only tree of leaf hashes that caches every complete subtree, so a root or
/// proof for any prefix costs O(log² n) hashes instead of rehashing the whole log; the
/// evidence verifier proves every chunk, which would otherwise be quadratic.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[l][i]` is the hash of the complete, aligned subtree of leaves
    /// `[i·2^l, (i+1)·2^l)`. Level 0 holds the leaf hashes.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self { levels: vec![Vec::new()] }
    }

    /// A tree holding `leaves` in order.
    pub fn from_leaves(leaves: &[Hash]) -> Self {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(*leaf);
        }
        tree
    }

    /// Appends one leaf hash; amortised O(1) node hashes.
    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut level = 0;
        // Whenever a level gains an even count, its last two nodes complete a parent.
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// True when the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The leaf hashes, in order.
    pub fn leaves(&self) -> &[Hash] {
        &self.levels[0]
    }

    fn root_of_all(&self) -> Hash {
        self.subtree(0, self.len())
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        Ok(self.subtree(0, size))
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        if size > self.len() {
            return Err(MerkleError::SizeOutOfRange { size, available: self.len() });
        }
        Ok(())
    }

    /// MTH of leaves `[lo, hi)`. Callers guarantee `hi <= len`.
    fn subtree(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(lo >> level) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(lo, lo + k), &self.subtree(lo + k, hi))
    }

    /// See [`inclusion_proof`].
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// RFC 9162 PATH(m, D[lo:hi]), appended bottom-up (the recursion pushes the deepest
    /// sibling first because it recurses before pushing).
    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.subtree(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.subtree(lo, lo + k));
        }
    }

    /// See [`consistency_proof`].
    pub fn consistency_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(n)?;
        if m > n {
            return Err(MerkleError::ShrinkingTree { m, n });
        }
        let mut proof = Vec::new();
        if m > 0 && m < n {
            self.subproof(m, 0, n, true, &mut proof);
        }
        Ok(proof)
    }

    /// RFC 9162 SUBPROOF(m, D[lo:hi], b).
    fn subproof(&self, m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(self.subtree(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, b, out);
            out.push(self.subtree(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.subtree(lo, lo + k));
        }
    }
}

/// The largest power of two strictly less than `n` (n ≥ 2): where RFC 9162 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with head `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::ProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::ProofLength);
    }
    if r != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `m` leaves with head `root_m` is a prefix of the tree of
/// `n` leaves with head `root_n` (RFC 9162 §2.1.4.2). For `m == 0` the proof must be
/// empty and `root_m` the empty root; for `m == n` it must be empty and the roots equal.
pub fn verify_consistency(m: u64, n: u64, root_m: &Hash, root_n: &Hash, proof: &[Hash]) -> Result<(), MerkleError> {
    if m > n {
        return Err(MerkleError::ShrinkingTree { m, n });
    }
    if m == 0 || m == n {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength);
        }
        // m == 0: the empty tree is a prefix of every tree, but its head must be the
        // empty root. m == n: the same tree, so the same head.
        let ok = if m == 0 { *root_m == empty_root() && (n > 0 || *root_n == *root_m) } else { *root_m == *root_n };
        return if ok { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(MerkleError::ProofLength);
    }
    // When m is a power of two the old root is itself a node of the new tree and is
    // not sent; the verifier starts from it.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(root_m);
    }
    path.extend(proof.iter());

    let mut fnode = m - 1;
    let mut snode = n - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = *path[0];
    let mut sr = *path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(MerkleError::ProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::ProofLength);
    }
    if fr != *root_m || sr != *root_n {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    // The RFC 6962 test tree of Google's certificate-transparency and
    // transparency-dev/merkle test data; the same values appear in many independent
    // implementations.
    const INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn vector_leaves() -> Vec<Hash> {
        INPUTS.iter().map(|d| leaf_hash(d)).collect()
    }

    fn hexes(hs: &[Hash]) -> Vec<String> {
        hs.iter().map(|h| hex::encode(h)).collect()
    }

    fn parse(h: &str) -> Hash {
        hex::decode_32(h).unwrap()
    }

    #[test]
    fn known_roots_for_every_prefix() {
        let leaves = vector_leaves();
        let tree = MerkleTree::from_leaves(&leaves);
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(&root(&leaves[..n])), *want, "root of {n} leaves");
            assert_eq!(hex::encode(&tree.root(n as u64).unwrap()), *want, "cached root of {n}");
        }
        assert_eq!(tree.root(9), Err(MerkleError::SizeOutOfRange { size: 9, available: 8 }));
    }

    #[test]
    fn known_inclusion_proofs() {
        let leaves = vector_leaves();
        for (index, size, want) in INCLUSION {
            let proof = inclusion_proof(&leaves, index, size).unwrap();
            assert_eq!(hexes(&proof), want, "path of {index} in {size}");
            let r = parse(ROOTS[size as usize]);
            verify_inclusion(&leaves[index as usize], index, size, &proof, &r).unwrap();
        }
    }

    #[test]
    fn known_consistency_proofs() {
        let leaves = vector_leaves();
        for (m, n, want) in CONSISTENCY {
            let proof = consistency_proof(&leaves, m, n).unwrap();
            assert_eq!(hexes(&proof), want, "consistency {m} -> {n}");
            let (rm, rn) = (parse(ROOTS[m as usize]), parse(ROOTS[n as usize]));
            verify_consistency(m, n, &rm, &rn, &proof).unwrap();
        }
    }

    #[test]
    fn edge_cases() {
        let leaves = vector_leaves();
        let empty = empty_root();
        let r5 = parse(ROOTS[5]);
        assert_eq!(verify_consistency(0, 5, &empty, &r5, &[]), Ok(()));
        assert!(verify_consistency(0, 5, &r5, &r5, &[]).is_err());
        assert!(verify_consistency(0, 5, &empty, &r5, &[r5]).is_err());
        assert_eq!(verify_consistency(5, 5, &r5, &r5, &[]), Ok(()));
        assert!(verify_consistency(5, 5, &r5, &empty, &[]).is_err());
        assert!(verify_consistency(5, 4, &r5, &r5, &[]).is_err());
        assert!(verify_consistency(2, 5, &parse(ROOTS[2]), &r5, &[]).is_err());
        assert!(consistency_proof(&leaves, 5, 4).is_err());
        assert!(consistency_proof(&leaves, 1, 9).is_err());
        assert!(inclusion_proof(&leaves, 5, 5).is_err());
        assert!(inclusion_proof(&leaves, 0, 0).is_err());
        assert!(verify_inclusion(&leaves[0], 0, 0, &[], &empty).is_err());
        assert!(verify_inclusion(&leaves[0], u64::MAX, u64::MAX, &[], &empty).is_err());
        // A proof with extra hashes must fail rather than be truncated.
        let mut long = inclusion_proof(&leaves, 0, 8).unwrap();
        long.push(parse(ROOTS[8]));
        assert_eq!(verify_inclusion(&leaves[0], 0, 8, &long, &parse(ROOTS[8])), Err(MerkleError::ProofLength));
    }

    fn leaves_for(n: usize, seed: u64) -> Vec<Hash> {
        (0..n as u64).map(|i| leaf_hash(&[i.to_be_bytes(), seed.to_be_bytes()].concat())).collect()
    }

    fn flip(h: &Hash, bit: usize) -> Hash {
        let mut h = *h;
        h[(bit / 8) % 32] ^= 1 << (bit % 8);
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_inclusion_proof_verifies_and_tampering_fails(
            n in 1usize..=200, seed: u64, pick: usize, bit in 0usize..256, ibit in 0u32..64
        ) {
            let leaves = leaves_for(n, seed);
            let tree = MerkleTree::from_leaves(&leaves);
            let r = tree.root(n as u64).unwrap();
            prop_assert_eq!(r, root(&leaves));
            for i in 0..n as u64 {
                let proof = tree.inclusion_proof(i, n as u64).unwrap();
                prop_assert_eq!(verify_inclusion(&leaves[i as usize], i, n as u64, &proof, &r), Ok(()));
            }
            let i = (pick % n) as u64;
            let leaf = leaves[i as usize];
            let proof = tree.inclusion_proof(i, n as u64).unwrap();
            prop_assert!(verify_inclusion(&flip(&leaf, bit), i, n as u64, &proof, &r).is_err());
            prop_assert!(verify_inclusion(&leaf, i, n as u64, &proof, &flip(&r, bit)).is_err());
            prop_assert!(verify_inclusion(&leaf, i ^ (1 << ibit), n as u64, &proof, &r).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let j = pick % bad.len();
                bad[j] = flip(&bad[j], bit);
                prop_assert!(verify_inclusion(&leaf, i, n as u64, &bad, &r).is_err());
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_tampering_fails(
            n in 1usize..=200, seed: u64, pick: usize, bit in 0usize..256
        ) {
            let leaves = leaves_for(n, seed);
            let tree = MerkleTree::from_leaves(&leaves);
            let rn = tree.root(n as u64).unwrap();
            for m in 0..=n as u64 {
                let rm = tree.root(m).unwrap();
                let proof = tree.consistency_proof(m, n as u64).unwrap();
                prop_assert_eq!(verify_consistency(m, n as u64, &rm, &rn, &proof), Ok(()));
            }
            let m = (pick % n) as u64 + 1; // 1..=n
            let rm = tree.root(m).unwrap();
            let proof = tree.consistency_proof(m, n as u64).unwrap();
            prop_assert!(verify_consistency(m, n as u64, &flip(&rm, bit), &rn, &proof).is_err());
            prop_assert!(verify_consistency(m, n as u64, &rm, &flip(&rn, bit), &proof).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let j = pick % bad.len();
                bad[j] = flip(&bad[j], bit);
                prop_assert!(verify_consistency(m, n as u64, &rm, &rn, &bad).is_err());
                prop_assert!(verify_consistency(m, n as u64, &rm, &rn, &proof[..proof.len() - 1]).is_err());
                if m > 1 {
                    prop_assert!(verify_consistency(m - 1, n as u64, &rm, &rn, &proof).is_err());
                }
            }
        }
    }
}
