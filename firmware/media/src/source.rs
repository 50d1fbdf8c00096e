//! Frame sources: the `FrameSource` trait (shaped for V4L2 capture), the raw frame types,
//! and `TestPattern`, the synthetic camera.
//!
//! Owns producing raw pictures and their timestamps. It must not encode, mux, or know
//! about storage; and it must not burst frames to catch up after a stall (a camera cannot
//! either) — late frames are skipped and counted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pixel layout of `Frame::data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Planar 4:2:0: full-size Y plane, then quarter-size U, then V (V4L2 `YU12`).
    I420,
    /// Semi-planar 4:2:0: Y plane, then interleaved UV (V4L2 `NV12`). For the V4L2 path.
    Nv12,
    /// Packed 4:2:2 `Y0 U Y1 V` (V4L2 `YUYV`). For the V4L2 path.
    Yuyv,
    /// Not pixels: one Annex-B H.264 access unit from a camera that encodes itself (many
    /// UVC cameras). Recorded as is, without re-encoding.
    H264,
}

impl PixelFormat {
    /// Bytes of one tightly packed frame (no row padding), or `None` on overflow or odd
    /// sizes the format cannot represent.
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        let px = w.checked_mul(h)?;
        match self {
            PixelFormat::I420 | PixelFormat::Nv12 => {
                if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
                    return None;
                }
                px.checked_add(px / 2)
            }
            PixelFormat::Yuyv => {
                if !width.is_multiple_of(2) {
                    return None;
                }
                px.checked_mul(2)
            }
            PixelFormat::H264 => None,
        }
    }
}

/// Geometry, rate and layout of the frames a source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    pub width: u32,
    pub height: u32,
    /// Frame rate as a fraction (`fps_num / fps_den` frames per second), as V4L2 reports it.
    pub fps_num: u32,
    pub fps_den: u32,
    pub pixel_format: PixelFormat,
}

impl VideoFormat {
    /// Nominal frame duration in µs (rounded down), or `None` for a zero rate.
    pub fn frame_duration_us(&self) -> Option<u64> {
        if self.fps_num == 0 || self.fps_den == 0 {
            return None;
        }
        Some(1_000_000 * u64::from(self.fps_den) / u64::from(self.fps_num))
    }
}

/// One captured picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Capture sequence number. Like V4L2's, it counts frames the source skipped, so a jump
    /// reveals drops.
    pub seq: u64,
    /// Media time since the source started, from the capture timestamp (monotonic clock).
    pub pts_us: u64,
    /// Unix time of capture in µs (wall clock; may jump if the clock is set).
    pub wall_us: i64,
    pub format: VideoFormat,
    /// Tightly packed pixels in `format.pixel_format` (planar I420 for `TestPattern`).
    pub data: Vec<u8>,
}

/// Errors from a frame source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid source configuration: {0}")]
    InvalidConfig(String),
    /// Reserved for capture devices: the device went away (e.g. camera unplugged).
    #[error("capture device disconnected: {0}")]
    Disconnected(String),
    /// Reserved for capture devices: an I/O error while dequeuing a buffer.
    #[error("capture I/O error on {device}: {source}")]
    Io {
        device: String,
        #[source]
        source: std::io::Error,
    },
}

/// A blocking producer of raw frames. The daemon runs it on its own thread and calls
/// `next_frame` in a loop; an implementation blocks until the next frame is captured.
pub trait FrameSource: Send {
    /// The format every frame from this source has.
    fn format(&self) -> VideoFormat;
    /// Blocks until the next frame is available.
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    /// Human-readable description for logs and the status API.
    fn describe(&self) -> String;
    /// Frames the source skipped because the consumer fell behind (or the device
    /// reported a sequence jump).
    fn dropped_frames(&self) -> u64 {
        0
    }
}

