//! Stateful V4L2 memory-to-memory codecs (Documentation/userspace-api/media/v4l/
//! dev-encoder.rst and dev-decoder.rst): `V4l2Encoder` as a `VideoEncoder`, and
//! `V4l2Decoder`, which the hardware check uses to decode a recording back.
//!
//! Owns the codec state machine: initialisation order (coded format, raw format, rate,
//! controls, buffers, stream on), feeding raw frames, collecting the bitstream, the drain
//! (`V4L2_ENC_CMD_STOP` → a buffer flagged LAST → `V4L2_ENC_CMD_START` to go on), and
//! source-change events (capture buffers reallocated). It must not choose the camera
//! format (negotiate does) nor look inside the bitstream beyond telling keyframes apart.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use super::{
    BUF_FLAG_KEYFRAME, BUF_FLAG_LAST, Driver, Event, Format, FourCc, Queue, RealDevice, Result, V4l2Error, cid,
};
use super::{layout, negotiate};
use crate::encode::{AccessUnit, EncodeError, VideoEncoder};
use crate::source::Frame;
use crate::{Codec, fwht, h264};

/// What the encoder is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecParams {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    /// The raw layout frames will arrive in.
    pub input: FourCc,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// An intra frame every this many frames.
    pub keyframe_interval_frames: u32,
}

const BUFFERS: u32 = 4;
/// Longest wait for the codec to hand back a buffer. A hardware encoder takes a few ms per
/// frame; vicodec under emulation tens of ms. A second means the device is wedged.
const WAIT_MS: i32 = 2000;
const ENC_CMD_START: u32 = 0;
const ENC_CMD_STOP: u32 = 1;

/// Map a device error to the encoder boundary.
fn enc_err(e: V4l2Error) -> EncodeError {
    let device = match &e {
        V4l2Error::Io { device, .. }
        | V4l2Error::Gone { device }
        | V4l2Error::Unsupported { device, .. }
        | V4l2Error::Timeout { device, .. } => device.clone(),
        V4l2Error::NotFound(_) => "v4l2".into(),
    };
    EncodeError::Device { device, msg: e.to_string() }
}

/// Waiting for a codec in 100 ms polls, up to `WAIT_MS` in all, then a `Timeout` naming
/// what was awaited.
struct Patience {
    waited: i32,
    what: &'static str,
}

impl Patience {
    fn new(what: &'static str) -> Self {
        Patience { waited: 0, what }
    }

    fn wait<D: Driver>(&mut self, dev: &mut D) -> Result<()> {
        if self.waited >= WAIT_MS {
            return Err(V4l2Error::Timeout {
                device: dev.info().path.display().to_string(),
                ms: WAIT_MS,
                what: self.what,
            });
        }
        dev.wait(100)?;
        self.waited += 100;
        Ok(())
    }
}

/// One non-blocking look at a codec's capture queue.
enum Dq {
    Buffer(super::Dequeued),
    Empty,
    /// EPIPE: the queue already returned its LAST buffer (the drain is complete).
    PastLast,
}

fn dequeue_result<D: Driver>(dev: &mut D) -> Result<Dq> {
    match dev.dequeue_buffer(Queue::Capture) {
        Ok(Some(b)) => Ok(Dq::Buffer(b)),
        Ok(None) => Ok(Dq::Empty),
        Err(V4l2Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EPIPE) => Ok(Dq::PastLast),
        Err(e) => Err(e),
    }
}

/// Keyframe per the bitstream itself; the buffer flag is only a hint some drivers omit.
fn is_keyframe(codec: Codec, data: &[u8], flags: u32) -> bool {
    match codec {
        Codec::H264 => h264::is_idr(data),
        Codec::Fwht => fwht::parse_header(data).map(|h| h.is_intra()).unwrap_or(flags & BUF_FLAG_KEYFRAME != 0),
    }
}

pub struct V4l2Encoder<D: Driver = RealDevice> {
    pub(super) dev: D,
    p: CodecParams,
    raw: Format,
    free_output: Vec<u32>,
    /// Capture buffers we hold (dequeued, not yet queued again): only between a LAST
    /// buffer and the restart.
    held_capture: Vec<u32>,
    /// Frame times by the timestamp the driver copies from output to capture buffers.
    times: HashMap<u64, (u64, i64)>,
    out: VecDeque<AccessUnit>,
    /// Parameter sets that came without a picture, prepended to the next access unit.
    header: Vec<u8>,
    force_key_supported: bool,
    frames_in: u64,
    name: &'static str,
}

