//! `RealDevice`: the `Driver` trait over a V4L2 device node — the only code in the
//! workspace that issues V4L2 ioctls or maps V4L2 buffers.
//!
//! Owns the file descriptor, the mmap'ed buffers of both queues, and the translation
//! between the single-planar and multi-planar APIs (vivid and vicodec default to the
//! single-planar API, bcm2835-codec on the Pi is multi-planar; with one plane per buffer
//! the two differ only in struct layout). The `v4l` crate supplies the ioctl wrapper and
//! the bindgen structs of the kernel's videodev2.h; its own stream type is single-planar
//! and capture-or-output only, which an M2M codec is not, hence these few hundred lines.
//! It must not make policy (which format, how many buffers, when to drain).

use std::ffi::c_void;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};

use v4l::v4l_sys::*;
use v4l::v4l2::{self as sys, vidioc};

use super::{Dequeued, Driver, Event, Format, FourCc, FrameSizes, Queue, Ready, Result, Role, V4l2Error};

/// What `VIDIOC_QUERYCAP` said about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub bus: String,
    pub role: Role,
    /// Uses the multi-planar API.
    pub mplane: bool,
}

const CAP_VIDEO_CAPTURE: u32 = 0x1;
const CAP_VIDEO_OUTPUT: u32 = 0x2;
const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x1000;
const CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x2000;
const CAP_VIDEO_M2M_MPLANE: u32 = 0x4000;
const CAP_VIDEO_M2M: u32 = 0x8000;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const MEMORY_MMAP: u32 = 1;

/// ioctl numbers the `v4l` crate does not define (linux/videodev2.h).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
const IOC_W: u32 = 1;
const IOC_R: u32 = 2;
const VIDIOC_DQEVENT: u32 = ioc(IOC_R, 89, std::mem::size_of::<v4l2_event>());
const VIDIOC_SUBSCRIBE_EVENT: u32 = ioc(IOC_W, 90, std::mem::size_of::<v4l2_event_subscription>());
const VIDIOC_DECODER_CMD: u32 = ioc(IOC_R | IOC_W, 96, std::mem::size_of::<v4l2_decoder_cmd>());
const VIDIOC_S_SELECTION: u32 = ioc(IOC_R | IOC_W, 95, std::mem::size_of::<v4l2_selection>());
/// `V4L2_SEL_TGT_CROP`.
const SEL_TGT_CROP: u32 = 0;

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

/// An open V4L2 node (non-blocking: waiting is `wait`'s job, so a stuck driver times out
/// instead of hanging the capture thread).
pub struct RealDevice {
    fd: c_int,
    info: DeviceInfo,
    name: String,
    maps: [Vec<Mapping>; 2],
    streaming: [bool; 2],
}

// SAFETY: the mappings are plain memory owned by this value; the fd is only used through
// &mut self. Nothing is shared with another thread.
unsafe impl Send for RealDevice {}

impl std::fmt::Debug for RealDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealDevice").field("info", &self.info).finish()
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn qi(q: Queue) -> usize {
    match q {
        Queue::Capture => 0,
        Queue::Output => 1,
    }
}

