//! `V4l2Camera`: a V4L2 capture device as a `FrameSource` — negotiated format, mmap
//! streaming, driver timestamps, sequence-gap drop counting.
//!
//! Owns the camera's queue. It must not retry or wait for an unplugged camera (the
//! recorder decides that: it records the gap and reopens) and must not convert pixels
//! (frames leave tightly packed in the negotiated layout, row padding removed).

use std::path::PathBuf;

use super::layout;
use super::negotiate::{self, CameraChoice};
use super::{Driver, Format, FourCc, Queue, RealDevice, Result, V4l2Error};
use crate::source::{Frame, FrameSource, PixelFormat, SourceError, VideoFormat};

/// What the recorder asks of the camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraConfig {
    /// A node (`/dev/video0`), or `None` for the first camera found by capability.
    pub device: Option<PathBuf>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Raw layouts the encoder takes, best first.
    pub encoder_inputs: Vec<FourCc>,
    /// Record a camera's own H.264 as is.
    pub allow_passthrough: bool,
    /// mmap buffers: enough that a slow chunk commit (one fsync) does not drop frames.
    pub buffers: u32,
}

/// Longest wait for one frame: a camera at 1 fps or less is not a camera we support, and a
/// wedged driver must surface as an error rather than a silent stall.
const FRAME_TIMEOUT_MS: i32 = 3000;

pub struct V4l2Camera<D: Driver = RealDevice> {
    dev: D,
    choice: CameraChoice,
    format: Format,
    fps: (u32, u32),
    first_ts: Option<u64>,
    last_seq: Option<u32>,
    dropped: u64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC (µs) at open: maps driver timestamps to wall time.
    wall_offset_us: i64,
}

impl<D: Driver> std::fmt::Debug for V4l2Camera<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Camera").field("device", &self.dev.info().path).field("format", &self.format).finish()
    }
}

fn clock_us(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; both clocks exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    // c_long: i32 on 32-bit ARM (Pi Zero/1 userlands), i64 here.
    #[allow(clippy::unnecessary_cast)]
    let us = ts.tv_sec as i64 * 1_000_000 + ts.tv_nsec as i64 / 1000;
    us
}

impl V4l2Camera<RealDevice> {
    /// Opens the configured camera, or the first one `scan` finds.
    pub fn open(cfg: &CameraConfig) -> Result<Self> {
        let path = match &cfg.device {
            Some(p) => p.clone(),
            None => {
                let found = super::scan(std::path::Path::new("/dev"));
                super::find_camera(&found).map(|f| f.path.clone()).ok_or_else(|| {
                    V4l2Error::NotFound("no V4L2 capture device with a raw or H.264 format in /dev".into())
                })?
            }
        };
        Self::with_driver(RealDevice::open(&path)?, cfg)
    }
}

impl<D: Driver> V4l2Camera<D> {
    /// Negotiates and starts streaming on an opened device.
    pub fn with_driver(mut dev: D, cfg: &CameraConfig) -> Result<Self> {
        let name = dev.info().path.display().to_string();
        let offered = dev.formats(Queue::Capture)?;
        let mut sizes = std::collections::HashMap::new();
        for f in &offered {
            sizes.insert(*f, dev.frame_sizes(*f)?);
        }
        let choice = negotiate::choose_camera_format(
            &offered,
            &cfg.encoder_inputs,
            cfg.allow_passthrough,
            |f| sizes.get(&f).cloned().unwrap_or(super::FrameSizes::Unknown),
            (cfg.width, cfg.height),
        )
        .map_err(|msg| V4l2Error::Unsupported { device: name.clone(), msg })?;
        let want =
            Format { fourcc: choice.fourcc, width: choice.width, height: choice.height, bytesperline: 0, sizeimage: 0 };
        let format = dev.set_format(Queue::Capture, want)?;
        if format.fourcc != choice.fourcc || format.width % 2 != 0 || format.height % 2 != 0 {
            return Err(V4l2Error::Unsupported {
                device: name,
                msg: format!(
                    "asked for {} {}x{}, the driver set {} {}x{}",
                    choice.fourcc, choice.width, choice.height, format.fourcc, format.width, format.height
                ),
            });
        }
        let fps = dev.set_frame_rate(Queue::Capture, cfg.fps)?.unwrap_or((cfg.fps, 1));
        let n = dev.request_buffers(Queue::Capture, cfg.buffers.max(2))?;
        if n < 2 {
            return Err(V4l2Error::Unsupported {
                device: name,
                msg: format!("driver granted {n} buffers; streaming needs 2"),
            });
        }
        for i in 0..n {
            dev.queue_buffer(Queue::Capture, i, 0, 0)?;
        }
        dev.stream(Queue::Capture, true)?;
        let choice = CameraChoice { width: format.width, height: format.height, ..choice };
        tracing::info!(device = %name, driver = %dev.info().driver, format = %format.fourcc, width = format.width, height = format.height, fps = ?fps, buffers = n, passthrough = choice.passthrough, "camera streaming");
        Ok(V4l2Camera {
            dev,
            choice,
            format,
            fps,
            first_ts: None,
            last_seq: None,
            dropped: 0,
            wall_offset_us: clock_us(libc::CLOCK_REALTIME) - clock_us(libc::CLOCK_MONOTONIC),
        })
    }