impl<D: Driver> std::fmt::Debug for V4l2Encoder<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Encoder").field("device", &self.dev.info().path).field("params", &self.p).finish()
    }
}

impl V4l2Encoder<RealDevice> {
    /// Opens `device`, or the first M2M device whose capture queue offers the codec.
    pub fn open(device: Option<&Path>, p: CodecParams) -> std::result::Result<Self, EncodeError> {
        let path = match device {
            Some(d) => d.to_owned(),
            None => {
                let found = super::scan(Path::new("/dev"));
                super::find_encoder(&found, FourCc::of_codec(p.codec)).map(|f| f.path.clone()).ok_or_else(|| {
                    EncodeError::Device {
                        device: "/dev/video*".into(),
                        msg: format!("no V4L2 encoder offers {}", p.codec.name()),
                    }
                })?
            }
        };
        Self::with_driver(RealDevice::open(&path).map_err(enc_err)?, p)
    }
}

impl<D: Driver> V4l2Encoder<D> {
    pub fn with_driver(mut dev: D, p: CodecParams) -> std::result::Result<Self, EncodeError> {
        let coded = FourCc::of_codec(p.codec);
        let name = dev.info().path.display().to_string();
        let bad = |msg: String| EncodeError::Device { device: name.clone(), msg };
        // Events first, so nothing raised during setup is missed. Not every driver sends
        // them (vicodec's encoder has no source changes), so refusal is fine.
        for ev in [super::EVENT_EOS, super::EVENT_SOURCE_CHANGE] {
            if let Err(e) = dev.subscribe(ev) {
                tracing::debug!(device = %name, event = ev, error = %e, "event not supported");
            }
        }
        // Coded format first: per the encoder spec it decides which raw formats apply.
        let size_hint = (p.width * p.height * 3 / 2).max(256 << 10);
        let cf = dev
            .set_format(
                Queue::Capture,
                Format { fourcc: coded, width: p.width, height: p.height, bytesperline: 0, sizeimage: size_hint },
            )
            .map_err(enc_err)?;
        if cf.fourcc != coded {
            return Err(bad(format!("the device does not encode {} (it set {})", p.codec.name(), cf.fourcc)));
        }
        let raw = dev
            .set_format(
                Queue::Output,
                Format { fourcc: p.input, width: p.width, height: p.height, bytesperline: 0, sizeimage: 0 },
            )
            .map_err(enc_err)?;
        if raw.fourcc != p.input || raw.width < p.width || raw.height < p.height {
            return Err(bad(format!(
                "asked to encode {} {}x{}, the device set {} {}x{}",
                p.input, p.width, p.height, raw.fourcc, raw.width, raw.height
            )));
        }
        if (raw.width, raw.height) != (p.width, p.height) {
            // The device aligned the buffer (vicodec: to 8/16; bcm2835-codec: 1080 -> 1088):
            // the picture is the top-left crop, or the stream would carry the padding.
            dev.set_crop(Queue::Output, p.width, p.height).map_err(|e| {
                bad(format!(
                    "the device pads {}x{} to {}x{} and cannot crop back: {e}",
                    p.width, p.height, raw.width, raw.height
                ))
            })?;
        }
        dev.set_frame_rate(Queue::Output, p.fps).map_err(enc_err)?;
        let gop = p.keyframe_interval_frames.max(1) as i32;
        let mut controls = vec![(cid::BITRATE, p.bitrate_bps as i32, "bitrate"), (cid::GOP_SIZE, gop, "GOP size")];
        if p.codec == Codec::H264 {
            controls.extend([
                (cid::H264_I_PERIOD, gop, "H.264 I period"),
                // High profile (4), level 4.0 (11): what the Pi's encoder does at 1080p30.
                (cid::H264_PROFILE, 4, "H.264 profile"),
                (cid::H264_LEVEL, 11, "H.264 level"),
                // SPS/PPS before every IDR, so each chunk decodes alone.
                (cid::REPEAT_SEQ_HEADER, 1, "inline SPS/PPS"),
                (cid::PREPEND_SPSPPS_TO_IDR, 1, "SPS/PPS before IDR"),
            ]);
        }
        for (id, v, what) in controls {
            if let Err(e) = dev.set_control(id, v) {
                tracing::info!(device = %name, control = what, value = v, error = %e, "encoder control not applied");
            }
        }
        let n_out = dev.request_buffers(Queue::Output, BUFFERS).map_err(enc_err)?;
        let n_cap = dev.request_buffers(Queue::Capture, BUFFERS).map_err(enc_err)?;
        if n_out == 0 || n_cap == 0 {
            return Err(bad(format!("driver granted {n_out} output and {n_cap} capture buffers")));
        }
        for i in 0..n_cap {
            dev.queue_buffer(Queue::Capture, i, 0, 0).map_err(enc_err)?;
        }
        dev.stream(Queue::Output, true).map_err(enc_err)?;
        dev.stream(Queue::Capture, true).map_err(enc_err)?;
        tracing::info!(device = %name, driver = %dev.info().driver, codec = p.codec.name(), input = %raw.fourcc, width = raw.width, height = raw.height, "hardware encoder streaming");
        Ok(V4l2Encoder {
            dev,
            p,
            raw,
            free_output: (0..n_out).collect(),
            held_capture: Vec::new(),
            times: HashMap::new(),
            out: VecDeque::new(),
            header: Vec::new(),
            force_key_supported: true,
            frames_in: 0,
            name: match p.codec {
                Codec::H264 => "v4l2-h264",
                Codec::Fwht => "v4l2-fwht",
            },
        })
    }

