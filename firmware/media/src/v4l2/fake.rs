//! A scripted V4L2 driver for unit tests: a camera (frames with driver timestamps and
//! sequence numbers, optional padding, drops and unplug) or a stateful encoder (one coded
//! buffer per raw buffer, GOP keyframes, the STOP/LAST/EPIPE/START drain protocol, and an
//! injected source change). It mimics the kernel's observable behaviour only.

use std::collections::VecDeque;
use std::path::PathBuf;

use super::{
    BUF_FLAG_LAST, Dequeued, DeviceInfo, Driver, Event, Format, FourCc, FrameSizes, Queue, Ready, Result, Role,
    V4l2Error,
};
use crate::Codec;

pub enum Mode {
    Camera,
    Encoder(Codec),
}

pub struct Fake {
    pub info: DeviceInfo,
    pub mode: Mode,
    pub capture_formats: Vec<FourCc>,
    pub output_formats: Vec<FourCc>,
    pub sizes: FrameSizes,
    /// Extra bytes per row the driver adds (camera: capture queue; encoder: output queue).
    pub padding: u32,
    pub fmt: [Option<Format>; 2],
    bufs: [Vec<Vec<u8>>; 2],
    queued: [VecDeque<(u32, u32, u64)>; 2],
    done_output: VecDeque<Dequeued>,
    streaming: [bool; 2],
    pub frame_no: u32,
    /// Camera: sequence numbers skip these frame numbers (dropped by the "driver").
    pub skip_seq_at: Vec<u32>,
    /// Camera: ENODEV after this many frames.
    pub gone_after: Option<u32>,
    /// Camera: no more frames (and no error) after this many.
    pub stall_after: Option<u32>,
    pub gop: u32,
    pub unsupported_controls: Vec<u32>,
    pub controls: Vec<(u32, i32)>,
    force_key: bool,
    draining: bool,
    stopped_after_last: bool,
    pub events: VecDeque<Event>,
    /// Encoder: raise a source change after this many coded frames.
    pub source_change_after: Option<u32>,
    pub reallocations: u32,
    /// Encoder: raw sizes are rounded up to this (like vicodec's and bcm2835-codec's
    /// alignment); the visible size then comes from the crop.
    pub align: u32,
    pub crop: Option<(u32, u32)>,
    /// H.264 encoder: hand SPS/PPS over in a buffer of their own before the first frame
    /// (as bcm2835-codec does).
    pub header_buffer: bool,
}

fn idx(q: Queue) -> usize {
    match q {
        Queue::Capture => 0,
        Queue::Output => 1,
    }
}

impl Fake {
    pub fn camera(formats: &[FourCc]) -> Fake {
        Fake::new(Mode::Camera, Role::Camera, formats.to_vec(), Vec::new())
    }

    pub fn encoder(codec: Codec, inputs: &[FourCc]) -> Fake {
        let coded = super::FourCc::of_codec(codec);
        Fake::new(Mode::Encoder(codec), Role::Codec, vec![coded], inputs.to_vec())
    }

    fn new(mode: Mode, role: Role, capture_formats: Vec<FourCc>, output_formats: Vec<FourCc>) -> Fake {
        Fake {
            info: DeviceInfo {
                path: PathBuf::from("/dev/fake0"),
                driver: "fake".into(),
                card: "Fake".into(),
                bus: "platform:fake".into(),
                role,
                mplane: false,
            },
            mode,
            capture_formats,
            output_formats,
            sizes: FrameSizes::Discrete(vec![(320, 240), (640, 480)]),
            padding: 0,
            fmt: [None, None],
            bufs: [Vec::new(), Vec::new()],
            queued: [VecDeque::new(), VecDeque::new()],
            done_output: VecDeque::new(),
            streaming: [false; 2],
            frame_no: 0,
            skip_seq_at: Vec::new(),
            gone_after: None,
            stall_after: None,
            gop: 10,
            unsupported_controls: Vec::new(),
            controls: Vec::new(),
            force_key: false,
            draining: false,
            stopped_after_last: false,
            events: VecDeque::new(),
            source_change_after: None,
            reallocations: 0,
            align: 1,
            crop: None,
            header_buffer: false,
        }
    }

