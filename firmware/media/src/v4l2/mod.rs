//! V4L2: cameras (capture devices) and stateful memory-to-memory encoders/decoders.
//!
//! Owns the device side of the media pipeline: finding devices by capability, format
//! negotiation (`negotiate`, pure), where a picture's planes lie in a driver buffer
//! (`layout`, pure), mmap streaming of both single- and multi-planar queues
//! (`device`, the only code that issues ioctls), the camera as a `FrameSource`
//! (`capture`) and the stateful codec state machine as a `VideoEncoder` (`m2m`). All of it
//! is written against the `Driver` trait, so the state handling is unit-tested against a
//! scripted fake (`fake`, tests only) and run for real against vivid/vicodec in the
//! emulated image and bcm2835-codec on a Pi.
//!
//! It must not know about chunks, storage or HTTP, and must not spawn threads: callers
//! block on it from their capture thread.

pub mod capture;
pub mod device;
#[cfg(test)]
mod fake;
pub mod layout;
pub mod m2m;
pub mod negotiate;

use std::path::{Path, PathBuf};

pub use capture::{CameraConfig, V4l2Camera};
pub use device::{DeviceInfo, RealDevice};
pub use m2m::{CodecParams, V4l2Decoder, V4l2Encoder};

/// A V4L2 pixel or coded format code (`v4l2_fourcc`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    pub const fn new(code: &[u8; 4]) -> Self {
        FourCc(u32::from_le_bytes(*code))
    }
    pub const YU12: FourCc = FourCc::new(b"YU12");
    pub const NV12: FourCc = FourCc::new(b"NV12");
    pub const YUYV: FourCc = FourCc::new(b"YUYV");
    pub const H264: FourCc = FourCc::new(b"H264");
    pub const FWHT: FourCc = FourCc::new(b"FWHT");
    pub const MJPG: FourCc = FourCc::new(b"MJPG");

    /// The raw layout this fourcc is, if the pipeline handles it.
    pub fn pixel_format(self) -> Option<crate::PixelFormat> {
        match self {
            FourCc::YU12 => Some(crate::PixelFormat::I420),
            FourCc::NV12 => Some(crate::PixelFormat::Nv12),
            FourCc::YUYV => Some(crate::PixelFormat::Yuyv),
            FourCc::H264 => Some(crate::PixelFormat::H264),
            _ => None,
        }
    }

    pub fn of_pixel_format(p: crate::PixelFormat) -> FourCc {
        match p {
            crate::PixelFormat::I420 => FourCc::YU12,
            crate::PixelFormat::Nv12 => FourCc::NV12,
            crate::PixelFormat::Yuyv => FourCc::YUYV,
            crate::PixelFormat::H264 => FourCc::H264,
        }
    }

    pub fn of_codec(c: crate::Codec) -> FourCc {
        match c {
            crate::Codec::H264 => FourCc::H264,
            crate::Codec::Fwht => FourCc::FWHT,
        }
    }
}

impl std::fmt::Debug for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0.to_le_bytes();
        for c in b {
            let ch = if c.is_ascii_graphic() || c == b' ' { c as char } else { '?' };
            write!(f, "{ch}")?;
        }
        Ok(())
    }
}

/// Which queue of a device. On a capture device only `Capture` exists; on an M2M codec
/// `Output` takes the input (raw frames for an encoder) and `Capture` gives the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Capture,
    Output,
}

/// A negotiated format of one queue (one plane: every format we use is contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the first plane; 0 for compressed formats.
    pub bytesperline: u32,
    /// Buffer size the driver wants for one frame.
    pub sizeimage: u32,
}

/// Frame sizes a capture device offers for one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameSizes {
    Discrete(Vec<(u32, u32)>),
    Stepwise {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
    /// The driver does not enumerate sizes: try the wanted one.
    Unknown,
}

/// A buffer handed back by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequeued {
    pub index: u32,
    /// Where the data starts in the buffer (multi-planar `data_offset`; else 0).
    pub offset: u32,
    /// Bytes of data from `offset`.
    pub bytesused: u32,
    pub flags: u32,
    /// The buffer's timestamp in µs: on a camera, the capture time (CLOCK_MONOTONIC); on
    /// an M2M device, copied from the matching output buffer.
    pub timestamp_us: u64,
    pub sequence: u32,
}