    /// The raw formats the device takes, best first (for negotiation with the camera).
    pub fn inputs(&mut self) -> Vec<FourCc> {
        negotiate::hardware_encoder_inputs(&self.dev.formats(Queue::Output).unwrap_or_default())
    }

    fn reclaim_output(&mut self) -> Result<()> {
        while let Some(b) = self.dev.dequeue_buffer(Queue::Output)? {
            self.free_output.push(b.index);
        }
        Ok(())
    }

    fn handle_events(&mut self) -> Result<()> {
        while let Some(ev) = self.dev.dequeue_event()? {
            if ev == Event::SourceChange {
                // The coded buffer size changed: reallocate the capture side only; the
                // raw side and everything already queued there are untouched.
                let f = self.dev.get_format(Queue::Capture)?;
                tracing::info!(device = %self.dev.info().path.display(), sizeimage = f.sizeimage, "encoder source change; reallocating capture buffers");
                self.dev.stream(Queue::Capture, false)?;
                let n = self.dev.request_buffers(Queue::Capture, BUFFERS)?;
                for i in 0..n {
                    self.dev.queue_buffer(Queue::Capture, i, 0, 0)?;
                }
                self.held_capture.clear();
                self.dev.stream(Queue::Capture, true)?;
            }
        }
        Ok(())
    }

    /// Takes every finished bitstream buffer; returns true once a LAST buffer was seen.
    fn collect(&mut self) -> Result<bool> {
        self.handle_events()?;
        loop {
            let b = match dequeue_result(&mut self.dev)? {
                Dq::Buffer(b) => b,
                Dq::Empty => return Ok(false),
                Dq::PastLast => return Ok(true),
            };
            let last = b.flags & BUF_FLAG_LAST != 0;
            if b.bytesused > 0 {
                let (at, len) = (b.offset as usize, b.bytesused as usize);
                let data =
                    self.dev.buffer(Queue::Capture, b.index).get(at..at + len).map(<[u8]>::to_vec).unwrap_or_default();
                if self.p.codec == Codec::H264 && !h264::has_picture(&data) {
                    // Some encoders (the Pi's bcm2835-codec) hand SPS/PPS over in a buffer
                    // of their own before the first IDR: they belong to the next picture.
                    self.header.extend_from_slice(&data);
                } else if !data.is_empty() {
                    let data =
                        if self.header.is_empty() { data } else { [std::mem::take(&mut self.header), data].concat() };
                    let (pts_us, wall_us) = self.times.remove(&b.timestamp_us).unwrap_or((b.timestamp_us, 0));
                    let keyframe = is_keyframe(self.p.codec, &data, b.flags);
                    self.out.push_back(AccessUnit { data, pts_us, wall_us, keyframe });
                }
            }
            if last {
                // After LAST the queue stays stopped until ENC_CMD_START; keep the buffer.
                self.held_capture.push(b.index);
                return Ok(true);
            }
            self.dev.queue_buffer(Queue::Capture, b.index, 0, 0)?;
        }
    }