/// Settings of the synthetic camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPatternConfig {
    /// Even, 16..=3840.
    pub width: u32,
    /// Even, 16..=2160.
    pub height: u32,
    /// Frames per second, 1..=120.
    pub fps: u32,
    /// `true`: real time (sleeps until each frame is due, skips when late).
    /// `false`: as fast as possible with synthetic timestamps `pts = seq * frame duration`.
    pub paced: bool,
}

/// The synthetic camera: colour bars, a moving box and a scrolling gradient (so the
/// encoder has real motion to code), with the frame counter and the UTC capture time
/// burned in.
pub struct TestPattern {
    cfg: TestPatternConfig,
    /// Index of the next frame slot (its due time is `slot * frame duration`).
    next_slot: u64,
    started: Option<(Instant, i64)>,
    dropped: u64,
}

impl std::fmt::Debug for TestPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPattern").field("cfg", &self.cfg).field("next_slot", &self.next_slot).finish()
    }
}

fn now_unix_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken RTC; report it as negative rather than failing capture.
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

impl TestPattern {
    pub fn new(cfg: TestPatternConfig) -> Result<Self, SourceError> {
        if !cfg.width.is_multiple_of(2) || !cfg.height.is_multiple_of(2) {
            return Err(SourceError::InvalidConfig(format!(
                "test pattern size {}x{} must be even (4:2:0 chroma)",
                cfg.width, cfg.height
            )));
        }
        if !(16..=3840).contains(&cfg.width) || !(16..=2160).contains(&cfg.height) {
            return Err(SourceError::InvalidConfig(format!(
                "test pattern size {}x{} outside 16x16..3840x2160",
                cfg.width, cfg.height
            )));
        }
        if !(1..=120).contains(&cfg.fps) {
            return Err(SourceError::InvalidConfig(format!("test pattern fps {} outside 1..=120", cfg.fps)));
        }
        Ok(Self { cfg, next_slot: 0, started: None, dropped: 0 })
    }

    /// Frames skipped because the consumer fell behind real time (paced mode only).
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Due time of a slot relative to the start, in ns. Computed from the slot index (not
    /// by accumulating durations) so 30 fps does not drift by the 1/3 µs rounding.
    fn slot_ns(&self, slot: u64) -> u128 {
        u128::from(slot) * 1_000_000_000 / u128::from(self.cfg.fps)
    }

    fn render(&self, seq: u64, wall_us: i64) -> Vec<u8> {
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let mut img = I420 { w, h, data: vec![0; w * h * 3 / 2] };
        draw_bars(&mut img);
        draw_gradient_band(&mut img, seq);
        draw_moving_box(&mut img, seq);
        draw_overlay(&mut img, seq, wall_us);
        img.data
    }
}

impl FrameSource for TestPattern {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            width: self.cfg.width,
            height: self.cfg.height,
            fps_num: self.cfg.fps,
            fps_den: 1,
            pixel_format: PixelFormat::I420,
        }
    }

    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let (t0, wall0) = *self.started.get_or_insert_with(|| (Instant::now(), now_unix_us()));
        let mut slot = self.next_slot;
        let wall_us;
        if self.cfg.paced {
            let due = self.slot_ns(slot);
            let elapsed = t0.elapsed().as_nanos();
            if elapsed < due {
                let wait = u64::try_from(due - elapsed).unwrap_or(u64::MAX);
                std::thread::sleep(Duration::from_nanos(wait));
            } else {
                // Late: a camera would have overwritten the missed buffers, so jump to the
                // slot that is current now instead of bursting the backlog.
                let current = u64::try_from(elapsed * u128::from(self.cfg.fps) / 1_000_000_000).unwrap_or(u64::MAX);
                if current > slot {
                    tracing::debug!(skipped = current - slot, at_seq = current, "test pattern fell behind real time");
                    self.dropped += current - slot;
                    slot = current;
                }
            }
            wall_us = now_unix_us();
        } else {
            wall_us = wall0.saturating_add(i64::try_from(self.slot_ns(slot) / 1000).unwrap_or(i64::MAX));
        }
        self.next_slot = slot + 1;
        // pts is the slot's due time: the ideal capture instant, jitter-free.
        let pts_us = u64::try_from(self.slot_ns(slot) / 1000).unwrap_or(u64::MAX);
        Ok(Frame { seq: slot, pts_us, wall_us, format: self.format(), data: self.render(slot, wall_us) })
    }

    fn dropped_frames(&self) -> u64 {
        TestPattern::dropped_frames(self)
    }

    fn describe(&self) -> String {
        format!(
            "test-pattern {}x{}@{}fps I420 ({})",
            self.cfg.width,
            self.cfg.height,
            self.cfg.fps,
            if self.cfg.paced { "real time" } else { "unpaced" }
        )
    }
}

