//! Video encoding: the `VideoEncoder` trait, `AccessUnit`, the OpenH264 software encoder
//! behind it, the `ToI420` converter in front of it, and `CameraH264` for cameras that
//! encode themselves. (The V4L2 hardware encoder is `v4l2::V4l2Encoder`.)
//!
//! Owns turning raw frames into Annex-B H.264 access units with keyframes on schedule or on
//! request. It must not mux, chunk or pace; and it must not pass unchecked buffers to the C
//! encoder (sizes are validated here so OpenH264's wrapper never asserts).

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder, FrameRate, FrameType, IntraFramePeriod, Profile, RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSlices;

use crate::h264;
use crate::source::{Frame, PixelFormat};

/// One encoded picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Annex-B bytes (start-code prefixed NAL units). IDR units carry SPS and PPS first.
    pub data: Vec<u8>,
    /// Media time of the source frame, µs.
    pub pts_us: u64,
    /// Unix time of capture of the source frame, µs.
    pub wall_us: i64,
    /// True for an IDR access unit (a random-access point).
    pub keyframe: bool,
}

/// Errors from an encoder.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("invalid encoder configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot create the {encoder} encoder: {source}")]
    Init {
        encoder: &'static str,
        #[source]
        source: openh264::Error,
    },
    #[error("frame {seq} is {got_w}x{got_h}, encoder configured for {want_w}x{want_h}")]
    SizeMismatch { seq: u64, got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
    #[error("frame {seq} has pixel format {format:?}; the encoder takes I420 only")]
    UnsupportedPixelFormat { seq: u64, format: PixelFormat },
    #[error("frame {seq} has {got} bytes of pixel data, expected {expected}")]
    BadFrameData { seq: u64, got: usize, expected: usize },
    /// A V4L2 encoder device failed (ioctl error, device gone, timeout).
    #[error("{device}: {msg}")]
    Device { device: String, msg: String },
    #[error("{encoder} failed on frame {seq}: {source}")]
    Encode {
        encoder: &'static str,
        seq: u64,
        #[source]
        source: openh264::Error,
    },
}

/// A frame-in, access-units-out encoder. Blocking; runs on the capture thread.
pub trait VideoEncoder: Send {
    /// Encodes one frame. Usually one access unit; may be none (a skipped frame) or, for
    /// encoders with delay, several.
    fn encode(&mut self, frame: &Frame) -> Result<Vec<AccessUnit>, EncodeError>;
    /// Makes the next encoded frame an IDR (with SPS/PPS).
    fn request_keyframe(&mut self);
    /// Drains access units still buffered inside the encoder.
    fn flush(&mut self) -> Result<Vec<AccessUnit>, EncodeError>;
    /// Short name for logs.
    fn name(&self) -> &'static str;
}

/// Settings for `OpenH264Encoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Even, up to 3840x2160 (OpenH264's limit).
    pub width: u32,
    pub height: u32,
    /// Nominal frames per second (1..=120); rate control budgets bits per frame from it.
    pub fps: u32,
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
    /// An IDR every this many frames (the GOP length). Must be >= 1.
    pub keyframe_interval_frames: u32,
}

impl EncoderConfig {
    /// Defaults: 2 Mbit/s at 720p scaled by area (min 200 kbit/s), one IDR per second.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let area = u64::from(width) * u64::from(height);
        let bitrate = (2_000_000 * area / (1280 * 720)).clamp(200_000, 8_000_000) as u32;
        Self { width, height, fps, bitrate_bps: bitrate, keyframe_interval_frames: fps.max(1) }
    }
}

/// OpenH264 (built from source) producing Constrained Baseline H.264.
pub struct OpenH264Encoder {
    cfg: EncoderConfig,
    inner: Encoder,
    keyframe_requested: bool,
    frames_in: u64,
}

impl std::fmt::Debug for OpenH264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenH264Encoder").field("cfg", &self.cfg).field("frames_in", &self.frames_in).finish()
    }
}

const NAME: &str = "openh264";