impl RealDevice {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let fd = sys::open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC).map_err(|source| {
            if source.raw_os_error() == Some(libc::ENOENT) || source.raw_os_error() == Some(libc::ENODEV) {
                V4l2Error::Gone { device: name.clone() }
            } else {
                V4l2Error::Io { device: name.clone(), op: "open", source }
            }
        })?;
        let mut dev = RealDevice {
            fd,
            info: DeviceInfo {
                path: path.to_owned(),
                driver: String::new(),
                card: String::new(),
                bus: String::new(),
                role: Role::Other,
                mplane: false,
            },
            name,
            maps: [Vec::new(), Vec::new()],
            streaming: [false; 2],
        };
        // SAFETY: all-zero is a valid v4l2_capability.
        let mut cap: v4l2_capability = unsafe { std::mem::zeroed() };
        dev.ioctl("VIDIOC_QUERYCAP", vidioc::VIDIOC_QUERYCAP as u32, &mut cap)?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 { cap.device_caps } else { cap.capabilities };
        let role = if caps & CAP_STREAMING == 0 {
            Role::Other
        } else if caps & (CAP_VIDEO_M2M | CAP_VIDEO_M2M_MPLANE) != 0
            || (caps & (CAP_VIDEO_CAPTURE | CAP_VIDEO_CAPTURE_MPLANE) != 0
                && caps & (CAP_VIDEO_OUTPUT | CAP_VIDEO_OUTPUT_MPLANE) != 0)
        {
            Role::Codec
        } else if caps & (CAP_VIDEO_CAPTURE | CAP_VIDEO_CAPTURE_MPLANE) != 0 {
            Role::Camera
        } else {
            Role::Other
        };
        dev.info.driver = cstr(&cap.driver);
        dev.info.card = cstr(&cap.card);
        dev.info.bus = cstr(&cap.bus_info);
        dev.info.role = role;
        dev.info.mplane = caps & (CAP_VIDEO_M2M_MPLANE | CAP_VIDEO_CAPTURE_MPLANE | CAP_VIDEO_OUTPUT_MPLANE) != 0
            && caps & (CAP_VIDEO_M2M | CAP_VIDEO_CAPTURE) == 0;
        Ok(dev)
    }

    fn buf_type(&self, q: Queue) -> u32 {
        match (q, self.info.mplane) {
            (Queue::Capture, false) => 1,
            (Queue::Output, false) => 2,
            (Queue::Capture, true) => 9,
            (Queue::Output, true) => 10,
        }
    }

    fn err(&self, op: &'static str, source: std::io::Error) -> V4l2Error {
        if matches!(source.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO)) {
            V4l2Error::Gone { device: self.name.clone() }
        } else {
            V4l2Error::Io { device: self.name.clone(), op, source }
        }
    }

    fn ioctl<T>(&self, op: &'static str, req: u32, arg: &mut T) -> Result<()> {
        // SAFETY: `arg` is the struct the request number was built for (its size is
        // encoded in `req`), valid and exclusively borrowed for the call.
        let r = unsafe { sys::ioctl(self.fd, req as vidioc::_IOC_TYPE, arg as *mut T as *mut c_void) };
        r.map_err(|e| self.err(op, e))
    }

    fn unmap(&mut self, q: Queue) {
        for m in self.maps[qi(q)].drain(..) {
            // SAFETY: ptr/len came from a successful mmap of this fd and are unmapped once.
            unsafe {
                let _ = sys::munmap(m.ptr as *mut c_void, m.len);
            }
        }
    }

    fn new_buffer(&self, q: Queue, index: u32, planes: &mut [v4l2_plane; 1]) -> v4l2_buffer {
        // SAFETY: all-zero is a valid v4l2_buffer.
        let mut b: v4l2_buffer = unsafe { std::mem::zeroed() };
        b.index = index;
        b.type_ = self.buf_type(q);
        b.memory = MEMORY_MMAP;
        if self.info.mplane {
            b.m.planes = planes.as_mut_ptr();
            b.length = 1;
        }
        b
    }
}

impl Drop for RealDevice {
    fn drop(&mut self) {
        for q in [Queue::Output, Queue::Capture] {
            if self.streaming[qi(q)] {
                let _ = self.stream(q, false);
            }
            self.unmap(q);
        }
        let _ = sys::close(self.fd);
    }
}