/// A borrowed view of a tightly packed I420 picture with bounds-checked drawing.
struct I420 {
    w: usize,
    h: usize,
    data: Vec<u8>,
}

impl I420 {
    /// Fills a rectangle (clipped to the picture) with a Y'CbCr colour.
    fn fill(&mut self, x: usize, y: usize, rw: usize, rh: usize, (yv, u, v): (u8, u8, u8)) {
        let (x1, y1) = ((x + rw).min(self.w), (y + rh).min(self.h));
        for row in y.min(self.h)..y1 {
            let start = row * self.w;
            self.data[start + x.min(x1)..start + x1].fill(yv);
        }
        let (cw, ch) = (self.w / 2, self.h / 2);
        let (cx0, cy0, cx1, cy1) = ((x / 2).min(cw), (y / 2).min(ch), x1.div_ceil(2).min(cw), y1.div_ceil(2).min(ch));
        let u_base = self.w * self.h;
        let v_base = u_base + cw * ch;
        for row in cy0..cy1 {
            self.data[u_base + row * cw + cx0..u_base + row * cw + cx1].fill(u);
            self.data[v_base + row * cw + cx0..v_base + row * cw + cx1].fill(v);
        }
    }

    fn set_luma(&mut self, x: usize, y: usize, v: u8) {
        if x < self.w && y < self.h {
            self.data[y * self.w + x] = v;
        }
    }
}

/// 75% SMPTE-style bars in BT.601 limited range: white, yellow, cyan, green, magenta, red, blue.
const BARS: [(u8, u8, u8); 7] =
    [(180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58), (84, 184, 198), (65, 100, 212), (35, 212, 114)];

fn draw_bars(img: &mut I420) {
    let bar_h = img.h * 2 / 3;
    for (i, &c) in BARS.iter().enumerate() {
        let x0 = img.w * i / BARS.len();
        let x1 = img.w * (i + 1) / BARS.len();
        img.fill(x0, 0, x1 - x0, bar_h, c);
    }
    img.fill(0, bar_h, img.w, img.h - bar_h, (16, 128, 128));
}

/// A luma ramp in the lower third that scrolls by 4 px per frame.
fn draw_gradient_band(img: &mut I420, seq: u64) {
    let y0 = img.h * 2 / 3 + img.h / 12;
    let y1 = (y0 + img.h / 6).min(img.h);
    let shift = (seq.wrapping_mul(4) % 256) as usize;
    for y in y0..y1 {
        for x in 0..img.w {
            let v = 16 + ((x * 2 + shift) % 220) as u8;
            img.set_luma(x, y, v);
        }
    }
}

/// A box that bounces left–right across the bars, so motion estimation has work to do.
fn draw_moving_box(img: &mut I420, seq: u64) {
    let size = (img.h / 6).max(4);
    let span = img.w.saturating_sub(size).max(1) as u64;
    let step = (img.w as u64 / 60).max(2);
    let t = (seq * step) % (2 * span);
    let x = if t < span { t } else { 2 * span - t } as usize;
    let y = img.h / 3;
    img.fill(x, y, size, size, (235, 128, 128));
    img.fill(x + size / 4, y + size / 4, size / 2, size / 2, (82, 90, 240));
}