    fn encode_inner(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let f = &frame.format;
        if (f.width, f.height) != (self.p.width, self.p.height) {
            return Err(EncodeError::SizeMismatch {
                seq: frame.seq,
                got_w: f.width,
                got_h: f.height,
                want_w: self.p.width,
                want_h: self.p.height,
            });
        }
        if FourCc::of_pixel_format(f.pixel_format) != self.p.input {
            return Err(EncodeError::UnsupportedPixelFormat { seq: frame.seq, format: f.pixel_format });
        }
        // A free raw buffer: reclaim finished ones, waiting (and collecting output, which
        // is what frees them) while the codec is busy.
        let mut patience = Patience::new("a free raw buffer");
        loop {
            self.reclaim_output().map_err(enc_err)?;
            if !self.free_output.is_empty() {
                break;
            }
            self.collect().map_err(enc_err)?;
            patience.wait(&mut self.dev).map_err(enc_err)?;
        }
        let idx = self.free_output.pop().unwrap_or_default();
        let (w, h, bpl, coded_h) =
            (f.width as usize, f.height as usize, self.raw.bytesperline as usize, self.raw.height as usize);
        let buf = self.dev.buffer(Queue::Output, idx);
        let used = layout::layout(f.pixel_format, w, h, bpl, coded_h)
            .and_then(|l| layout::pack_into(buf, &frame.data, &l.planes).map(|()| l.len))
            .ok_or(EncodeError::BadFrameData {
                seq: frame.seq,
                got: frame.data.len(),
                expected: f.pixel_format.frame_len(f.width, f.height).unwrap_or(0),
            })?;
        // The timestamp is our key to the frame's times: drivers copy it to the bitstream
        // buffer. Media time is unique per frame (the chunker insists on it).
        self.times.insert(frame.pts_us, (frame.pts_us, frame.wall_us));
        self.dev.queue_buffer(Queue::Output, idx, used as u32, frame.pts_us).map_err(enc_err)?;
        self.frames_in += 1;
        self.collect().map_err(enc_err)?;
        Ok(())
    }
}

impl<D: Driver> VideoEncoder for V4l2Encoder<D> {
    fn encode(&mut self, frame: &Frame) -> std::result::Result<Vec<AccessUnit>, EncodeError> {
        self.encode_inner(frame)?;
        Ok(self.out.drain(..).collect())
    }

    fn request_keyframe(&mut self) {
        if !self.force_key_supported {
            return;
        }
        if let Err(e) = self.dev.set_control(cid::FORCE_KEY_FRAME, 1) {
            // vicodec has no such control: keyframes then come on the GOP schedule only.
            tracing::info!(device = %self.dev.info().path.display(), error = %e, "encoder cannot force a keyframe; relying on the GOP period");
            self.force_key_supported = false;
        }
    }