    fn gone(&self) -> V4l2Error {
        V4l2Error::Gone { device: "/dev/fake0".into() }
    }

    fn layout(&self, f: FourCc, w: u32, h: u32) -> (u32, u32) {
        match f {
            FourCc::YUYV => (w * 2 + self.padding, (w * 2 + self.padding) * h),
            FourCc::NV12 | FourCc::YU12 => (w + self.padding, (w + self.padding) * h * 3 / 2),
            _ => (0, w * h),
        }
    }

    /// Encoder: turns one queued raw buffer into a coded one, if a capture buffer is free.
    fn encode_step(&mut self, codec: Codec) -> Option<Dequeued> {
        let (ci, _, _) = *self.queued[0].front()?;
        if codec == Codec::H264 && std::mem::take(&mut self.header_buffer) && !self.queued[1].is_empty() {
            self.queued[0].pop_front();
            let sps_pps = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce];
            self.bufs[0][ci as usize][..sps_pps.len()].copy_from_slice(&sps_pps);
            return Some(Dequeued {
                offset: 0,
                index: ci,
                bytesused: sps_pps.len() as u32,
                flags: 0,
                timestamp_us: 0,
                sequence: 0,
            });
        }
        if let Some((oi, used, ts)) = self.queued[1].pop_front() {
            self.queued[0].pop_front();
            let intra = self.frame_no.is_multiple_of(self.gop) || std::mem::take(&mut self.force_key);
            let raw = &self.bufs[1][oi as usize];
            let payload = raw[..8.min(used as usize)].to_vec();
            let data = match codec {
                Codec::Fwht => crate::fwht::test_frame(320, 240, intra, &payload),
                Codec::H264 => [&[0, 0, 0, 1, if intra { 0x65 } else { 0x41 }][..], &payload].concat(),
            };
            self.bufs[0][ci as usize][..data.len()].copy_from_slice(&data);
            self.done_output.push_back(Dequeued {
                offset: 0,
                index: oi,
                bytesused: 0,
                flags: 0,
                timestamp_us: ts,
                sequence: self.frame_no,
            });
            self.frame_no += 1;
            if self.source_change_after == Some(self.frame_no) {
                self.events.push_back(Event::SourceChange);
            }
            return Some(Dequeued {
                offset: 0,
                index: ci,
                bytesused: data.len() as u32,
                flags: if intra { super::BUF_FLAG_KEYFRAME } else { 0 },
                timestamp_us: ts,
                sequence: self.frame_no - 1,
            });
        }
        if self.draining {
            self.queued[0].pop_front();
            self.draining = false;
            self.stopped_after_last = true;
            return Some(Dequeued {
                offset: 0,
                index: ci,
                bytesused: 0,
                flags: BUF_FLAG_LAST,
                timestamp_us: 0,
                sequence: self.frame_no,
            });
        }
        None
    }
}