/// Formats the overlay lines: frame counter and UTC wall time (" UTC" only if `utc`).
fn overlay_lines(seq: u64, wall_us: i64, utc: bool) -> (String, String) {
    let ms_of_day = wall_us.div_euclid(1000).rem_euclid(86_400_000);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    let suffix = if utc { " UTC" } else { "" };
    (format!("#{seq:07}"), format!("{h:02}:{m:02}:{s:02}.{ms:03}{suffix}"))
}

/// Glyph cell: 5x7 pixels plus 1 px spacing each way.
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
const CELL_W: usize = GLYPH_W + 1;
const CELL_H: usize = GLYPH_H + 2;

/// 5x7 bitmap font, one row per byte, bit 4 = leftmost pixel.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        '#' => [0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        _ => [0; 7],
    }
}

/// Longest line with and without the " UTC" suffix ("HH:MM:SS.mmm UTC" vs "HH:MM:SS.mmm").
const CHARS_UTC: usize = 16;
const CHARS_BARE: usize = 12;

fn fits(width: usize, chars: usize, scale: usize) -> bool {
    (chars * CELL_W + 2) * scale <= width
}

/// Scale and whether " UTC" is printed: prefer x3 on big frames and x2 otherwise; on small
/// frames drop " UTC" before dropping to x1, because a legible time matters more.
fn overlay_layout(width: usize) -> (usize, bool) {
    let preferred = if width >= 640 { 3 } else { 2 };
    for s in (2..=preferred).rev() {
        if fits(width, CHARS_UTC, s) {
            return (s, true);
        }
    }
    if fits(width, CHARS_BARE, 2) {
        return (2, false);
    }
    (1, fits(width, CHARS_UTC, 1))
}

/// Top-left rectangle `(x, y, w, h)` the overlay occupies, for a frame of the given size.
pub(crate) fn overlay_rect(width: u32, height: u32) -> (usize, usize, usize, usize) {
    let (s, utc) = overlay_layout(width as usize);
    let chars = if utc { CHARS_UTC } else { CHARS_BARE };
    let w = ((chars * CELL_W + 2) * s).min(width as usize);
    let h = ((2 * CELL_H + 2) * s).min(height as usize);
    (0, 0, w, h)
}

fn draw_text(img: &mut I420, x0: usize, y0: usize, scale: usize, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for (gy, bits) in rows.iter().enumerate() {
            for gx in 0..GLYPH_W {
                if bits & (0x10 >> gx) != 0 {
                    let px = x0 + (i * CELL_W + gx) * scale;
                    let py = y0 + gy * scale;
                    for dy in 0..scale {
                        for dx in 0..scale {
                            img.set_luma(px + dx, py + dy, 235);
                        }
                    }
                }
            }
        }
    }
}