    /// What was negotiated.
    pub fn choice(&self) -> CameraChoice {
        self.choice
    }

    pub fn device_path(&self) -> &std::path::Path {
        &self.dev.info().path
    }

    fn source_err(&self, e: V4l2Error) -> SourceError {
        // A camera that stops delivering (a loose CSI cable, a wedged USB device) is
        // treated like an unplugged one: the recorder closes it, records the gap and
        // reopens it, which is what recovers such devices.
        if e.is_gone() || matches!(e, V4l2Error::Timeout { .. }) {
            // The error names the device already.
            SourceError::Disconnected(e.to_string())
        } else {
            SourceError::Io {
                device: self.dev.info().path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        }
    }
}

/// Copies a captured buffer into a tightly packed frame (rows without padding).
fn pack(f: &Format, buf: &[u8], used: usize) -> Option<Vec<u8>> {
    let pf = f.fourcc.pixel_format()?;
    if pf == PixelFormat::H264 {
        return Some(buf[..used.min(buf.len())].to_vec());
    }
    let (w, h) = (f.width as usize, f.height as usize);
    let l = layout::layout(pf, w, h, f.bytesperline as usize, h)?;
    if used < l.len {
        return None;
    }
    layout::unpack(buf, &l.planes)
}

impl<D: Driver> FrameSource for V4l2Camera<D> {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            width: self.format.width,
            height: self.format.height,
            fps_num: self.fps.0,
            fps_den: self.fps.1.max(1),
            pixel_format: self.format.fourcc.pixel_format().unwrap_or(PixelFormat::I420),
        }
    }

    fn next_frame(&mut self) -> std::result::Result<Frame, SourceError> {
        loop {
            let got = self.dev.dequeue_buffer(Queue::Capture).map_err(|e| self.source_err(e))?;
            let Some(b) = got else {
                let r = self.dev.wait(FRAME_TIMEOUT_MS).map_err(|e| self.source_err(e))?;
                if !r.capture {
                    let device = self.dev.info().path.display().to_string();
                    return Err(self.source_err(V4l2Error::Timeout { device, ms: FRAME_TIMEOUT_MS, what: "a frame" }));
                }
                continue;
            };
            if let Some(prev) = self.last_seq {
                self.dropped += u64::from(b.sequence.wrapping_sub(prev).saturating_sub(1));
            }
            self.last_seq = Some(b.sequence);
            let corrupt = b.flags & super::BUF_FLAG_ERROR != 0;
            let format = self.format;
            let buf = self.dev.buffer(Queue::Capture, b.index);
            let data = if corrupt {
                None
            } else {
                buf.get(b.offset as usize..).and_then(|buf| pack(&format, buf, b.bytesused as usize))
            };
            self.dev.queue_buffer(Queue::Capture, b.index, 0, 0).map_err(|e| self.source_err(e))?;
            let Some(data) = data else {
                // A corrupt or short buffer is a dropped frame, not the end of the recording.
                tracing::warn!(
                    seq = b.sequence,
                    bytes = b.bytesused,
                    corrupt,
                    "camera delivered an unusable buffer; frame dropped"
                );
                self.dropped += 1;
                continue;
            };
            let first = *self.first_ts.get_or_insert(b.timestamp_us);
            return Ok(Frame {
                seq: u64::from(b.sequence),
                pts_us: b.timestamp_us.saturating_sub(first),
                wall_us: b.timestamp_us as i64 + self.wall_offset_us,
                format: self.format(),
                data,
            });
        }
    }

    fn describe(&self) -> String {
        let i = self.dev.info();
        format!(
            "{} ({} {}), {} {}x{} at {}/{} fps{}",
            i.path.display(),
            i.driver,
            i.card,
            self.format.fourcc,
            self.format.width,
            self.format.height,
            self.fps.0,
            self.fps.1.max(1),
            if self.choice.passthrough { ", camera H.264 recorded as is" } else { "" }
        )
    }

    fn dropped_frames(&self) -> u64 {
        self.dropped
    }
}