impl OpenH264Encoder {
    pub fn new(cfg: EncoderConfig) -> Result<Self, EncodeError> {
        if !cfg.width.is_multiple_of(2) || !cfg.height.is_multiple_of(2) || cfg.width < 16 || cfg.height < 16 {
            return Err(EncodeError::InvalidConfig(format!(
                "size {}x{} must be even and >= 16x16",
                cfg.width, cfg.height
            )));
        }
        if cfg.width.max(cfg.height) > 3840 || cfg.width.min(cfg.height) > 2160 {
            return Err(EncodeError::InvalidConfig(format!("size {}x{} exceeds 3840x2160", cfg.width, cfg.height)));
        }
        if !(1..=120).contains(&cfg.fps) {
            return Err(EncodeError::InvalidConfig(format!("fps {} outside 1..=120", cfg.fps)));
        }
        if cfg.keyframe_interval_frames == 0 {
            return Err(EncodeError::InvalidConfig("keyframe_interval_frames must be >= 1".into()));
        }
        if !(10_000..=100_000_000).contains(&cfg.bitrate_bps) {
            return Err(EncodeError::InvalidConfig(format!("bitrate {} bit/s outside 10k..100M", cfg.bitrate_bps)));
        }
        let oh_cfg = openh264::encoder::EncoderConfig::new()
            .bitrate(BitRate::from_bps(cfg.bitrate_bps))
            .rate_control_mode(RateControlMode::Bitrate)
            // A recorder must keep every frame: skipped frames would leave holes in evidence.
            .skip_frames(false)
            .max_frame_rate(FrameRate::from_hz(cfg.fps as f32))
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            // Same SPS/PPS ids every IDR: the avcC in the init segment stays valid for the
            // whole recording, and SPS/PPS are repeated in-band before each IDR.
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .intra_frame_period(IntraFramePeriod::from_num_frames(cfg.keyframe_interval_frames))
            // IDRs only on schedule or on request, so chunk boundaries are predictable.
            .scene_change_detect(false)
            // One thread: deterministic output, and the daemon's other threads need the cores.
            .num_threads(1);
        let inner = Encoder::with_api_config(OpenH264API::from_source(), oh_cfg)
            .map_err(|source| EncodeError::Init { encoder: NAME, source })?;
        Ok(Self { cfg, inner, keyframe_requested: false, frames_in: 0 })
    }

    /// The configuration in effect.
    pub fn config(&self) -> EncoderConfig {
        self.cfg
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn encode(&mut self, frame: &Frame) -> Result<Vec<AccessUnit>, EncodeError> {
        let f = &frame.format;
        if f.pixel_format != PixelFormat::I420 {
            return Err(EncodeError::UnsupportedPixelFormat { seq: frame.seq, format: f.pixel_format });
        }
        if (f.width, f.height) != (self.cfg.width, self.cfg.height) {
            return Err(EncodeError::SizeMismatch {
                seq: frame.seq,
                got_w: f.width,
                got_h: f.height,
                want_w: self.cfg.width,
                want_h: self.cfg.height,
            });
        }
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let expected = w * h * 3 / 2;
        if frame.data.len() != expected {
            return Err(EncodeError::BadFrameData { seq: frame.seq, got: frame.data.len(), expected });
        }
        let (y, rest) = frame.data.split_at(w * h);
        let (u, v) = rest.split_at(w * h / 4);
        // Sizes were checked above, so YUVSlices' asserts hold.
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        // Forcing before the first frame would touch an uninitialised encoder; the first
        // frame is an IDR anyway.
        if self.keyframe_requested && self.frames_in > 0 {
            self.inner.force_intra_frame();
        }
        self.keyframe_requested = false;
        let ts = openh264::Timestamp::from_millis(frame.pts_us / 1000);
        let bs = self.inner.encode_at(&yuv, ts).map_err(|source| EncodeError::Encode {
            encoder: NAME,
            seq: frame.seq,
            source,
        })?;
        self.frames_in += 1;
        let frame_type = bs.frame_type();
        let data = bs.to_vec();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) || data.is_empty() {
            return Ok(Vec::new());
        }
        // Trust the bitstream, not only the reported type: a keyframe for the muxer means
        // an IDR slice is present.
        let keyframe = h264::is_idr(&data);
        Ok(vec![AccessUnit { data, pts_us: frame.pts_us, wall_us: frame.wall_us, keyframe }])
    }

    fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    fn flush(&mut self) -> Result<Vec<AccessUnit>, EncodeError> {
        // OpenH264 in real-time mode has no B-frames or lookahead: nothing is buffered.
        Ok(Vec::new())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// An encoder behind a layout converter: cameras give NV12 or YUYV, OpenH264 takes I420
/// only (`to_i420`). I420 frames pass untouched.
#[derive(Debug)]
pub struct ToI420<E>(pub E);

impl<E: VideoEncoder> VideoEncoder for ToI420<E> {
    fn encode(&mut self, frame: &Frame) -> Result<Vec<AccessUnit>, EncodeError> {
        if frame.format.pixel_format == PixelFormat::I420 {
            return self.0.encode(frame);
        }
        let conv = crate::convert::to_i420(frame)
            .ok_or(EncodeError::UnsupportedPixelFormat { seq: frame.seq, format: frame.format.pixel_format })?;
        self.0.encode(&conv)
    }
    fn request_keyframe(&mut self) {
        self.0.request_keyframe()
    }
    fn flush(&mut self) -> Result<Vec<AccessUnit>, EncodeError> {
        self.0.flush()
    }
    fn name(&self) -> &'static str {
        self.0.name()
    }
}

/// A camera that encodes H.264 itself (many UVC cameras): its access units are recorded
/// as they come, the keyframe flag read from the bitstream.
#[derive(Debug, Default)]
pub struct CameraH264;

impl VideoEncoder for CameraH264 {
    fn encode(&mut self, frame: &Frame) -> Result<Vec<AccessUnit>, EncodeError> {
        if frame.format.pixel_format != PixelFormat::H264 {
            return Err(EncodeError::UnsupportedPixelFormat { seq: frame.seq, format: frame.format.pixel_format });
        }
        Ok(vec![AccessUnit {
            keyframe: h264::is_idr(&frame.data),
            data: frame.data.clone(),
            pts_us: frame.pts_us,
            wall_us: frame.wall_us,
        }])
    }
    // UVC has no standard "force IDR" request; the camera's own GOP decides the cuts.
    fn request_keyframe(&mut self) {}
    fn flush(&mut self) -> Result<Vec<AccessUnit>, EncodeError> {
        Ok(Vec::new())
    }
    fn name(&self) -> &'static str {
        "camera-h264"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{FrameSource, TestPattern, TestPatternConfig};