/// Burns the counter and time into the top-left corner on a black plate, so it stays
/// legible over the bars and survives compression.
fn draw_overlay(img: &mut I420, seq: u64, wall_us: i64) {
    let (x, y, w, h) = overlay_rect(img.w as u32, img.h as u32);
    img.fill(x, y, w, h, (16, 128, 128));
    let (s, utc) = overlay_layout(img.w);
    let (l1, l2) = overlay_lines(seq, wall_us, utc);
    draw_text(img, x + s, y + s, s, &l1);
    draw_text(img, x + s, y + s + CELL_H * s, s, &l2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(width: u32, height: u32, paced: bool) -> TestPatternConfig {
        TestPatternConfig { width, height, fps: 30, paced }
    }

    #[test]
    fn rejects_odd_and_out_of_range_sizes() {
        assert!(TestPattern::new(cfg(321, 240, false)).is_err());
        assert!(TestPattern::new(cfg(320, 241, false)).is_err());
        assert!(TestPattern::new(cfg(8, 8, false)).is_err());
        assert!(TestPattern::new(TestPatternConfig { fps: 0, ..cfg(320, 240, false) }).is_err());
        assert!(TestPattern::new(cfg(160, 120, false)).is_ok());
    }

    #[test]
    fn unpaced_frames_have_synthetic_timestamps_and_right_size() {
        let mut tp = TestPattern::new(TestPatternConfig { fps: 15, ..cfg(160, 120, false) }).unwrap();
        let f0 = tp.next_frame().unwrap();
        let f1 = tp.next_frame().unwrap();
        let f2 = tp.next_frame().unwrap();
        assert_eq!((f0.seq, f1.seq, f2.seq), (0, 1, 2));
        assert_eq!((f0.pts_us, f1.pts_us, f2.pts_us), (0, 66_666, 133_333));
        assert_eq!(f1.wall_us - f0.wall_us, 66_666);
        assert_eq!(f0.data.len(), PixelFormat::I420.frame_len(160, 120).unwrap());
        assert_eq!(f0.format, tp.format());
        assert_ne!(f0.data, f1.data, "pattern moves every frame");
        assert_eq!(tp.dropped_frames(), 0);
    }

    #[test]
    fn overlay_counter_changes_between_frames() {
        for (w, h) in [(160, 120), (320, 240), (1280, 720)] {
            let mut tp = TestPattern::new(cfg(w, h, false)).unwrap();
            let f0 = tp.next_frame().unwrap();
            let f1 = tp.next_frame().unwrap();
            let (x, y, rw, rh) = overlay_rect(w, h);
            // Only the first text line (the counter) – the time line may or may not change.
            let line1_h = (rh / 2).min(h as usize);
            let region = |f: &Frame| -> Vec<u8> {
                (y..y + line1_h)
                    .flat_map(|row| f.data[row * w as usize + x..row * w as usize + x + rw].to_vec())
                    .collect()
            };
            let (r0, r1) = (region(&f0), region(&f1));
            let differing = r0.iter().zip(&r1).filter(|(a, b)| a != b).count();
            assert!(differing > 0, "{w}x{h}: counter pixels must change between frame 0 and 1");
            // The plate is drawn: text pixels (235) exist in the overlay.
            assert!(r0.contains(&235) && r0.contains(&16));
        }
    }

    #[test]
    fn overlay_text_renders_digits_legibly() {
        // Every glyph we print has ink; unknown glyphs are blank rather than panicking.
        for c in "0123456789:.#UTC".chars() {
            assert!(glyph(c).iter().any(|r| *r != 0), "glyph {c}");
        }
        assert_eq!(glyph('?'), [0; 7]);
        assert_eq!(overlay_lines(42, 3_723_004_000, true).0, "#0000042");
        assert_eq!(overlay_lines(42, 3_723_004_000, true).1, "01:02:03.004 UTC");
        assert_eq!(overlay_lines(1, -1000, false).1, "23:59:59.999");
        assert_eq!(overlay_layout(1280), (3, true));
        assert_eq!(overlay_layout(320), (2, true));
        assert_eq!(overlay_layout(160), (2, false));
        assert_eq!(overlay_layout(64), (1, false));
    }

    #[test]
    fn paced_source_runs_in_real_time_and_skips_when_late() {
        let mut tp = TestPattern::new(TestPatternConfig { width: 64, height: 48, fps: 50, paced: true }).unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            tp.next_frame().unwrap();
        }
        // Frames 0..4 are due at 0, 20, .., 80 ms.
        assert!(t.elapsed() >= Duration::from_millis(75), "paced: {:?}", t.elapsed());
        // Stall for ~5 frame periods: the source must skip, not burst.
        std::thread::sleep(Duration::from_millis(110));
        let f = tp.next_frame().unwrap();
        assert!(f.seq >= 9, "skipped ahead to current slot, got seq {}", f.seq);
        assert!(tp.dropped_frames() >= 4, "dropped {}", tp.dropped_frames());
        assert_eq!(f.pts_us, f.seq * 20_000);
    }
}
