//! Group `camera`: the camera variant of the qemu-aarch64-virt image (vivid as the camera,
//! vicodec as the V4L2 stateful encoder and decoder) records
//! (1) from vivid through vicodec's FWHT encoder — the hardware-encoder path — and
//! (2) from vivid through the software H.264 encoder. Both sessions verify on the host
//! with `lucidd verify`; the H.264 export decodes in ffprobe to the recorded frame count;
//! the FWHT export is split on the host to the recorded frame count and then decoded on
//! the device through vicodec's decoder (`lucidd hw decode`, via the variant's console
//! shell), every picture compared with a vivid frame (luma PSNR, printed).
//! On a real device (`--target ADDR`, `LUCID_HIL_TOKEN`, optional `LUCID_HIL_ENCODER` =
//! hardware|software|auto), only the H.264 part runs, with the device's own camera.

use std::process::Command;
use std::time::Duration;

use hil_tests::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn camera_image() -> std::path::PathBuf {
    repo().join("out").join(format!("{BOARD}-camera")).join(format!("{BOARD}-camera.img"))
}

fn put_camera(dev: &Device, body: &str) -> (u16, serde_json::Value) {
    let (code, b) = http("PUT", &dev.gateway("/api/v1/camera"), Some(&dev.token), Some(body)).unwrap();
    (code, json(&b).unwrap_or(serde_json::Value::Null))
}

fn camera(dev: &Device) -> serde_json::Value {
    let (code, b) = http("GET", &dev.gateway("/api/v1/camera"), None, None).unwrap();
    assert_eq!(code, 200, "GET /api/v1/camera: {}", String::from_utf8_lossy(&b));
    json(&b).unwrap()
}

fn export(dev: &Device, sid: &str, tag: &str) -> (std::path::PathBuf, Vec<u8>, String) {
    let url = dev.gateway(&format!("/api/v1/sessions/{sid}/export.mp4"));
    let path = work_dir().join(format!("{tag}-export"));
    let out = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(&path)
        .args(["-w", "%{http_code} %{content_type}", "-H", &format!("Authorization: Bearer {}", dev.token), &url])
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(meta.starts_with("200"), "export {sid}: {meta}");
    (path.clone(), std::fs::read(&path).unwrap(), meta)
}