/// `V4L2_BUF_FLAG_KEYFRAME`.
pub const BUF_FLAG_KEYFRAME: u32 = 0x8;
/// `V4L2_BUF_FLAG_ERROR`: the data may be corrupt.
pub const BUF_FLAG_ERROR: u32 = 0x40;
/// `V4L2_BUF_FLAG_LAST`: the last buffer of a drain.
pub const BUF_FLAG_LAST: u32 = 0x0010_0000;

/// Which queues have something to dequeue (`poll`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    pub capture: bool,
    pub output: bool,
    pub event: bool,
}

/// Pending V4L2 events we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `V4L2_EVENT_SOURCE_CHANGE`: the capture format changed; reallocate.
    SourceChange,
    /// `V4L2_EVENT_EOS`: the last buffer of a drain was produced.
    Eos,
    Other(u32),
}

/// `V4L2_EVENT_EOS` and `V4L2_EVENT_SOURCE_CHANGE`.
pub const EVENT_EOS: u32 = 2;
pub const EVENT_SOURCE_CHANGE: u32 = 5;

/// Codec controls (`V4L2_CID_MPEG_VIDEO_*`, linux/v4l2-controls.h, via bindgen).
pub mod cid {
    pub use v4l::v4l_sys::{
        V4L2_CID_MPEG_VIDEO_BITRATE as BITRATE, V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME as FORCE_KEY_FRAME,
        V4L2_CID_MPEG_VIDEO_GOP_SIZE as GOP_SIZE, V4L2_CID_MPEG_VIDEO_H264_I_PERIOD as H264_I_PERIOD,
        V4L2_CID_MPEG_VIDEO_H264_LEVEL as H264_LEVEL, V4L2_CID_MPEG_VIDEO_H264_PROFILE as H264_PROFILE,
        V4L2_CID_MPEG_VIDEO_PREPEND_SPSPPS_TO_IDR as PREPEND_SPSPPS_TO_IDR,
        V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER as REPEAT_SEQ_HEADER,
    };
}

/// Errors at the V4L2 boundary. Every one names the device.
#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    #[error("{device}: {op} failed: {source}")]
    Io {
        device: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: the device is gone (unplugged or driver unloaded)")]
    Gone { device: String },
    #[error("{device}: {msg}")]
    Unsupported { device: String, msg: String },
    #[error("no V4L2 device found: {0}")]
    NotFound(String),
    #[error("{device}: timed out after {ms} ms waiting for {what}")]
    Timeout { device: String, ms: i32, what: &'static str },
}

impl V4l2Error {
    /// True when the device went away (the camera path waits for it to come back).
    pub fn is_gone(&self) -> bool {
        match self {
            V4l2Error::Gone { .. } => true,
            V4l2Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EIO))
            }
            _ => false,
        }
    }
}

pub type Result<T, E = V4l2Error> = std::result::Result<T, E>;