impl Driver for RealDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn formats(&mut self, q: Queue) -> Result<Vec<FourCc>> {
        let mut out = Vec::new();
        for index in 0..64 {
            // SAFETY: all-zero is a valid v4l2_fmtdesc.
            let mut d: v4l2_fmtdesc = unsafe { std::mem::zeroed() };
            d.index = index;
            d.type_ = self.buf_type(q);
            match self.ioctl("VIDIOC_ENUM_FMT", vidioc::VIDIOC_ENUM_FMT as u32, &mut d) {
                Ok(()) => out.push(FourCc(d.pixelformat)),
                Err(V4l2Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn frame_sizes(&mut self, fourcc: FourCc) -> Result<FrameSizes> {
        let mut discrete = Vec::new();
        for index in 0..64 {
            // SAFETY: all-zero is a valid v4l2_frmsizeenum.
            let mut e: v4l2_frmsizeenum = unsafe { std::mem::zeroed() };
            e.index = index;
            e.pixel_format = fourcc.0;
            if self.ioctl("VIDIOC_ENUM_FRAMESIZES", vidioc::VIDIOC_ENUM_FRAMESIZES as u32, &mut e).is_err() {
                break;
            }
            // SAFETY: the union member read matches `type_` as the kernel set it.
            unsafe {
                if e.type_ == 1 {
                    discrete.push((e.__bindgen_anon_1.discrete.width, e.__bindgen_anon_1.discrete.height));
                } else {
                    let s = e.__bindgen_anon_1.stepwise;
                    return Ok(FrameSizes::Stepwise {
                        min: (s.min_width, s.min_height),
                        max: (s.max_width, s.max_height),
                        step: (s.step_width.max(1), s.step_height.max(1)),
                    });
                }
            }
        }
        Ok(if discrete.is_empty() { FrameSizes::Unknown } else { FrameSizes::Discrete(discrete) })
    }

    fn set_format(&mut self, q: Queue, want: Format) -> Result<Format> {
        // SAFETY: all-zero is a valid v4l2_format.
        let mut f: v4l2_format = unsafe { std::mem::zeroed() };
        f.type_ = self.buf_type(q);
        // SAFETY: we write the union member that matches `type_`.
        unsafe {
            if self.info.mplane {
                let p = &mut f.fmt.pix_mp;
                p.width = want.width;
                p.height = want.height;
                p.pixelformat = want.fourcc.0;
                p.field = 1; // V4L2_FIELD_NONE
                p.num_planes = 1;
                p.plane_fmt[0].sizeimage = want.sizeimage;
                p.plane_fmt[0].bytesperline = want.bytesperline;
            } else {
                let p = &mut f.fmt.pix;
                p.width = want.width;
                p.height = want.height;
                p.pixelformat = want.fourcc.0;
                p.field = 1;
                p.sizeimage = want.sizeimage;
                p.bytesperline = want.bytesperline;
            }
        }
        self.ioctl("VIDIOC_S_FMT", vidioc::VIDIOC_S_FMT as u32, &mut f)?;
        Ok(read_format(&f, self.info.mplane))
    }

    fn get_format(&mut self, q: Queue) -> Result<Format> {
        // SAFETY: all-zero is a valid v4l2_format.
        let mut f: v4l2_format = unsafe { std::mem::zeroed() };
        f.type_ = self.buf_type(q);
        self.ioctl("VIDIOC_G_FMT", vidioc::VIDIOC_G_FMT as u32, &mut f)?;
        Ok(read_format(&f, self.info.mplane))
    }

    fn set_frame_rate(&mut self, q: Queue, fps: u32) -> Result<Option<(u32, u32)>> {
        // SAFETY: all-zero is a valid v4l2_streamparm.
        let mut p: v4l2_streamparm = unsafe { std::mem::zeroed() };
        p.type_ = self.buf_type(q);
        let tpf = v4l2_fract { numerator: 1, denominator: fps.max(1) };
        // Writing a union field is safe; the member matches the queue direction.
        match q {
            Queue::Capture => p.parm.capture.timeperframe = tpf,
            Queue::Output => p.parm.output.timeperframe = tpf,
        }
        match self.ioctl("VIDIOC_S_PARM", vidioc::VIDIOC_S_PARM as u32, &mut p) {
            Ok(()) => {
                // SAFETY: as above.
                let got = unsafe {
                    match q {
                        Queue::Capture => p.parm.capture.timeperframe,
                        Queue::Output => p.parm.output.timeperframe,
                    }
                };
                // timeperframe is seconds per frame: fps = denominator / numerator.
                Ok((got.numerator > 0).then_some((got.denominator, got.numerator)))
            }
            // Drivers without frame-rate control (ENOTTY/EINVAL) run at their own rate.
            Err(V4l2Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn set_control(&mut self, id: u32, value: i32) -> Result<()> {
        let mut c = v4l2_control { id, value };
        match self.ioctl("VIDIOC_S_CTRL", vidioc::VIDIOC_S_CTRL as u32, &mut c) {
            Err(V4l2Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) =>
            {
                Err(V4l2Error::Unsupported {
                    device: self.name.clone(),
                    msg: format!("control {id:#x} = {value} not supported"),
                })
            }
            other => other,
        }
    }

    fn request_buffers(&mut self, q: Queue, count: u32) -> Result<u32> {
        self.unmap(q);
        // SAFETY: all-zero is a valid v4l2_requestbuffers.
        let mut r: v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        r.count = count;
        r.type_ = self.buf_type(q);
        r.memory = MEMORY_MMAP;
        self.ioctl("VIDIOC_REQBUFS", vidioc::VIDIOC_REQBUFS as u32, &mut r)?;
        for index in 0..r.count {
            // SAFETY: all-zero is a valid v4l2_plane.
            let mut planes: [v4l2_plane; 1] = unsafe { std::mem::zeroed() };
            let mut b = self.new_buffer(q, index, &mut planes);
            self.ioctl("VIDIOC_QUERYBUF", vidioc::VIDIOC_QUERYBUF as u32, &mut b)?;
            // SAFETY: the union member read matches the API in use.
            let (offset, len) = unsafe {
                if self.info.mplane { (planes[0].m.mem_offset, planes[0].length) } else { (b.m.offset, b.length) }
            };
            // SAFETY: offset/len are what the driver told us to map for this buffer.
            let ptr = unsafe {
                sys::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd,
                    offset as libc::off_t,
                )
            }
            .map_err(|e| self.err("mmap", e))?;
            self.maps[qi(q)].push(Mapping { ptr: ptr as *mut u8, len: len as usize });
        }
        Ok(r.count)
    }

    fn buffer(&mut self, q: Queue, index: u32) -> &mut [u8] {
        let m = &self.maps[qi(q)][index as usize];
        // SAFETY: a live mapping of `len` bytes owned by self; &mut self makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(m.ptr, m.len) }
    }

    fn queue_buffer(&mut self, q: Queue, index: u32, bytesused: u32, timestamp_us: u64) -> Result<()> {
        // SAFETY: all-zero is a valid v4l2_plane.
        let mut planes: [v4l2_plane; 1] = unsafe { std::mem::zeroed() };
        // Plane fields first: `b` then points at them and they are not touched again.
        planes[0].bytesused = bytesused;
        planes[0].length = self.maps[qi(q)].get(index as usize).map_or(0, |m| m.len as u32);
        let mut b = self.new_buffer(q, index, &mut planes);
        b.timestamp.tv_sec = (timestamp_us / 1_000_000) as _;
        b.timestamp.tv_usec = (timestamp_us % 1_000_000) as _;
        if !self.info.mplane {
            b.bytesused = bytesused;
        }
        self.ioctl("VIDIOC_QBUF", vidioc::VIDIOC_QBUF as u32, &mut b)
    }

    fn dequeue_buffer(&mut self, q: Queue) -> Result<Option<Dequeued>> {
        // SAFETY: all-zero is a valid v4l2_plane.
        let mut planes: [v4l2_plane; 1] = unsafe { std::mem::zeroed() };
        let mut b = self.new_buffer(q, 0, &mut planes);
        match self.ioctl("VIDIOC_DQBUF", vidioc::VIDIOC_DQBUF as u32, &mut b) {
            Ok(()) => {}
            Err(V4l2Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
            Err(e) => return Err(e),
        }
        let (offset, bytesused) = if self.info.mplane {
            (planes[0].data_offset, planes[0].bytesused.saturating_sub(planes[0].data_offset))
        } else {
            (0, b.bytesused)
        };
        Ok(Some(Dequeued {
            index: b.index,
            offset,
            bytesused,
            flags: b.flags,
            timestamp_us: (b.timestamp.tv_sec as u64)
                .saturating_mul(1_000_000)
                .saturating_add(b.timestamp.tv_usec as u64),
            sequence: b.sequence,
        }))
    }

    fn stream(&mut self, q: Queue, on: bool) -> Result<()> {
        let mut t: c_int = self.buf_type(q) as c_int;
        if on {
            self.ioctl("VIDIOC_STREAMON", vidioc::VIDIOC_STREAMON as u32, &mut t)?;
        } else {
            self.ioctl("VIDIOC_STREAMOFF", vidioc::VIDIOC_STREAMOFF as u32, &mut t)?;
        }
        self.streaming[qi(q)] = on;
        Ok(())
    }

    fn wait(&mut self, timeout_ms: i32) -> Result<Ready> {
        let mut p = libc::pollfd { fd: self.fd, events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(Ready::default());
            }
            return Err(self.err("poll", e));
        }
        if p.revents & libc::POLLHUP != 0 {
            return Err(V4l2Error::Gone { device: self.name.clone() });
        }
        // POLLERR: let the caller's DQBUF report the precise errno.
        let err = p.revents & libc::POLLERR != 0;
        Ok(Ready {
            capture: err || p.revents & libc::POLLIN != 0,
            output: err || p.revents & libc::POLLOUT != 0,
            event: p.revents & libc::POLLPRI != 0,
        })
    }

    fn set_crop(&mut self, q: Queue, width: u32, height: u32) -> Result<()> {
        // SAFETY: all-zero is a valid v4l2_selection.
        let mut sel: v4l2_selection = unsafe { std::mem::zeroed() };
        // The selection API takes the single-planar buffer types for both APIs.
        sel.type_ = match q {
            Queue::Capture => 1,
            Queue::Output => 2,
        };
        sel.target = SEL_TGT_CROP;
        sel.r = v4l2_rect { left: 0, top: 0, width, height };
        match self.ioctl("VIDIOC_S_SELECTION", VIDIOC_S_SELECTION, &mut sel) {
            Err(V4l2Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) =>
            {
                Err(V4l2Error::Unsupported {
                    device: self.name.clone(),
                    msg: format!("crop to {width}x{height} not supported"),
                })
            }
            Err(e) => Err(e),
            Ok(()) if (sel.r.width, sel.r.height) != (width, height) => Err(V4l2Error::Unsupported {
                device: self.name.clone(),
                msg: format!("asked to crop to {width}x{height}, the driver set {}x{}", sel.r.width, sel.r.height),
            }),
            Ok(()) => Ok(()),
        }
    }

    fn encoder_command(&mut self, cmd: u32) -> Result<()> {
        // SAFETY: all-zero is a valid v4l2_encoder_cmd.
        let mut c: v4l2_encoder_cmd = unsafe { std::mem::zeroed() };
        c.cmd = cmd;
        self.ioctl("VIDIOC_ENCODER_CMD", vidioc::VIDIOC_ENCODER_CMD as u32, &mut c)
    }

    fn decoder_command(&mut self, cmd: u32) -> Result<()> {
        // SAFETY: all-zero is a valid v4l2_decoder_cmd.
        let mut c: v4l2_decoder_cmd = unsafe { std::mem::zeroed() };
        c.cmd = cmd;
        self.ioctl("VIDIOC_DECODER_CMD", VIDIOC_DECODER_CMD, &mut c)
    }

    fn subscribe(&mut self, event: u32) -> Result<()> {
        // SAFETY: all-zero is a valid v4l2_event_subscription.
        let mut s: v4l2_event_subscription = unsafe { std::mem::zeroed() };
        s.type_ = event;
        self.ioctl("VIDIOC_SUBSCRIBE_EVENT", VIDIOC_SUBSCRIBE_EVENT, &mut s)
    }

    fn dequeue_event(&mut self) -> Result<Option<Event>> {
        // SAFETY: all-zero is a valid v4l2_event.
        let mut e: v4l2_event = unsafe { std::mem::zeroed() };
        match self.ioctl("VIDIOC_DQEVENT", VIDIOC_DQEVENT, &mut e) {
            Ok(()) => Ok(Some(match e.type_ {
                super::EVENT_EOS => Event::Eos,
                super::EVENT_SOURCE_CHANGE => Event::SourceChange,
                t => Event::Other(t),
            })),
            Err(V4l2Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::EAGAIN)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn read_format(f: &v4l2_format, mplane: bool) -> Format {
    // SAFETY: the member read matches the API the format was requested with.
    unsafe {
        if mplane {
            let p = &f.fmt.pix_mp;
            Format {
                fourcc: FourCc(p.pixelformat),
                width: p.width,
                height: p.height,
                bytesperline: p.plane_fmt[0].bytesperline,
                sizeimage: p.plane_fmt[0].sizeimage,
            }
        } else {
            let p = &f.fmt.pix;
            Format {
                fourcc: FourCc(p.pixelformat),
                width: p.width,
                height: p.height,
                bytesperline: p.bytesperline,
                sizeimage: p.sizeimage,
            }
        }
    }
}
