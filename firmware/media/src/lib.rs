//! lucid-media: frames in, H.264 access units and CMAF/fMP4 chunks out.
//!
//! Owns the media pipeline stages as separate pieces — `FrameSource` (camera or synthetic
//! `TestPattern`) → `VideoEncoder` (`OpenH264Encoder`) → `Chunker` (keyframe cuts, owns the
//! `Fmp4Muxer`) — which the daemon wires together on its capture thread. It must not do
//! I/O beyond capture, know about storage, sealing or HTTP, or spawn threads.
//!
//! Typical use:
//! ```no_run
//! use lucid_media::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut src = TestPattern::new(TestPatternConfig { width: 640, height: 480, fps: 15, paced: true })?;
//! let mut enc = OpenH264Encoder::new(EncoderConfig::new(640, 480, 15))?;
//! let mut chunker = Chunker::new(ChunkerConfig::default())?;
//! loop {
//!     let frame = src.next_frame()?;
//!     for au in enc.encode(&frame)? {
//!         chunker.push(au)?;
//!     }
//!     if chunker.wants_keyframe() {
//!         enc.request_keyframe();
//!     }
//!     while let Some(chunk) = chunker.pop_chunk() {
//!         // store chunk.fragment; serve chunker.init_segment() before the first one
//!         # let _ = chunk;
//!     }
//! }
//! # }
//! ```

mod chunker;
mod convert;
mod encode;
mod fmp4;
#[cfg(test)]
mod fuzz_seeds;
pub mod fwht;
// The H.264 helpers for `fuzz/`; not part of the API (see its header).
#[doc(hidden)]
pub mod fuzzing;
mod h264;
mod source;
#[cfg(target_os = "linux")]
pub mod v4l2;

/// The compressed format a session records. The chunker and the store are codec-blind
/// beyond the packaging this selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 (Annex-B access units in, fMP4 out): every real camera path.
    H264,
    /// vicodec's FWHT, raw stream: only to prove the V4L2 encoder path without hardware.
    Fwht,
}

impl Codec {
    /// Name used in config, the API and logs.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Fwht => "fwht",
        }
    }
}

pub use chunker::{ChunkError, Chunker, ChunkerConfig, MediaChunk};
pub use convert::to_i420;
pub use encode::{AccessUnit, CameraH264, EncodeError, EncoderConfig, OpenH264Encoder, ToI420, VideoEncoder};
pub use fmp4::{DEFAULT_TIMESCALE, Fmp4Error, Fmp4Muxer};
pub use h264::{H264Error, is_idr};
pub use source::{Frame, FrameSource, PixelFormat, SourceError, TestPattern, TestPatternConfig, VideoFormat};

/// glibc-only symbol needed by a static musl link of OpenH264's C++.
///
/// Debian's aarch64 `libstdc++.a` is built against glibc, whose `<sys/single_threaded.h>`
/// lets libstdc++ skip atomic refcounts when `__libc_single_threaded` is non-zero. musl has
/// no such variable, so the static link fails with an undefined symbol. Defining it as 0
/// ("maybe multi-threaded") is always correct: libstdc++ then takes the atomic path, which
/// is what a multi-threaded daemon needs anyway. Only for aarch64 musl, where we link
/// Debian's glibc libstdc++ into a musl binary; glibc targets have the real one.
#[cfg(all(target_arch = "aarch64", target_env = "musl"))]
#[unsafe(no_mangle)]
pub static __libc_single_threaded: core::ffi::c_char = 0;
