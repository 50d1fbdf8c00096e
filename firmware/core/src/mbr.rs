//! The SD card's MBR partition table as bytes, and the growth of its last logical
//! partition (the data partition, p7) to the end of a larger card.
//!
//! It owns the parsing of the MBR and of the chain of extended boot records (EBRs) behind
//! the extended partition, the check that a table is consistent, and the grow plan: the
//! sectors to rewrite, each whole, in the order that keeps every intermediate table valid
//! (the extended container first, then the link that holds the last logical partition,
//! then that partition's own entry), so a power cut after any one write leaves a table the
//! kernel reads and the next boot finishes. A plan is computed from what is on the disk
//! now, so running it again after a complete or partial run plans only what is left.
//!
//! It must not do IO: the caller passes a sector reader and writes the planned sectors
//! itself (`lucidd grow-data` on the device, the hil tests on a disk image). It never
//! shrinks an entry and never moves a start.
//!
//! Why not a crate such as mbrman: it serialises the whole table at once, and the order
//! of the single-sector writes is exactly what a power cut needs controlled; an entry is
//! 16 bytes.

use std::fmt;

/// Bytes per sector: the MBR's unit on every card and virtio disk this image supports.
pub const SECTOR: u64 = 512;
/// Partition ends are kept on 1 MiB boundaries, as the image tool lays them out.
pub const ALIGN_SECTORS: u64 = 1024 * 1024 / SECTOR;
/// An MBR entry counts sectors in 32 bits: nothing can end beyond 2 TiB.
pub const MAX_SECTORS: u64 = 1 << 32;
/// The longest EBR chain followed: a loop or garbage ends here, not in a hang.
const MAX_LOGICAL: usize = 60;

/// One sector of the disk.
pub type Sector = [u8; SECTOR as usize];

/// Why a table cannot be read or grown; each names the partition or sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MbrError {
    /// The sector at `lba` does not end in 0x55 0xAA.
    NoSignature { lba: u64 },
    /// No extended partition among the four primary entries.
    NoExtended,
    /// The EBR chain loops, goes backwards, leaves the extended partition or is too long.
    BadChain { lba: u64, why: &'static str },
    /// The partition to grow is not in the table.
    NoPartition { number: u32 },
    /// Only a logical partition (5 and up) is grown: the layout keeps data there.
    NotLogical { number: u32 },
    /// Another partition lies after the one to grow.
    NotLast { number: u32, after: u32 },
    /// The table breaks a rule `check` enforces.
    Inconsistent { number: u32, why: &'static str },
    /// The sector reader failed.
    Read { lba: u64, err: String },
}

impl fmt::Display for MbrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MbrError::NoSignature { lba } => write!(f, "sector {lba}: no 55 AA boot signature"),
            MbrError::NoExtended => write!(f, "the MBR has no extended partition"),
            MbrError::BadChain { lba, why } => write!(f, "EBR chain at sector {lba}: {why}"),
            MbrError::NoPartition { number } => write!(f, "no partition {number}"),
            MbrError::NotLogical { number } => write!(f, "partition {number} is not a logical partition"),
            MbrError::NotLast { number, after } => write!(f, "partition {after} lies after partition {number}"),
            MbrError::Inconsistent { number, why } => write!(f, "partition {number}: {why}"),
            MbrError::Read { lba, err } => write!(f, "reading sector {lba}: {err}"),
        }
    }
}

impl std::error::Error for MbrError {}

/// A partition in absolute sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// 1–4 primary (the extended container among them), 5 and up logical.
    pub number: u32,
    pub kind: u8,
    pub start: u64,
    pub sectors: u64,
}

impl Part {
    pub fn end(&self) -> u64 {
        self.start + self.sectors
    }
}

/// The MBR and the EBRs of the extended partition, as read from the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub mbr: Sector,
    /// In chain order: the EBR at index i describes logical partition 5 + i.
    pub ebrs: Vec<(u64, Sector)>,
}

/// One sector to write, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorWrite {
    pub lba: u64,
    pub bytes: Sector,
    /// What the write changes, for the log: "extended partition 4 -> sectors 2048..8388608".
    pub what: String,
}

/// What growing a partition to the end of the disk takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    pub number: u32,
    pub start: u64,
    /// The partition's end now (exclusive, sectors).
    pub old_end: u64,
    /// Its end after the writes: the disk's end rounded down to `ALIGN_SECTORS` (never
    /// less than `old_end`).
    pub new_end: u64,
    /// In order; empty when the partition already ends within the last aligned MiB.
    pub writes: Vec<SectorWrite>,
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