#[test]
#[ignore = "boots QEMU; run by ./scripts/hil camera"]
fn records_from_vivid_through_vicodec_and_openh264_and_both_verify() {
    let img = camera_image();
    let mut dev = if remote_target().is_some() {
        Device::from_env("camera").unwrap()
    } else {
        Device::from_env_image("camera", &img).unwrap()
    };
    dev.wait_healthy(BOOT_TIMEOUT).unwrap();
    let cam = camera(&dev);
    println!("hil camera: devices {}", cam["devices"]);
    let devices = cam["devices"].as_array().cloned().unwrap_or_default();
    assert!(devices.iter().any(|d| d["role"] == "camera"), "no camera found: {cam}");
    let qemu = dev.qemu.is_some();
    if qemu {
        assert!(
            dev.qemu.as_ref().unwrap().console().contains("lucid-rcS: v4l2 /dev/video0: vivid"),
            "vivid did not appear"
        );
        assert!(
            devices.iter().any(|d| d["role"] == "codec"
                && d["capture_formats"].as_array().is_some_and(|f| f.iter().any(|x| x == "FWHT"))),
            "no FWHT encoder (vicodec): {cam}"
        );
    }
    // Bad settings are refused and change nothing.
    let before = camera(&dev)["settings"].clone();
    assert_eq!(put_camera(&dev, r#"{"codec":"mpeg2"}"#).0, 400);
    assert_eq!(put_camera(&dev, r#"{"colour":"blue"}"#).0, 400);
    assert_eq!(put_camera(&dev, r#"{"codec":"fwht","encoder":"software"}"#).0, 400);
    assert_eq!(put_camera(&dev, "[1,2]").0, 400);
    assert_eq!(camera(&dev)["settings"], before);

    if qemu {
        // (1) vivid -> vicodec stateful FWHT encoder (the V4L2 M2M path).
        let (code, body) = put_camera(&dev, r#"{"codec":"fwht","encoder":"hardware"}"#);
        assert_eq!(code, 200, "{body}");
        let (sid, stats) = record_session(&dev, "hil camera fwht");
        let state = camera(&dev)["state"].clone();
        assert_eq!(state["encoder"], "v4l2-fwht", "{state}");
        verify_evidence(&dev, &sid, "camera-fwht");
        let (path, stream, meta) = export(&dev, &sid, "camera-fwht");
        assert!(meta.contains("video/x-fwht"), "{meta}");
        let frames = lucid_media::fwht::split_stream(&stream).unwrap();
        let recorded = stats["frame_count"].as_u64().unwrap();
        assert_eq!(frames.len() as u64, recorded, "export frames vs recorded frames");
        assert!(frames[0].1.is_intra());
        assert_eq!(
            (frames[0].1.width, frames[0].1.height),
            (640, 360),
            "the visible size, not the 640x368 vicodec pads to"
        );
        println!(
            "hil camera: fwht session {sid}: {} chunks, {recorded} frames ({} intra), {} bytes; evidence verified on the host; opened {}",
            stats["chunks_count"],
            frames.iter().filter(|f| f.1.is_intra()).count(),
            stream.len(),
            state["opened"]
        );
        // Decode on the device through vicodec's stateful decoder, compared with vivid.
        let q = dev.qemu.as_mut().unwrap();
        let cmd = format!(
            "wget -q -O /tmp/s.fwht 'http://127.0.0.1:8087/api/v1/sessions/{sid}/export.mp4?access_token={QEMU_TOKEN}' && lucidd hw decode /tmp/s.fwht --reference auto --min-psnr 20; echo hw-decode-\"\"exit=$?"
        );
        // The console echoes what is typed: the `""` keeps the marker out of the echo, so
        // only the command's own output matches.
        q.send("").unwrap();
        q.send(&cmd).unwrap();
        q.wait_console("hw-decode-exit=", 1, Duration::from_secs(180)).unwrap();
        let c = q.console();
        let tail: Vec<&str> = c
            .lines()
            .filter(|l| {
                l.starts_with("input:")
                    || l.starts_with("decoded:")
                    || l.starts_with("psnr:")
                    || l.contains("lucidd hw:")
                    || l.starts_with("OK:")
                    || l.contains("hw-decode-exit=")
            })
            .collect();
        println!("hil camera: on-device decode:\n  {}", tail.join("\n  "));
        assert!(c.contains("hw-decode-exit=0"), "on-device decode failed:\n{}", q.console_tail(30));
        let _ = std::fs::remove_file(path);
    }

    // (2) H.264: in QEMU vivid -> OpenH264 (the software path every board has); on a real
    // device the encoder named by LUCID_HIL_ENCODER (default hardware: bcm2835-codec on a
    // Pi 0-4; use software on a Pi 5).
    let want = if qemu {
        "software".to_owned()
    } else {
        std::env::var("LUCID_HIL_ENCODER").unwrap_or_else(|_| "hardware".into())
    };
    let (code, body) = put_camera(&dev, &format!(r#"{{"codec":"h264","encoder":"{want}"}}"#));
    assert_eq!(code, 200, "{body}");
    let (sid, stats) = record_session(&dev, "hil camera h264");
    let state = camera(&dev)["state"].clone();
    match want.as_str() {
        "software" => assert_eq!(state["encoder"], "openh264", "{state}"),
        "hardware" => assert_eq!(state["encoder"], "v4l2-h264", "{state}"),
        _ => {}
    }
    verify_evidence(&dev, &sid, "camera-h264");
    let (path, _, meta) = export(&dev, &sid, "camera-h264");
    assert!(meta.contains("video/mp4"), "{meta}");
    let probe = ffprobe(&path, "codec_name,width,height,nb_read_frames");
    let recorded = stats["frame_count"].as_u64().unwrap();
    assert!(probe.starts_with("h264,"), "{probe}");
    assert!(probe.ends_with(&format!(",{recorded}")), "ffprobe says {probe}, the session recorded {recorded} frames");
    println!(
        "hil camera: h264 session {sid}: {} chunks, {recorded} frames, ffprobe {probe}; evidence verified on the host; opened {}",
        stats["chunks_count"], state["opened"]
    );

    if qemu {
        unplug_mid_recording_keeps_the_session(&mut dev);
    }
}

/// ffprobe's CSV line of the first video stream's `fields`, decoding every frame.
fn ffprobe(path: &std::path::Path, fields: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            &format!("stream={fields}"),
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn camera_connected(dev: &Device) -> Option<bool> {
    let (_, b) = http("GET", &dev.gateway("/health"), None, None).ok()?;
    json(&b).ok()?["services"]["camera"]["connected"].as_bool()
}

fn wait_connected(dev: &Device, want: bool, timeout: Duration) -> Duration {
    let t = std::time::Instant::now();
    while camera_connected(dev) != Some(want) {
        assert!(
            t.elapsed() < timeout,
            "camera.connected never became {want}; console:\n{}",
            dev.qemu.as_ref().unwrap().console_tail(30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    t.elapsed()
}

/// (3) vivid unbound from its driver mid-recording (the kernel's view of an unplug: the
/// node goes away, open handles get ENODEV), then bound again: the session keeps what it
/// had, marks the gap, resumes, and still verifies and decodes.
fn unplug_mid_recording_keeps_the_session(dev: &mut Device) {
    let sid = start_session(dev, "hil camera unplug");
    std::thread::sleep(Duration::from_secs(4));
    let before = camera(dev)["state"]["disconnects"].as_u64().unwrap_or(0);
    let q = dev.qemu.as_mut().unwrap();
    q.send("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind; echo gone-\"\"rc=$?").unwrap();
    q.wait_console("gone-rc=", 1, Duration::from_secs(30)).unwrap();
    assert!(q.console().contains("gone-rc=0"), "unbind failed:\n{}", q.console_tail(10));
    let noticed = wait_connected(dev, false, Duration::from_secs(20));
    let (_, h) = http("GET", &dev.gateway("/health"), None, None).unwrap();
    assert_eq!(json(&h).unwrap()["services"]["camera"]["status"], "degraded");
    std::thread::sleep(Duration::from_secs(3));
    let q = dev.qemu.as_mut().unwrap();
    q.send("echo vivid.0 > /sys/bus/platform/drivers/vivid/bind; echo back-\"\"rc=$?").unwrap();
    q.wait_console("back-rc=", 1, Duration::from_secs(30)).unwrap();
    assert!(q.console().contains("back-rc=0"), "bind failed:\n{}", q.console_tail(10));
    let back = wait_connected(dev, true, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(5));
    let stats = stop_session(dev, &sid);
    assert_eq!(camera(dev)["state"]["disconnects"].as_u64().unwrap_or(0), before + 1);
    let (code, pl) = http(
        "GET",
        &dev.gateway(&format!("/api/v1/sessions/{sid}/media/playlist.m3u8?access_token={}", dev.token)),
        None,
        None,
    )
    .unwrap();
    let pl = String::from_utf8_lossy(&pl).to_string();
    assert_eq!(code, 200, "{pl}");
    assert!(pl.contains("#EXT-X-DISCONTINUITY"), "no gap marked in the playlist:\n{pl}");
    verify_evidence(dev, &sid, "camera-unplug");
    let (path, _, _) = export(dev, &sid, "camera-unplug");
    let n = ffprobe(&path, "nb_read_frames");
    assert_eq!(n, stats["frame_count"].to_string(), "ffprobe frames vs recorded");
    println!(
        "hil camera: unplug: gap noticed {:.1} s after unbind, recording again {:.1} s after bind; session {sid}: {} chunks, {} frames, discontinuity in the playlist, evidence verified, export decodes",
        noticed.as_secs_f64(),
        back.as_secs_f64(),
        stats["chunks_count"],
        stats["frame_count"]
    );
}
