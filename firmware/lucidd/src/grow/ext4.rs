//! The few ext4 superblock fields the first-boot grow needs, and its decision whether the
//! file system is worth growing to fill its partition.
//!
//! It owns parsing those fields from the superblock's 1024 bytes and the arithmetic of
//! the kernel's online resize. It must not do IO: `grow` reads the bytes and issues the
//! ioctl.

use std::fmt;

/// Where the superblock starts on the partition, whatever the block size.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_LEN: usize = 1024;

const MAGIC: u16 = 0xef53;
const INCOMPAT_64BIT: u32 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ext4Error {
    /// No ext2/3/4 magic: the partition holds something else (or nothing).
    NoMagic { found: u16 },
    /// A field out of the range the kernel itself accepts.
    Bad { field: &'static str, value: u64 },
}

impl fmt::Display for Ext4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ext4Error::NoMagic { found } => write!(f, "no ext4 superblock (magic {found:#06x})"),
            Ext4Error::Bad { field, value } => write!(f, "ext4 superblock: {field} = {value} is out of range"),
        }
    }
}

impl std::error::Error for Ext4Error {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_per_group: u64,
    pub first_data_block: u64,
    pub inodes_per_group: u64,
    pub inode_size: u64,
    pub reserved_gdt_blocks: u64,
    pub desc_size: u64,
    pub is_64bit: bool,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]).into()
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()).into()
}

impl Superblock {
    /// Parses the superblock (the 1024 bytes at `SUPERBLOCK_OFFSET`).
    pub fn parse(b: &[u8; SUPERBLOCK_LEN]) -> Result<Superblock, Ext4Error> {
        let magic = u16_at(b, 0x38) as u16;
        if magic != MAGIC {
            return Err(Ext4Error::NoMagic { found: magic });
        }
        let log = u32_at(b, 0x18);
        if log > 6 {
            return Err(Ext4Error::Bad { field: "s_log_block_size", value: log });
        }
        let is_64bit = u32_at(b, 0x60) as u32 & INCOMPAT_64BIT != 0;
        let hi = if is_64bit { u32_at(b, 0x150) } else { 0 };
        // Revision 0 file systems have 128-byte inodes and no s_inode_size.
        let inode_size = if u32_at(b, 0x4c) == 0 { 128 } else { u16_at(b, 0x58) };
        let desc_size = if is_64bit { u16_at(b, 0xfe).max(32) } else { 32 };
        let sb = Superblock {
            block_size: 1024 << log,
            blocks: (hi << 32) | u32_at(b, 0x04),
            blocks_per_group: u32_at(b, 0x20),
            first_data_block: u32_at(b, 0x14),
            inodes_per_group: u32_at(b, 0x28),
            inode_size,
            reserved_gdt_blocks: u16_at(b, 0xce),
            desc_size,
            is_64bit,
        };
        for (field, value) in [("s_blocks_per_group", sb.blocks_per_group), ("s_inode_size", sb.inode_size)] {
            if value == 0 {
                return Err(Ext4Error::Bad { field, value });
            }
        }
        Ok(sb)
    }

    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// The most blocks the kernel's online resize may leave unused at the end of the
    /// partition: it drops a last block group too small for a group's metadata (a backup
    /// superblock, the descriptors and reserved descriptor blocks, two bitmaps, an inode
    /// table, two blocks more; `ext4_resize_fs`). Taken for `target` blocks, with the backup
    /// always counted, so it is never below what the kernel drops.
    pub fn unusable_tail(&self, target: u64) -> u64 {
        let groups = (target - self.first_data_block).div_ceil(self.blocks_per_group);
        let desc_blocks = (groups * self.desc_size).div_ceil(self.block_size);
        let inode_table = (self.inodes_per_group * self.inode_size).div_ceil(self.block_size);
        1 + desc_blocks + self.reserved_gdt_blocks + 2 + inode_table + 2 + 1
    }

    /// The block count to resize to for a partition of `partition_bytes`, or `None` when
    /// the file system already fills it (up to what the kernel would leave unused anyway).
    /// Deciding this way makes a second run after a grow do nothing, even when the kernel
    /// dropped a small last group. Never smaller than the file system: it never shrinks.
    pub fn grow_target(&self, partition_bytes: u64) -> Option<u64> {
        let mut target = partition_bytes / self.block_size;
        if !self.is_64bit {
            target = target.min(u32::MAX as u64);
        }
        (target > self.blocks && target - self.blocks > self.unusable_tail(target)).then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock fields of `mke2fs -t ext4` on the QEMU image's 160 MiB data partition
    /// (1 KiB blocks: a "small" file system by mke2fs.conf), as dumpe2fs shows them.
    fn small(blocks: u64) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&(blocks as u32).to_le_bytes());
        b[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        b[0x18..0x1c].copy_from_slice(&0u32.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        b[0x28..0x2c].copy_from_slice(&2048u32.to_le_bytes());
        b[0x4c..0x50].copy_from_slice(&1u32.to_le_bytes());
        b[0x58..0x5a].copy_from_slice(&256u16.to_le_bytes());
        b[0x60..0x64].copy_from_slice(&(0x2c2u32).to_le_bytes());
        b[0xce..0xd0].copy_from_slice(&256u16.to_le_bytes());
        b[0xfe..0x100].copy_from_slice(&64u16.to_le_bytes());
        b
    }

    #[test]
    fn parses_the_fields_and_refuses_other_bytes() {
        let sb = Superblock::parse(&small(163840)).unwrap();
        assert_eq!((sb.block_size, sb.blocks, sb.bytes()), (1024, 163840, 160 << 20));
        assert!(sb.is_64bit && sb.desc_size == 64 && sb.inode_size == 256);
        let mut b = small(163840);
        b[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Superblock::parse(&b).unwrap().blocks, (1 << 32) + 163840, "64-bit count");
        assert_eq!(Superblock::parse(&[0u8; 1024]).unwrap_err(), Ext4Error::NoMagic { found: 0 });
        b[0x18] = 9;
        assert!(matches!(Superblock::parse(&b), Err(Ext4Error::Bad { field: "s_log_block_size", .. })));
    }

    #[test]
    fn grows_to_the_partition_and_not_again() {
        let sb = Superblock::parse(&small(163840)).unwrap();
        let four_gib_part = (4096 - 268) << 20;
        assert_eq!(sb.grow_target(four_gib_part), Some(four_gib_part / 1024));
        assert_eq!(sb.grow_target(160 << 20), None, "already fills it");
        assert_eq!(sb.grow_target(100 << 20), None, "never shrinks");
        // The kernel kept all but a small last group: nothing more to do.
        let grown = Superblock { blocks: four_gib_part / 1024 - 600, ..sb };
        assert_eq!(grown.grow_target(four_gib_part), None);
        // Half a group more is worth growing.
        let short = Superblock { blocks: four_gib_part / 1024 - 4096, ..sb };
        assert!(short.grow_target(four_gib_part).is_some());
    }
}