impl Driver for Fake {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn formats(&mut self, q: Queue) -> Result<Vec<FourCc>> {
        Ok(match q {
            Queue::Capture => self.capture_formats.clone(),
            Queue::Output => self.output_formats.clone(),
        })
    }
    fn frame_sizes(&mut self, _: FourCc) -> Result<FrameSizes> {
        Ok(self.sizes.clone())
    }
    fn set_format(&mut self, q: Queue, want: Format) -> Result<Format> {
        let list = match q {
            Queue::Capture => &self.capture_formats,
            Queue::Output => &self.output_formats,
        };
        // Like a driver: an unknown format becomes its first one.
        let fourcc = if list.contains(&want.fourcc) { want.fourcc } else { list[0] };
        let (w, h) = if q == Queue::Output {
            (want.width.next_multiple_of(self.align), want.height.next_multiple_of(self.align))
        } else {
            (want.width, want.height)
        };
        let (bpl, size) = self.layout(fourcc, w, h);
        let f = Format { fourcc, width: w, height: h, bytesperline: bpl, sizeimage: size.max(want.sizeimage) };
        self.fmt[idx(q)] = Some(f);
        Ok(f)
    }
    fn get_format(&mut self, q: Queue) -> Result<Format> {
        self.fmt[idx(q)].ok_or_else(|| V4l2Error::Unsupported { device: "fake".into(), msg: "no format".into() })
    }
    fn set_frame_rate(&mut self, _: Queue, fps: u32) -> Result<Option<(u32, u32)>> {
        Ok(Some((fps, 1)))
    }
    fn set_control(&mut self, id: u32, value: i32) -> Result<()> {
        if self.unsupported_controls.contains(&id) {
            return Err(V4l2Error::Unsupported { device: "fake".into(), msg: format!("{id:#x}") });
        }
        if id == super::cid::FORCE_KEY_FRAME {
            self.force_key = true;
        }
        self.controls.push((id, value));
        Ok(())
    }
    fn request_buffers(&mut self, q: Queue, count: u32) -> Result<u32> {
        let size = self.fmt[idx(q)].map_or(1 << 16, |f| f.sizeimage as usize).max(64);
        self.bufs[idx(q)] = (0..count).map(|_| vec![0u8; size]).collect();
        self.queued[idx(q)].clear();
        if q == Queue::Capture && self.frame_no > 0 {
            self.reallocations += 1;
        }
        Ok(count)
    }
    fn buffer(&mut self, q: Queue, index: u32) -> &mut [u8] {
        &mut self.bufs[idx(q)][index as usize]
    }
    fn queue_buffer(&mut self, q: Queue, index: u32, bytesused: u32, timestamp_us: u64) -> Result<()> {
        self.queued[idx(q)].push_back((index, bytesused, timestamp_us));
        Ok(())
    }
    fn dequeue_buffer(&mut self, q: Queue) -> Result<Option<Dequeued>> {
        if !self.streaming[idx(q)] {
            return Ok(None);
        }
        match (&self.mode, q) {
            (Mode::Camera, Queue::Capture) => {
                if self.gone_after.is_some_and(|g| self.frame_no >= g) {
                    return Err(self.gone());
                }
                if self.stall_after.is_some_and(|s| self.frame_no >= s) {
                    return Ok(None);
                }
                let Some((i, _, _)) = self.queued[0].pop_front() else { return Ok(None) };
                let n = self.frame_no;
                self.frame_no += 1;
                let seq = n + self.skip_seq_at.iter().filter(|&&s| s <= n).count() as u32;
                let f = self.fmt[0].unwrap_or(Format {
                    fourcc: FourCc::YU12,
                    width: 0,
                    height: 0,
                    bytesperline: 0,
                    sizeimage: 0,
                });
                let buf = &mut self.bufs[0][i as usize];
                // Row r of the first plane is filled with byte r, its padding with 0xEE;
                // the chroma planes (other strides) with 0x80.
                let bpl = (f.bytesperline as usize).max(1);
                let row_len = bpl - self.padding as usize;
                for (k, b) in buf.iter_mut().enumerate().take(f.sizeimage as usize) {
                    let (r, c) = (k / bpl, k % bpl);
                    *b = if r >= f.height as usize {
                        0x80
                    } else if c >= row_len {
                        0xEE
                    } else {
                        (r % 200) as u8
                    };
                }
                Ok(Some(Dequeued {
                    offset: 0,
                    index: i,
                    bytesused: f.sizeimage,
                    flags: 0,
                    timestamp_us: 5_000_000 + u64::from(seq) * 100_000,
                    sequence: seq,
                }))
            }
            (Mode::Encoder(codec), Queue::Capture) => {
                if self.stopped_after_last {
                    return Err(V4l2Error::Io {
                        device: "fake".into(),
                        op: "VIDIOC_DQBUF",
                        source: std::io::Error::from_raw_os_error(libc::EPIPE),
                    });
                }
                let codec = *codec;
                Ok(self.encode_step(codec))
            }
            (Mode::Encoder(_), Queue::Output) => Ok(self.done_output.pop_front()),
            (Mode::Camera, Queue::Output) => Ok(None),
        }
    }
    fn stream(&mut self, q: Queue, on: bool) -> Result<()> {
        self.streaming[idx(q)] = on;
        Ok(())
    }
    fn wait(&mut self, _: i32) -> Result<Ready> {
        if self.gone_after.is_some_and(|g| self.frame_no >= g) {
            return Err(self.gone());
        }
        let stalled = self.stall_after.is_some_and(|s| self.frame_no >= s);
        Ok(Ready {
            capture: !stalled && !self.queued[0].is_empty(),
            output: !self.done_output.is_empty(),
            event: !self.events.is_empty(),
        })
    }
    fn set_crop(&mut self, _: Queue, width: u32, height: u32) -> Result<()> {
        self.crop = Some((width, height));
        Ok(())
    }
    fn encoder_command(&mut self, cmd: u32) -> Result<()> {
        match cmd {
            1 => self.draining = true,
            _ => self.stopped_after_last = false,
        }
        Ok(())
    }
    fn decoder_command(&mut self, _: u32) -> Result<()> {
        Err(V4l2Error::Unsupported { device: "fake".into(), msg: "not a decoder".into() })
    }
    fn subscribe(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
    fn dequeue_event(&mut self) -> Result<Option<Event>> {
        Ok(self.events.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Frame, FrameSource, PixelFormat, VideoFormat};
    use crate::v4l2::{CameraConfig, CodecParams, V4l2Camera, V4l2Encoder, negotiate};
    use crate::{EncodeError, VideoEncoder};

    fn cam_cfg() -> CameraConfig {
        CameraConfig {
            device: None,
            width: 320,
            height: 240,
            fps: 10,
            encoder_inputs: negotiate::software_encoder_inputs(),
            allow_passthrough: true,
            buffers: 4,
        }
    }

    #[test]
    fn camera_strips_row_padding_uses_driver_time_and_counts_sequence_gaps() {
        let mut fake = Fake::camera(&[FourCc::YUYV, FourCc::YU12]);
        fake.padding = 64;
        fake.skip_seq_at = vec![2];
        let mut cam = V4l2Camera::with_driver(fake, &cam_cfg()).unwrap();
        assert_eq!(cam.format().pixel_format, PixelFormat::I420, "YU12 preferred over YUYV");
        assert_eq!((cam.format().width, cam.format().height), (320, 240));
        let f0 = cam.next_frame().unwrap();
        assert_eq!(f0.data.len(), 320 * 240 * 3 / 2, "tightly packed");
        assert!(!f0.data.contains(&0xEE), "padding removed");
        assert_eq!(f0.data[320 * 5], 5, "row 5 starts where a packed row 5 starts");
        assert_eq!(f0.pts_us, 0);
        let f1 = cam.next_frame().unwrap();
        assert_eq!(f1.pts_us, 100_000, "media time from the driver's timestamps");
        let f2 = cam.next_frame().unwrap();
        assert_eq!(f2.pts_us, 300_000, "sequence 2 was skipped by the driver");
        assert_eq!(cam.dropped_frames(), 1);
        assert!(cam.describe().contains("/dev/fake0"));
    }

    #[test]
    fn an_unplugged_camera_reports_disconnected() {
        let mut fake = Fake::camera(&[FourCc::YU12]);
        fake.gone_after = Some(2);
        let mut cam = V4l2Camera::with_driver(fake, &cam_cfg()).unwrap();
        cam.next_frame().unwrap();
        cam.next_frame().unwrap();
        let e = cam.next_frame().unwrap_err();
        assert!(matches!(e, crate::SourceError::Disconnected(_)), "{e}");
    }

    #[test]
    fn a_camera_that_stops_delivering_is_reported_like_an_unplug() {
        let mut fake = Fake::camera(&[FourCc::YU12]);
        fake.stall_after = Some(1);
        let mut cam = V4l2Camera::with_driver(fake, &cam_cfg()).unwrap();
        cam.next_frame().unwrap();
        let e = cam.next_frame().unwrap_err();
        assert!(matches!(e, crate::SourceError::Disconnected(_)), "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn camera_h264_is_passed_through() {
        let fake = Fake::camera(&[FourCc::MJPG, FourCc::H264]);
        let cam = V4l2Camera::with_driver(fake, &cam_cfg()).unwrap();
        assert!(cam.choice().passthrough);
        assert_eq!(cam.format().pixel_format, PixelFormat::H264);
        let fake = Fake::camera(&[FourCc::MJPG]);
        let e = V4l2Camera::with_driver(fake, &cam_cfg()).unwrap_err();
        assert!(e.to_string().contains("nothing in common"), "{e}");
    }

    fn frame(i: u64, pf: PixelFormat) -> Frame {
        let format = VideoFormat { width: 320, height: 240, fps_num: 10, fps_den: 1, pixel_format: pf };
        let mut data = vec![0u8; pf.frame_len(320, 240).unwrap()];
        data[0] = i as u8;
        Frame { seq: i, pts_us: i * 100_000, wall_us: 1_700_000_000_000_000 + i as i64 * 100_000, format, data }
    }

    fn params(codec: Codec) -> CodecParams {
        CodecParams {
            codec,
            width: 320,
            height: 240,
            input: FourCc::YU12,
            fps: 10,
            bitrate_bps: 500_000,
            keyframe_interval_frames: 3,
        }
    }

    #[test]
    fn encoder_sets_controls_keeps_times_and_drains_with_stop_last_start() {
        let mut fake = Fake::encoder(Codec::Fwht, &[FourCc::YU12, FourCc::NV12]);
        fake.gop = 3;
        fake.padding = 16;
        let mut enc = V4l2Encoder::with_driver(fake, params(Codec::Fwht)).unwrap();
        let mut aus = Vec::new();
        for i in 0..7 {
            aus.extend(enc.encode(&frame(i, PixelFormat::I420)).unwrap());
        }
        aus.extend(enc.flush().unwrap());
        assert_eq!(aus.len(), 7, "every frame comes out, the last ones through the drain");
        let keys: Vec<bool> = aus.iter().map(|a| a.keyframe).collect();
        assert_eq!(keys, [true, false, false, true, false, false, true]);
        assert_eq!(aus[4].pts_us, 400_000);
        assert_eq!(aus[4].wall_us, 1_700_000_000_400_000, "wall time travels with the buffer timestamp");
        assert_eq!(&aus[4].data[crate::fwht::HEADER_LEN..][..1], &[4], "frame 4's pixels, padded rows copied right");
        // After the drain the encoder goes on (pause/resume keeps one encoder).
        let more = enc.encode(&frame(7, PixelFormat::I420)).unwrap();
        let more = [more, enc.flush().unwrap()].concat();
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].pts_us, 700_000);
    }

    #[test]
    fn encoder_without_forced_keyframes_falls_back_to_the_gop_and_survives_a_source_change() {
        let mut fake = Fake::encoder(Codec::H264, &[FourCc::NV12]);
        fake.unsupported_controls = vec![crate::v4l2::cid::FORCE_KEY_FRAME, crate::v4l2::cid::H264_LEVEL];
        fake.source_change_after = Some(2);
        fake.gop = 100;
        let p = CodecParams { input: FourCc::NV12, ..params(Codec::H264) };
        let mut enc = V4l2Encoder::with_driver(fake, p).unwrap();
        let mut aus = Vec::new();
        for i in 0..5 {
            if i == 3 {
                enc.request_keyframe();
                enc.request_keyframe();
            }
            aus.extend(enc.encode(&frame(i, PixelFormat::Nv12)).unwrap());
        }
        aus.extend(enc.flush().unwrap());
        assert_eq!(aus.len(), 5);
        assert_eq!(aus.iter().filter(|a| a.keyframe).count(), 1, "no forced keyframe on a driver without the control");
        assert_eq!(enc.dev.reallocations, 1, "capture buffers reallocated after the source change");
        assert!(enc.dev.controls.iter().any(|&(id, v)| id == crate::v4l2::cid::GOP_SIZE && v == 3));
        assert!(enc.dev.controls.iter().any(|&(id, v)| id == crate::v4l2::cid::BITRATE && v == 500_000));
    }

    #[test]
    fn an_aligning_encoder_gets_the_picture_cropped_and_the_chroma_planes_where_it_wants_them() {
        let mut fake = Fake::encoder(Codec::Fwht, &[FourCc::YU12]);
        fake.align = 16;
        fake.gop = 1;
        let p = CodecParams { width: 320, height: 180, ..params(Codec::Fwht) };
        let mut enc = V4l2Encoder::with_driver(fake, p).unwrap();
        assert_eq!(enc.dev.crop, Some((320, 180)), "visible size set by crop");
        let format = VideoFormat { width: 320, height: 180, fps_num: 10, fps_den: 1, pixel_format: PixelFormat::I420 };
        let mut data = vec![1u8; 320 * 180];
        data.extend(vec![2u8; 160 * 90]);
        data.extend(vec![3u8; 160 * 90]);
        let f = Frame { seq: 0, pts_us: 0, wall_us: 0, format, data };
        enc.encode(&f).unwrap();
        // The buffer is 320x192: U starts after 192 Y rows, V after 96 U rows.
        let buf = enc.dev.buffer(Queue::Output, 0).to_vec();
        let buf = if buf[0] == 1 { buf } else { enc.dev.buffer(Queue::Output, 3).to_vec() };
        assert_eq!(buf[320 * 179], 1);
        assert_eq!(buf[320 * 180], 0, "rows 180..192 are padding");
        assert_eq!(buf[320 * 192], 2, "U plane at the coded height");
        assert_eq!(buf[320 * 192 + 160 * 96], 3, "V plane after the coded chroma rows");
    }

    #[test]
    fn parameter_sets_in_a_buffer_of_their_own_join_the_next_picture() {
        let mut fake = Fake::encoder(Codec::H264, &[FourCc::YU12]);
        fake.header_buffer = true;
        fake.gop = 2;
        let mut enc = V4l2Encoder::with_driver(fake, params(Codec::H264)).unwrap();
        let mut aus = Vec::new();
        for i in 0..3 {
            aus.extend(enc.encode(&frame(i, PixelFormat::I420)).unwrap());
        }
        aus.extend(enc.flush().unwrap());
        assert_eq!(aus.len(), 3, "one access unit per frame, none for the header buffer");
        assert!(aus[0].keyframe);
        assert_eq!(&aus[0].data[..5], &[0, 0, 0, 1, 0x67], "SPS first");
        assert!(crate::h264::parameter_sets(&aus[0].data).is_some());
        assert_eq!(aus[0].pts_us, 0, "the picture's own time, not the header buffer's");
        assert!(!aus[1].keyframe && aus[2].keyframe);
    }

    #[test]
    fn encoder_refuses_frames_it_was_not_set_up_for() {
        let fake = Fake::encoder(Codec::Fwht, &[FourCc::YU12]);
        let mut enc = V4l2Encoder::with_driver(fake, params(Codec::Fwht)).unwrap();
        assert!(matches!(enc.encode(&frame(0, PixelFormat::Yuyv)), Err(EncodeError::UnsupportedPixelFormat { .. })));
        // A device that does not produce the codec is refused at setup.
        let fake = Fake::encoder(Codec::Fwht, &[FourCc::YU12]);
        let e = V4l2Encoder::with_driver(fake, params(Codec::H264)).unwrap_err();
        assert!(e.to_string().contains("does not encode h264"), "{e}");
        // A raw layout the device lacks is refused too.
        let fake = Fake::encoder(Codec::Fwht, &[FourCc::NV12]);
        let e = V4l2Encoder::with_driver(fake, params(Codec::Fwht)).unwrap_err();
        assert!(e.to_string().contains("asked to encode YU12"), "{e}");
    }
}
