//! Format negotiation between a camera, an encoder and the configured picture: pure
//! functions over what the devices enumerate, so every choice is unit-tested without one.
//!
//! Owns the preference order (record H.264 from the camera as is; else the raw layout the
//! encoder takes without conversion: YU12/NV12, then YUYV) and the size pick. It must not
//! touch a device.

use super::{FourCc, FrameSizes};

/// Raw layouts the pipeline can feed an encoder, best first: 4:2:0 planar/semi-planar are
/// what both OpenH264 and the Pi's encoder take natively; YUYV (most UVC webcams) needs a
/// conversion for OpenH264 and costs twice the bandwidth.
pub const RAW_PREFERENCE: [FourCc; 3] = [FourCc::YU12, FourCc::NV12, FourCc::YUYV];

/// What the camera should deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraChoice {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    /// The camera's own H.264 is recorded as is: no encoder runs.
    pub passthrough: bool,
}

/// Picks the camera format.
///
/// - `camera`: the camera's formats in its own order.
/// - `encoder_inputs`: raw formats the chosen encoder takes, best first (for OpenH264:
///   YU12 natively, NV12/YUYV through `to_i420`).
/// - `allow_passthrough`: the recording codec is H.264 and the user did not force an
///   encoder, so a camera that emits H.264 is used as is.
pub fn choose_camera_format(
    camera: &[FourCc],
    encoder_inputs: &[FourCc],
    allow_passthrough: bool,
    sizes: impl Fn(FourCc) -> FrameSizes,
    want: (u32, u32),
) -> Result<CameraChoice, String> {
    if allow_passthrough && camera.contains(&FourCc::H264) {
        let (width, height) = pick_size(&sizes(FourCc::H264), want);
        return Ok(CameraChoice { fourcc: FourCc::H264, width, height, passthrough: true });
    }
    let fourcc = encoder_inputs.iter().find(|f| camera.contains(f)).copied().ok_or_else(|| {
        let cam: Vec<String> = camera.iter().map(|f| f.to_string()).collect();
        let enc: Vec<String> = encoder_inputs.iter().map(|f| f.to_string()).collect();
        format!("the camera offers [{}], the encoder takes [{}]: nothing in common", cam.join(", "), enc.join(", "))
    })?;
    let (width, height) = pick_size(&sizes(fourcc), want);
    Ok(CameraChoice { fourcc, width, height, passthrough: false })
}

/// The offered size closest to `want`: exact if offered; else the smallest that covers it
/// (a camera crops worse than it scales down); else the largest. Even sizes only, as 4:2:0
/// needs them.
pub fn pick_size(sizes: &FrameSizes, want: (u32, u32)) -> (u32, u32) {
    let even = |(w, h): (u32, u32)| (w & !1, h & !1);
    match sizes {
        FrameSizes::Unknown => even(want),
        FrameSizes::Stepwise { min, max, step } => {
            let fit = |v: u32, lo: u32, hi: u32, st: u32| {
                let v = v.clamp(lo, hi);
                lo + (v - lo) / st * st
            };
            even((fit(want.0, min.0, max.0, step.0), fit(want.1, min.1, max.1, step.1)))
        }
        FrameSizes::Discrete(list) => {
            let list: Vec<(u32, u32)> = list.iter().copied().filter(|&(w, h)| w % 2 == 0 && h % 2 == 0).collect();
            if list.contains(&want) {
                return want;
            }
            let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
            let covering = list.iter().filter(|&&(w, h)| w >= want.0 && h >= want.1).min_by_key(|&&s| area(s));
            covering.or_else(|| list.iter().max_by_key(|&&s| area(s))).copied().unwrap_or(even(want))
        }
    }
}

/// Raw formats OpenH264 is fed from, best first (YU12 natively; the others converted).
pub fn software_encoder_inputs() -> Vec<FourCc> {
    RAW_PREFERENCE.to_vec()
}

/// A hardware encoder's inputs in our preference order (its output-queue formats).
pub fn hardware_encoder_inputs(offered: &[FourCc]) -> Vec<FourCc> {
    RAW_PREFERENCE.iter().copied().filter(|f| offered.contains(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vivid_sizes(_: FourCc) -> FrameSizes {
        FrameSizes::Discrete(vec![(320, 180), (640, 360), (640, 480), (1280, 720), (1920, 1080)])
    }

    #[test]
    fn prefers_the_encoders_native_layout_the_camera_has() {
        let cam = [FourCc::YUYV, FourCc::NV12, FourCc::YU12, FourCc::MJPG];
        let c = choose_camera_format(&cam, &software_encoder_inputs(), true, vivid_sizes, (640, 480)).unwrap();
        assert_eq!((c.fourcc, c.width, c.height, c.passthrough), (FourCc::YU12, 640, 480, false));
        // An encoder taking only NV12 and YUYV gets NV12 even though the camera lists YUYV first.
        let hw = hardware_encoder_inputs(&[FourCc::YUYV, FourCc::NV12, FourCc::new(b"RGBP")]);
        assert_eq!(hw, vec![FourCc::NV12, FourCc::YUYV]);
        let c = choose_camera_format(&cam, &hw, true, vivid_sizes, (640, 480)).unwrap();
        assert_eq!(c.fourcc, FourCc::NV12);
    }

    #[test]
    fn a_camera_with_h264_is_recorded_as_is_unless_an_encoder_is_forced() {
        let cam = [FourCc::MJPG, FourCc::H264, FourCc::YUYV];
        let c = choose_camera_format(&cam, &software_encoder_inputs(), true, vivid_sizes, (1280, 720)).unwrap();
        assert!(c.passthrough);
        assert_eq!((c.fourcc, c.width, c.height), (FourCc::H264, 1280, 720));
        let c = choose_camera_format(&cam, &software_encoder_inputs(), false, vivid_sizes, (1280, 720)).unwrap();
        assert_eq!((c.fourcc, c.passthrough), (FourCc::YUYV, false));
    }

    #[test]
    fn nothing_in_common_is_a_clear_error() {
        let e = choose_camera_format(&[FourCc::MJPG], &software_encoder_inputs(), true, vivid_sizes, (640, 480))
            .unwrap_err();
        assert!(e.contains("[MJPG]") && e.contains("YU12"), "{e}");
    }

    #[test]
    fn sizes_exact_then_covering_then_largest() {
        let d = vivid_sizes(FourCc::YUYV);
        assert_eq!(pick_size(&d, (640, 480)), (640, 480));
        assert_eq!(pick_size(&d, (800, 600)), (1280, 720));
        assert_eq!(pick_size(&d, (4000, 3000)), (1920, 1080));
        let s = FrameSizes::Stepwise { min: (16, 16), max: (1920, 1088), step: (16, 16) };
        assert_eq!(pick_size(&s, (330, 250)), (320, 240));
        assert_eq!(pick_size(&s, (4000, 8)), (1920, 16));
        assert_eq!(pick_size(&FrameSizes::Unknown, (321, 241)), (320, 240));
    }
}