/// The operations the camera and codec logic need from a device. `RealDevice` issues the
/// ioctls; the test fake scripts a driver's behaviour.
pub trait Driver: Send {
    fn info(&self) -> &DeviceInfo;
    fn formats(&mut self, q: Queue) -> Result<Vec<FourCc>>;
    fn frame_sizes(&mut self, fourcc: FourCc) -> Result<FrameSizes>;
    /// `VIDIOC_S_FMT`: returns what the driver actually set (it may adjust anything).
    fn set_format(&mut self, q: Queue, want: Format) -> Result<Format>;
    fn get_format(&mut self, q: Queue) -> Result<Format>;
    /// `VIDIOC_S_PARM`: frames per second; returns the rate the driver chose, if it says.
    fn set_frame_rate(&mut self, q: Queue, fps: u32) -> Result<Option<(u32, u32)>>;
    /// `VIDIOC_S_CTRL`. `Unsupported` when the driver lacks the control.
    fn set_control(&mut self, id: u32, value: i32) -> Result<()>;
    /// `VIDIOC_REQBUFS` (mmap) and mapping; 0 frees. Returns the count granted.
    fn request_buffers(&mut self, q: Queue, count: u32) -> Result<u32>;
    /// The mapped memory of buffer `index`.
    fn buffer(&mut self, q: Queue, index: u32) -> &mut [u8];
    /// `VIDIOC_QBUF` with `bytesused` (output queue) and the timestamp to carry.
    fn queue_buffer(&mut self, q: Queue, index: u32, bytesused: u32, timestamp_us: u64) -> Result<()>;
    /// Non-blocking `VIDIOC_DQBUF`: `None` when nothing is ready; EPIPE (the queue is past
    /// its LAST buffer) comes back as the `Io` error, for the codec logic to see.
    fn dequeue_buffer(&mut self, q: Queue) -> Result<Option<Dequeued>>;
    fn stream(&mut self, q: Queue, on: bool) -> Result<()>;
    /// `poll()`; `Ready::default()` on timeout.
    fn wait(&mut self, timeout_ms: i32) -> Result<Ready>;
    /// `VIDIOC_S_SELECTION` crop: the visible rectangle inside a larger coded buffer (an
    /// encoder's raw side when the hardware aligns the size, e.g. 1080 -> 1088 rows).
    fn set_crop(&mut self, q: Queue, width: u32, height: u32) -> Result<()>;
    /// `VIDIOC_ENCODER_CMD` (`V4L2_ENC_CMD_STOP` = 1, `START` = 0).
    fn encoder_command(&mut self, cmd: u32) -> Result<()>;
    /// `VIDIOC_DECODER_CMD` (`V4L2_DEC_CMD_STOP` = 1, `START` = 0).
    fn decoder_command(&mut self, cmd: u32) -> Result<()>;
    fn subscribe(&mut self, event: u32) -> Result<()>;
    fn dequeue_event(&mut self) -> Result<Option<Event>>;
}

/// What a device node is, from `VIDIOC_QUERYCAP`'s device caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Camera,
    Codec,
    Other,
}

/// A device found by `scan`: its node, driver and the formats of its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub role: Role,
    /// Capture-queue formats (a camera's pixel formats; a codec's results).
    pub capture: Vec<FourCc>,
    /// Output-queue formats (a codec's inputs).
    pub output: Vec<FourCc>,
}

/// Lists `/dev/video*` nodes in numeric order with their role and formats. Nodes that
/// cannot be opened (permissions, busy metadata nodes) are skipped.
pub fn scan(dev_dir: &Path) -> Vec<Found> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n = name.strip_prefix("video")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    let mut out = Vec::new();
    for (_, path) in nodes {
        let Ok(mut d) = RealDevice::open(&path) else { continue };
        let info = d.info().clone();
        let capture = d.formats(Queue::Capture).unwrap_or_default();
        let output = if info.role == Role::Codec { d.formats(Queue::Output).unwrap_or_default() } else { Vec::new() };
        out.push(Found { path, driver: info.driver, card: info.card, role: info.role, capture, output });
    }
    out
}

/// The first codec device that turns one of `inputs` into `codec` (an encoder).
pub fn find_encoder(found: &[Found], codec: FourCc) -> Option<&Found> {
    found.iter().find(|f| {
        f.role == Role::Codec
            && f.capture.contains(&codec)
            && f.output.iter().any(|o| negotiate::RAW_PREFERENCE.contains(o))
    })
}

/// The first codec device that turns `codec` into raw frames (a decoder).
pub fn find_decoder(found: &[Found], codec: FourCc) -> Option<&Found> {
    found.iter().find(|f| {
        f.role == Role::Codec
            && f.output.contains(&codec)
            && f.capture.iter().any(|o| negotiate::RAW_PREFERENCE.contains(o))
    })
}

/// The first camera with a format the pipeline can record.
pub fn find_camera(found: &[Found]) -> Option<&Found> {
    found.iter().find(|f| f.role == Role::Camera && f.capture.iter().any(|c| c.pixel_format().is_some()))
}