    fn flush(&mut self) -> std::result::Result<Vec<AccessUnit>, EncodeError> {
        self.dev.encoder_command(ENC_CMD_STOP).map_err(enc_err)?;
        let mut patience = Patience::new("the LAST buffer of a drain");
        while !self.collect().map_err(enc_err)? {
            patience.wait(&mut self.dev).map_err(enc_err)?;
        }
        // Drained: restart so the same encoder serves the next run (pause/resume).
        self.dev.encoder_command(ENC_CMD_START).map_err(enc_err)?;
        for i in std::mem::take(&mut self.held_capture) {
            self.dev.queue_buffer(Queue::Capture, i, 0, 0).map_err(enc_err)?;
        }
        self.reclaim_output().map_err(enc_err)?;
        self.times.clear();
        Ok(self.out.drain(..).collect())
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// A stateful decoder: coded frames in, raw frames out. Used to prove a recording decodes
/// on the device (`lucidd hw decode`), not in the recording path.
pub struct V4l2Decoder<D: Driver = RealDevice> {
    dev: D,
    coded: FourCc,
    raw: Option<Format>,
    free_output: Vec<u32>,
    capture_on: bool,
    frames: VecDeque<(Format, Vec<u8>)>,
}

impl V4l2Decoder<RealDevice> {
    pub fn open(device: Option<&Path>, codec: Codec) -> Result<Self> {
        let path = match device {
            Some(d) => d.to_owned(),
            None => {
                let found = super::scan(Path::new("/dev"));
                super::find_decoder(&found, FourCc::of_codec(codec))
                    .map(|f| f.path.clone())
                    .ok_or_else(|| V4l2Error::NotFound(format!("no V4L2 decoder takes {}", codec.name())))?
            }
        };
        Self::with_driver(RealDevice::open(&path)?, codec)
    }
}

impl<D: Driver> V4l2Decoder<D> {
    pub fn with_driver(mut dev: D, codec: Codec) -> Result<Self> {
        let coded = FourCc::of_codec(codec);
        dev.subscribe(super::EVENT_SOURCE_CHANGE)?;
        let f = dev.set_format(
            Queue::Output,
            Format { fourcc: coded, width: 0, height: 0, bytesperline: 0, sizeimage: 1 << 20 },
        )?;
        if f.fourcc != coded {
            return Err(V4l2Error::Unsupported {
                device: dev.info().path.display().to_string(),
                msg: format!("does not decode {}", codec.name()),
            });
        }
        let n = dev.request_buffers(Queue::Output, BUFFERS)?;
        dev.stream(Queue::Output, true)?;
        Ok(V4l2Decoder {
            dev,
            coded,
            raw: None,
            free_output: (0..n).collect(),
            capture_on: false,
            frames: VecDeque::new(),
        })
    }

    /// Sets up the raw side once the decoder has parsed the stream header.
    fn start_capture(&mut self) -> Result<()> {
        let f = self.dev.get_format(Queue::Capture)?;
        // Ask for a layout we compare in (YU12) when the decoder can give it.
        let want = Format { fourcc: FourCc::YU12, ..f };
        let f = self.dev.set_format(Queue::Capture, want).unwrap_or(f);
        if self.capture_on {
            self.dev.stream(Queue::Capture, false)?;
        }
        let n = self.dev.request_buffers(Queue::Capture, BUFFERS + 2)?;
        for i in 0..n {
            self.dev.queue_buffer(Queue::Capture, i, 0, 0)?;
        }
        self.dev.stream(Queue::Capture, true)?;
        self.capture_on = true;
        self.raw = Some(f);
        Ok(())
    }

    /// Collects decoded frames; true once the LAST buffer of a drain was seen.
    fn collect(&mut self) -> Result<bool> {
        while let Some(ev) = self.dev.dequeue_event()? {
            if ev == Event::SourceChange {
                self.start_capture()?;
            }
        }
        while let Some(b) = self.dev.dequeue_buffer(Queue::Output)? {
            self.free_output.push(b.index);
        }
        if !self.capture_on {
            return Ok(false);
        }
        loop {
            let b = match dequeue_result(&mut self.dev)? {
                Dq::Buffer(b) => b,
                Dq::Empty => return Ok(false),
                Dq::PastLast => return Ok(true),
            };
            let f =
                self.raw.unwrap_or(Format { fourcc: self.coded, width: 0, height: 0, bytesperline: 0, sizeimage: 0 });
            if b.bytesused > 0 {
                let (at, len) = (b.offset as usize, b.bytesused as usize);
                let data =
                    self.dev.buffer(Queue::Capture, b.index).get(at..at + len).map(<[u8]>::to_vec).unwrap_or_default();
                self.frames.push_back((f, data));
            }
            if b.flags & BUF_FLAG_LAST != 0 {
                return Ok(true);
            }
            self.dev.queue_buffer(Queue::Capture, b.index, 0, 0)?;
        }
    }

    /// Queues one coded frame; returns frames decoded so far (format and bytes as the
    /// driver laid them out).
    pub fn decode(&mut self, coded: &[u8]) -> Result<Vec<(Format, Vec<u8>)>> {
        let mut patience = Patience::new("a free coded buffer");
        while self.free_output.is_empty() {
            self.collect()?;
            if self.free_output.is_empty() {
                patience.wait(&mut self.dev)?;
            }
        }
        let idx = self.free_output.pop().unwrap_or_default();
        let device = self.dev.info().path.display().to_string();
        let buf = self.dev.buffer(Queue::Output, idx);
        if coded.len() > buf.len() {
            return Err(V4l2Error::Unsupported {
                device,
                msg: format!("coded frame of {} bytes exceeds the {}-byte buffer", coded.len(), buf.len()),
            });
        }
        buf[..coded.len()].copy_from_slice(coded);
        self.dev.queue_buffer(Queue::Output, idx, coded.len() as u32, 0)?;
        self.collect()?;
        Ok(self.frames.drain(..).collect())
    }

    /// Drains the decoder (`V4L2_DEC_CMD_STOP`) and returns the remaining frames.
    pub fn finish(&mut self) -> Result<Vec<(Format, Vec<u8>)>> {
        self.dev.decoder_command(1)?;
        let mut patience = Patience::new("the decoder's LAST buffer");
        while !self.collect()? {
            patience.wait(&mut self.dev)?;
        }
        Ok(self.frames.drain(..).collect())
    }
}