fn entry_at(sector: &Sector, i: usize) -> (u8, u64, u64) {
    let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap());
    let sectors = u32::from_le_bytes(e[12..16].try_into().unwrap());
    (e[4], start.into(), sectors.into())
}

/// Sets entry `i`'s sector count (and its end CHS, which nothing here reads but which
/// `fdisk` compares): `sectors` must fit 32 bits, which `plan_grow` ensures.
fn set_sectors(sector: &mut Sector, i: usize, start_abs: u64, sectors: u64) {
    let e = &mut sector[446 + 16 * i..446 + 16 * (i + 1)];
    e[12..16].copy_from_slice(&u32::try_from(sectors).expect("fits an MBR entry").to_le_bytes());
    e[5..8].copy_from_slice(&chs(start_abs + sectors - 1));
}

/// The CHS bytes of an LBA with the usual 255 heads and 63 sectors, or the "beyond CHS"
/// marker (1023/254/63) that every table past 8 GiB carries.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, secs) = (255u64, 63u64);
    let c = lba / (heads * secs);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let h = (lba / secs) % heads;
    let s = lba % secs + 1;
    [h as u8, (s as u8) | (((c >> 8) as u8 & 3) << 6), c as u8]
}

fn signed(sector: &Sector, lba: u64) -> Result<(), MbrError> {
    if sector[510] == 0x55 && sector[511] == 0xaa { Ok(()) } else { Err(MbrError::NoSignature { lba }) }
}

impl Table {
    /// Reads the MBR (sector 0) and follows the EBR chain of its extended partition.
    pub fn read<E: fmt::Display>(mut read: impl FnMut(u64) -> Result<Sector, E>) -> Result<Table, MbrError> {
        let get = |read: &mut dyn FnMut(u64) -> Result<Sector, E>, lba| {
            read(lba).map_err(|e| MbrError::Read { lba, err: e.to_string() })
        };
        let mbr = get(&mut read, 0)?;
        signed(&mbr, 0)?;
        let mut t = Table { mbr, ebrs: Vec::new() };
        let ext = t.extended()?;
        let mut lba = ext.start;
        loop {
            if t.ebrs.len() >= MAX_LOGICAL {
                return Err(MbrError::BadChain { lba, why: "too many logical partitions" });
            }
            let ebr = get(&mut read, lba)?;
            signed(&ebr, lba)?;
            t.ebrs.push((lba, ebr));
            let (kind, rel, sectors) = entry_at(&ebr, 1);
            if sectors == 0 || !is_extended(kind) {
                break;
            }
            let next = ext.start + rel;
            if next <= lba {
                return Err(MbrError::BadChain { lba, why: "the next EBR is not after this one" });
            }
            if next >= ext.end() {
                return Err(MbrError::BadChain { lba, why: "the next EBR is outside the extended partition" });
            }
            lba = next;
        }
        Ok(t)
    }

    /// The extended container among the primary entries (the first one, as Linux takes it).
    pub fn extended(&self) -> Result<Part, MbrError> {
        (0..4)
            .map(|i| (i, entry_at(&self.mbr, i)))
            .find(|(_, (kind, _, sectors))| is_extended(*kind) && *sectors > 0)
            .map(|(i, (kind, start, sectors))| Part { number: i as u32 + 1, kind, start, sectors })
            .ok_or(MbrError::NoExtended)
    }

    /// Every non-empty partition: primaries (the container included), then logicals.
    pub fn partitions(&self) -> Vec<Part> {
        let mut v: Vec<Part> = (0..4)
            .filter_map(|i| {
                let (kind, start, sectors) = entry_at(&self.mbr, i);
                (sectors > 0).then_some(Part { number: i as u32 + 1, kind, start, sectors })
            })
            .collect();
        for (i, (lba, ebr)) in self.ebrs.iter().enumerate() {
            let (kind, rel, sectors) = entry_at(ebr, 0);
            if sectors > 0 {
                v.push(Part { number: 5 + i as u32, kind, start: lba + rel, sectors });
            }
        }
        v
    }

    pub fn partition(&self, number: u32) -> Option<Part> {
        self.partitions().into_iter().find(|p| p.number == number)
    }