    fn setup(interval: u32) -> (TestPattern, OpenH264Encoder) {
        let src = TestPattern::new(TestPatternConfig { width: 160, height: 120, fps: 15, paced: false }).unwrap();
        let mut cfg = EncoderConfig::new(160, 120, 15);
        cfg.keyframe_interval_frames = interval;
        (src, OpenH264Encoder::new(cfg).unwrap())
    }

    #[test]
    fn idrs_on_schedule_and_on_request() {
        let (mut src, mut enc) = setup(5);
        let mut keys = Vec::new();
        for i in 0..12u64 {
            let f = src.next_frame().unwrap();
            if i == 7 {
                enc.request_keyframe();
            }
            let aus = enc.encode(&f).unwrap();
            assert_eq!(aus.len(), 1, "every frame kept (skip_frames off)");
            assert_eq!(aus[0].pts_us, f.pts_us);
            assert_eq!(aus[0].wall_us, f.wall_us);
            if aus[0].keyframe {
                keys.push(i);
                assert!(h264::parameter_sets(&aus[0].data).is_some(), "SPS/PPS before IDR {i}");
            }
        }
        assert!(keys.starts_with(&[0, 5]), "scheduled IDRs: {keys:?}");
        assert!(keys.contains(&7), "requested IDR at frame 7: {keys:?}");
        assert!(enc.flush().unwrap().is_empty());
        assert_eq!(enc.name(), "openh264");
    }

    #[test]
    fn rejects_bad_frames_without_panicking() {
        let (mut src, mut enc) = setup(15);
        let mut f = src.next_frame().unwrap();
        f.data.truncate(10);
        assert!(matches!(enc.encode(&f), Err(EncodeError::BadFrameData { .. })));
        let mut f = src.next_frame().unwrap();
        f.format.width = 320;
        assert!(matches!(enc.encode(&f), Err(EncodeError::SizeMismatch { .. })));
        let mut f = src.next_frame().unwrap();
        f.format.pixel_format = PixelFormat::Nv12;
        assert!(matches!(enc.encode(&f), Err(EncodeError::UnsupportedPixelFormat { .. })));
        assert!(OpenH264Encoder::new(EncoderConfig::new(161, 120, 15)).is_err());
        assert!(
            OpenH264Encoder::new(EncoderConfig { keyframe_interval_frames: 0, ..EncoderConfig::new(160, 120, 15) })
                .is_err()
        );
    }

    #[test]
    fn nv12_reaches_openh264_through_the_converter_and_camera_h264_passes_as_is() {
        let mut enc = ToI420(OpenH264Encoder::new(EncoderConfig::new(64, 48, 10)).unwrap());
        let format = crate::source::VideoFormat {
            width: 64,
            height: 48,
            fps_num: 10,
            fps_den: 1,
            pixel_format: PixelFormat::Nv12,
        };
        let frame = Frame { seq: 0, pts_us: 0, wall_us: 0, format, data: vec![90; 64 * 48 * 3 / 2] };
        let aus = [enc.encode(&frame).unwrap(), enc.flush().unwrap()].concat();
        assert!(aus.first().is_some_and(|a| a.keyframe), "an IDR from an NV12 frame");
        let bad =
            Frame { format: crate::source::VideoFormat { pixel_format: PixelFormat::H264, ..format }, ..frame.clone() };
        assert!(matches!(enc.encode(&bad), Err(EncodeError::UnsupportedPixelFormat { .. })));

        let idr = aus[0].data.clone();
        let mut cam = CameraH264;
        let f = Frame {
            format: crate::source::VideoFormat { pixel_format: PixelFormat::H264, ..format },
            data: idr.clone(),
            pts_us: 7,
            ..frame.clone()
        };
        let out = cam.encode(&f).unwrap();
        assert_eq!((out.len(), out[0].keyframe, out[0].pts_us), (1, true, 7));
        assert_eq!(out[0].data, idr, "recorded as is");
        assert!(
            matches!(cam.encode(&frame), Err(EncodeError::UnsupportedPixelFormat { .. })),
            "raw frames are not H.264"
        );
    }
}
