//! `lucidd hw`: what V4L2 hardware this device has, and proof that a recording decodes on
//! it. `list` prints the devices as the recorder sees them; `decode` feeds a FWHT export
//! through a V4L2 stateful decoder (vicodec) and compares every decoded picture with a
//! frame captured from the camera (luma PSNR), which is how the emulated image proves the
//! encoder path end to end (docs/hardware.md).
//!
//! Owns only these diagnostics. It must not touch the store: it runs beside the daemon.

use std::path::{Path, PathBuf};

use lucid_media::v4l2::{self, CameraConfig, FourCc, V4l2Camera, V4l2Decoder};
use lucid_media::{Codec, FrameSource};

/// Prints every /dev/video* node with its role and formats.
pub fn list() -> anyhow::Result<()> {
    let found = v4l2::scan(Path::new("/dev"));
    if found.is_empty() {
        println!("no V4L2 devices in /dev");
    }
    for f in &found {
        let fmt = |v: &[FourCc]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        println!(
            "{}\t{}\t{}\t{:?}\tcapture={}\toutput={}",
            f.path.display(),
            f.driver,
            f.card,
            f.role,
            fmt(&f.capture),
            fmt(&f.output)
        );
    }
    if let Some(c) = v4l2::find_camera(&found) {
        println!("camera: {}", c.path.display());
    }
    for codec in [Codec::H264, Codec::Fwht] {
        if let Some(e) = v4l2::find_encoder(&found, FourCc::of_codec(codec)) {
            println!("{} encoder: {}", codec.name(), e.path.display());
        }
    }
    Ok(())
}

/// Luma PSNR in dB of two equally sized planes (infinite when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    let se: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = se / n as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// The visible `w`x`h` of the Y plane (tightly packed) of a decoded buffer; the decoder's
/// buffer may be padded and aligned beyond the picture (`layout` says where it is).
fn luma(f: &v4l2::Format, data: &[u8], w: usize, h: usize) -> Option<Vec<u8>> {
    let l = v4l2::layout::layout(f.fourcc.pixel_format()?, w, h, f.bytesperline as usize, f.height as usize)?;
    v4l2::layout::unpack(data, &l.planes[..1])
}

pub struct DecodeArgs {
    pub input: PathBuf,
    pub decoder: Option<PathBuf>,
    /// Camera to take the reference picture from; `None` skips the comparison.
    pub reference: Option<Option<PathBuf>>,
    pub min_psnr: f64,
}

/// Decodes a FWHT export; with a reference camera, checks every picture against it.
pub fn decode(a: &DecodeArgs) -> anyhow::Result<()> {
    let stream = std::fs::read(&a.input).map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    let frames = lucid_media::fwht::split_stream(&stream).map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
    anyhow::ensure!(!frames.is_empty(), "{}: no frames", a.input.display());
    let (w, h) = (frames[0].1.width, frames[0].1.height);
    let intra = frames.iter().filter(|f| f.1.is_intra()).count();
    println!("input: {} FWHT frames ({intra} intra), {w}x{h}, {} bytes", frames.len(), stream.len());
    let mut dec = V4l2Decoder::open(a.decoder.as_deref(), Codec::Fwht)?;
    let mut pictures = Vec::new();
    for (i, (off, hdr)) in frames.iter().enumerate() {
        let got = dec.decode(&stream[*off..*off + hdr.frame_len()]).map_err(|e| anyhow::anyhow!("frame {i}: {e}"))?;
        pictures.extend(got);
    }
    pictures.extend(dec.finish()?);
    let Some((fmt, _)) = pictures.first() else { anyhow::bail!("the decoder returned no pictures") };
    println!("decoded: {} pictures, {} {}x{}", pictures.len(), fmt.fourcc, fmt.width, fmt.height);
    anyhow::ensure!(pictures.len() == frames.len(), "decoded {} pictures from {} frames", pictures.len(), frames.len());
    let Some(cam) = &a.reference else { return Ok(()) };
    // The reference: a fresh picture from the camera in the same size and layout.
    let cfg = CameraConfig {
        device: cam.clone(),
        width: w,
        height: h,
        fps: 10,
        encoder_inputs: vec![fmt.fourcc],
        allow_passthrough: false,
        buffers: 2,
    };
    let mut camera = V4l2Camera::open(&cfg)?;
    let mut reference = camera.next_frame()?;
    for _ in 0..2 {
        reference = camera.next_frame()?;
    }
    drop(camera);
    anyhow::ensure!(
        (reference.format.width, reference.format.height) == (w, h),
        "the camera gave {}x{}, the recording is {w}x{h}",
        reference.format.width,
        reference.format.height
    );
    let (w, h) = (w as usize, h as usize);
    let ref_y = reference.data[..w * h].to_vec();
    let mut values = Vec::new();
    for (i, (f, data)) in pictures.iter().enumerate() {
        let y = luma(f, data, w, h).ok_or_else(|| anyhow::anyhow!("picture {i}: short buffer"))?;
        values.push(psnr(&y, &ref_y));
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    // Baseline: the same pictures against a flat mid-grey frame. A match must beat it by
    // far, or the comparison proves nothing.
    let grey = vec![128u8; ref_y.len()];
    let y0 = luma(&pictures[0].0, &pictures[0].1, w, h).unwrap_or_default();
    let baseline = psnr(&y0, &grey);
    println!(
        "psnr: luma vs camera reference min {min:.1} dB, mean {mean:.1} dB over {} pictures (flat grey baseline {baseline:.1} dB)",
        values.len()
    );
    anyhow::ensure!(
        min >= a.min_psnr,
        "lowest PSNR {min:.1} dB is under {} dB: the decoded pictures do not match the camera",
        a.min_psnr
    );
    println!("OK: every picture decodes and matches the camera");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_is_infinite_for_equal_and_drops_with_error() {
        let a = vec![100u8; 64];
        assert!(psnr(&a, &a).is_infinite());
        let mut b = a.clone();
        b[0] = 110;
        let small = psnr(&a, &b);
        let c = vec![0u8; 64];
        assert!(small > 40.0 && psnr(&a, &c) < 10.0, "{small}");
    }
}