    /// The rules a table read from the card must keep, and every step of a grow keeps:
    /// everything inside a disk of `disk_sectors` and the 32-bit limit, primaries apart,
    /// each logical inside the container and after its own EBR, logicals apart, and each
    /// EBR's link (what it says the next logical spans) inside the container and covering
    /// that logical.
    pub fn check(&self, disk_sectors: u64) -> Result<(), MbrError> {
        let bad = |number, why| Err(MbrError::Inconsistent { number, why });
        let parts = self.partitions();
        let ext = self.extended()?;
        for p in &parts {
            if p.start == 0 {
                return bad(p.number, "starts at sector 0");
            }
            if p.end() > disk_sectors.min(MAX_SECTORS) {
                return bad(p.number, "ends beyond the disk");
            }
        }
        let (primaries, logicals): (Vec<&Part>, Vec<&Part>) = parts.iter().partition(|p| p.number <= 4);
        for (i, a) in primaries.iter().enumerate() {
            for b in &primaries[i + 1..] {
                if a.start < b.end() && b.start < a.end() {
                    return bad(b.number, "overlaps another primary partition");
                }
            }
        }
        for (i, (lba, ebr)) in self.ebrs.iter().enumerate() {
            let number = 5 + i as u32;
            if *lba < ext.start || *lba >= ext.end() {
                return bad(number, "its EBR is outside the extended partition");
            }
            if let Some(p) = logicals.iter().find(|p| p.number == number) {
                if p.start <= *lba {
                    return bad(number, "starts at or before its EBR");
                }
                if p.end() > ext.end() {
                    return bad(number, "ends beyond the extended partition");
                }
            }
            if let Some((next_lba, _)) = self.ebrs.get(i + 1) {
                let (_, rel, sectors) = entry_at(ebr, 1);
                let link_end = ext.start + rel + sectors;
                if link_end > ext.end() {
                    return bad(number + 1, "the link to it ends beyond the extended partition");
                }
                if let Some(next) = logicals.iter().find(|p| p.number == number + 1)
                    && (ext.start + rel != *next_lba || link_end < next.end())
                {
                    return bad(number + 1, "the link to it does not cover it");
                }
            }
        }
        for (i, a) in logicals.iter().enumerate() {
            for b in &logicals[i + 1..] {
                if a.start < b.end() && b.start < a.end() {
                    return bad(b.number, "overlaps another logical partition");
                }
            }
        }
        Ok(())
    }

    /// Applies one planned write to this copy of the table (the host-side tests build an
    /// interrupted grow this way; the device re-reads the disk instead).
    pub fn apply(&mut self, w: &SectorWrite) {
        if w.lba == 0 {
            self.mbr = w.bytes;
        }
        for (lba, ebr) in &mut self.ebrs {
            if *lba == w.lba {
                *ebr = w.bytes;
            }
        }
    }
}

/// The writes that make logical partition `number` end at the disk's end (rounded down to
/// `ALIGN_SECTORS`, capped at 2 TiB): the container, then the previous EBR's link, then
/// the partition's own EBR, each only if it ends short of that. Refuses a table that is not
/// consistent or where something lies after the partition.
pub fn plan_grow(table: &Table, number: u32, disk_sectors: u64) -> Result<GrowPlan, MbrError> {
    if number < 5 {
        return Err(MbrError::NotLogical { number });
    }
    let idx = (number - 5) as usize;
    let part = table.partition(number).ok_or(MbrError::NoPartition { number })?;
    // A table that already ends beyond the disk (an image on a smaller card) is not ours
    // to judge here: it is refused by `check`, and nothing is written.
    table.check(disk_sectors)?;
    let ext = table.extended()?;
    if let Some(after) =
        table.partitions().iter().find(|p| p.number != number && p.number != ext.number && p.end() > part.end())
    {
        return Err(MbrError::NotLast { number, after: after.number });
    }
    if idx + 1 != table.ebrs.len() {
        return Err(MbrError::NotLast { number, after: number + 1 });
    }
    let aligned = disk_sectors.min(MAX_SECTORS) / ALIGN_SECTORS * ALIGN_SECTORS;
    let new_end = aligned.max(part.end());
    let mut plan = GrowPlan { number, start: part.start, old_end: part.end(), new_end, writes: Vec::new() };
    if new_end == part.end() {
        return Ok(plan);
    }
    let ext_slot = (ext.number - 1) as usize;
    if ext.end() < new_end {
        let mut mbr = table.mbr;
        set_sectors(&mut mbr, ext_slot, ext.start, new_end - ext.start);
        plan.writes.push(SectorWrite {
            lba: 0,
            bytes: mbr,
            what: format!("MBR: extended partition {} -> sectors {}..{}", ext.number, ext.start, new_end),
        });
    }
    let (ebr_lba, ebr) = table.ebrs[idx];
    if idx > 0 {
        let (prev_lba, prev) = table.ebrs[idx - 1];
        let (_, rel, sectors) = entry_at(&prev, 1);
        if ext.start + rel + sectors < new_end {
            let mut prev = prev;
            set_sectors(&mut prev, 1, ext.start + rel, new_end - (ext.start + rel));
            plan.writes.push(SectorWrite {
                lba: prev_lba,
                bytes: prev,
                what: format!("EBR at sector {prev_lba}: link to partition {number} -> sectors {ebr_lba}..{new_end}"),
            });
        }
    }
    let mut own = ebr;
    set_sectors(&mut own, 0, part.start, new_end - part.start);
    plan.writes.push(SectorWrite {
        lba: ebr_lba,
        bytes: own,
        what: format!("EBR at sector {ebr_lba}: partition {number} -> sectors {}..{new_end}", part.start),
    });
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MIB: u64 = ALIGN_SECTORS;

    fn put(s: &mut Sector, i: usize, kind: u8, start: u64, sectors: u64) {
        let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = kind;
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    }

    fn sig() -> Sector {
        let mut s = [0u8; 512];
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    /// A disk as genimage lays out the image (`extended-partition = 4`, `align = 1M`): p1–p3
    /// primary, p4 the container from the first logical's EBR, each logical one MiB after
    /// its EBR, links spanning the next EBR to the end of its logical. Sizes in MiB.
    fn disk(primary: &[u64], logical: &[u64]) -> BTreeMap<u64, Sector> {
        let mut d = BTreeMap::new();
        let mut mbr = sig();
        let mut at = MIB;
        for (i, &mib) in primary.iter().enumerate() {
            put(&mut mbr, i, 0x0c, at, mib * MIB);
            at += mib * MIB;
        }
        let ext_start = at;
        let mut ebrs = Vec::new();
        for &mib in logical {
            ebrs.push((at, at + MIB, mib * MIB));
            at += MIB + mib * MIB;
        }
        put(&mut mbr, 3, 0x0f, ext_start, at - ext_start);
        for (i, &(lba, start, sectors)) in ebrs.iter().enumerate() {
            let mut ebr = sig();
            put(&mut ebr, 0, 0x83, start - lba, sectors);
            if let Some(&(nlba, nstart, nsectors)) = ebrs.get(i + 1) {
                put(&mut ebr, 1, 0x05, nlba - ext_start, nstart + nsectors - nlba);
            }
            d.insert(lba, ebr);
        }
        d.insert(0, mbr);
        d
    }

    fn read(d: &BTreeMap<u64, Sector>) -> Table {
        Table::read(|lba| d.get(&lba).copied().ok_or("unwritten sector")).unwrap()
    }

    /// The QEMU image: 8 MiB bootctl, 64 MiB boot A/B, 64 MiB root A/B, 160 MiB data.
    fn qemu() -> BTreeMap<u64, Sector> {
        disk(&[8, 64, 64], &[64, 64, 160])
    }

    #[test]
    fn reads_the_image_layout() {
        let t = read(&qemu());
        let p: Vec<(u32, u64, u64)> =
            t.partitions().iter().map(|p| (p.number, p.start / MIB, p.sectors / MIB)).collect();
        assert_eq!(p, [(1, 1, 8), (2, 9, 64), (3, 73, 64), (4, 137, 291), (5, 138, 64), (6, 203, 64), (7, 268, 160)]);
        t.check(428 * MIB).unwrap();
    }

    #[test]
    fn grows_the_container_then_the_link_then_the_partition() {
        let mut d = qemu();
        let four_gib = 4096 * MIB;
        let t = read(&d);
        let plan = plan_grow(&t, 7, four_gib).unwrap();
        assert_eq!((plan.old_end, plan.new_end), (428 * MIB, four_gib));
        let lbas: Vec<u64> = plan.writes.iter().map(|w| w.lba).collect();
        assert_eq!(lbas, [0, 202 * MIB, 267 * MIB], "{plan:#?}");
        for w in &plan.writes {
            d.insert(w.lba, w.bytes);
            // Each step alone leaves a table the next boot reads and checks.
            read(&d).check(four_gib).unwrap();
        }
        let t = read(&d);
        assert_eq!(t.partition(7).unwrap().end(), four_gib);
        assert_eq!(t.partition(4).unwrap().end(), four_gib);
        assert!(plan_grow(&t, 7, four_gib).unwrap().writes.is_empty(), "a second run writes nothing");
        // The bytes: p4's count at 446+48+12; 4 GiB is below CHS's 1023 cylinders (about
        // 8 GiB), so its end CHS is a real one.
        let mbr = d[&0];
        assert_eq!(
            u32::from_le_bytes(mbr[446 + 48 + 12..446 + 52 + 12].try_into().unwrap()) as u64,
            four_gib - 137 * MIB
        );
        assert_eq!(&mbr[446 + 48 + 5..446 + 48 + 8], &chs(four_gib - 1));
    }

    #[test]
    fn an_interrupted_grow_is_finished_by_the_next_plan() {
        let four_gib = 4096 * MIB;
        let first = plan_grow(&read(&qemu()), 7, four_gib).unwrap();
        for done in 0..first.writes.len() {
            let mut d = qemu();
            for w in &first.writes[..done] {
                d.insert(w.lba, w.bytes);
            }
            let rest = plan_grow(&read(&d), 7, four_gib).unwrap();
            assert_eq!(rest.writes, first.writes[done..], "after {done} writes");
        }
    }

    #[test]
    fn nothing_to_do_at_the_end_within_the_last_mib_or_on_a_smaller_disk() {
        let t = read(&qemu());
        for disk in [428 * MIB, 428 * MIB + 2047] {
            let p = plan_grow(&t, 7, disk).unwrap();
            assert!(p.writes.is_empty() && p.new_end == p.old_end, "{disk}");
        }
        assert!(matches!(plan_grow(&t, 7, 300 * MIB), Err(MbrError::Inconsistent { number: 4, .. })));
    }

    #[test]
    fn refuses_what_it_must_not_grow() {
        let t = read(&qemu());
        assert_eq!(plan_grow(&t, 6, 4096 * MIB).unwrap_err(), MbrError::NotLast { number: 6, after: 7 });
        assert_eq!(plan_grow(&t, 2, 4096 * MIB).unwrap_err(), MbrError::NotLogical { number: 2 });
        assert_eq!(plan_grow(&t, 9, 4096 * MIB).unwrap_err(), MbrError::NoPartition { number: 9 });
        let mut d = qemu();
        d.get_mut(&0).unwrap()[511] = 0;
        assert!(matches!(Table::read(|l| d.get(&l).copied().ok_or("x")), Err(MbrError::NoSignature { lba: 0 })));
        // An EBR whose link points back at itself.
        let mut d = qemu();
        put(d.get_mut(&(202 * MIB)).unwrap(), 1, 0x05, 0, MIB);
        let e = Table::read(|l| d.get(&l).copied().ok_or("x")).unwrap_err();
        assert!(matches!(e, MbrError::BadChain { .. }), "{e}");
    }

    #[test]
    fn caps_at_the_32_bit_limit_of_an_entry() {
        let p = plan_grow(&read(&qemu()), 7, 8 * MAX_SECTORS).unwrap();
        assert_eq!(p.new_end, MAX_SECTORS);
        assert_eq!(&p.writes[0].bytes[446 + 48 + 5..446 + 48 + 8], &[0xfe, 0xff, 0xff]);
    }

    proptest! {
        /// Any valid table of this shape grows to a valid table whose last logical ends at
        /// the aligned disk end, never shrinks anything, and a second plan is empty; every
        /// prefix of the writes is a valid table too.
        #[test]
        fn any_table_grows_validly_and_idempotently(
            primary in proptest::collection::vec(1u64..100, 0..=3),
            logical in proptest::collection::vec(1u64..100, 1..6),
            extra in 0u64..(1 << 24),
        ) {
            let d0 = disk(&primary, &logical);
            let t0 = read(&d0);
            let last = 4 + logical.len() as u32;
            let end = t0.partition(last).unwrap().end();
            let disk_sectors = end + extra;
            t0.check(disk_sectors).unwrap();
            let plan = plan_grow(&t0, last, disk_sectors).unwrap();
            prop_assert_eq!(plan.new_end, (disk_sectors / MIB * MIB).max(end));
            let mut d = d0.clone();
            for w in &plan.writes {
                d.insert(w.lba, w.bytes);
                read(&d).check(disk_sectors).unwrap();
            }
            let t = read(&d);
            prop_assert_eq!(t.partition(last).unwrap().end(), plan.new_end);
            for p in t0.partitions() {
                let q = t.partition(p.number).unwrap();
                prop_assert_eq!(q.start, p.start);
                prop_assert!(q.sectors >= p.sectors);
                if p.number != last && p.number != 4 {
                    prop_assert_eq!(q, p);
                }
            }
            prop_assert!(plan_grow(&t, last, disk_sectors).unwrap().writes.is_empty());
        }
    }
}
