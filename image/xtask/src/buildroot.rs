//! Checks of the Buildroot external tree (`buildroot/`), which cannot be built here (no
//! source downloads): every file a defconfig or .mk names exists, and every defconfig
//! sets what its board needs. Pure reading of files; `xtask check-buildroot` and the
//! unit test below run it.

use std::path::Path;

use crate::board::{self, BootMethod, Encoder};

/// Keys every defconfig must set (to `y` unless a value is given).
const COMMON: &[&str] = &[
    "BR2_aarch64",
    "BR2_TOOLCHAIN_BUILDROOT_CXX",
    "BR2_INIT_BUSYBOX",
    "BR2_PACKAGE_LUCIDD",
    "BR2_TARGET_ROOTFS_SQUASHFS",
    "BR2_PACKAGE_HOST_GENIMAGE",
    "BR2_PACKAGE_HOST_DOSFSTOOLS",
    "BR2_PACKAGE_HOST_MTOOLS",
    // mke2fs for the data partition (post-image runs `xtask image --from-buildroot`).
    "BR2_PACKAGE_HOST_E2FSPROGS",
    "BR2_LINUX_KERNEL",
    "BR2_ROOTFS_OVERLAY",
    "BR2_ROOTFS_POST_BUILD_SCRIPT",
    "BR2_ROOTFS_POST_IMAGE_SCRIPT",
    "BR2_ROOTFS_POST_SCRIPT_ARGS",
];

/// Problems found, one line each; empty when the tree is consistent.
pub fn check(repo: &Path) -> Vec<String> {
    let br = repo.join("buildroot");
    let mut p = Vec::new();
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default();
    if !read(&br.join("external.desc")).lines().any(|l| l.trim() == "name: LUCID") {
        p.push("external.desc: no `name: LUCID` (BR2_EXTERNAL_LUCID_PATH depends on it)".into());
    }
    if !read(&br.join("external.mk")).contains("package/*/*.mk") {
        p.push("external.mk does not include package/*/*.mk".into());
    }
    let config_in = read(&br.join("Config.in"));
    // Every package has a Config.in sourced from the top and a .mk.
    for e in std::fs::read_dir(br.join("package")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if !dir.join("Config.in").exists() || !dir.join(format!("{name}.mk")).exists() {
            p.push(format!("package/{name}: needs Config.in and {name}.mk"));
        }
        if !config_in.contains(&format!("$BR2_EXTERNAL_LUCID_PATH/package/{name}/Config.in")) {
            p.push(format!("Config.in does not source package/{name}/Config.in"));
        }
        let mk = read(&dir.join(format!("{name}.mk")));
        p.extend(missing_refs(repo, &br, &mk, &format!("package/{name}/{name}.mk")));
    }
    let lucidd_mk = read(&br.join("package/lucidd/lucidd.mk"));
    for want in [
        "$(eval $(cargo-package))",
        "$(eval $(generic-package))",
        "BR2_PACKAGE_LUCIDD_PREBUILT",
        "aarch64-unknown-linux-musl/release/lucidd",
        "LUCIDD_SITE_METHOD = local",
        "-p lucidd",
    ] {
        if !lucidd_mk.contains(want) {
            p.push(format!("package/lucidd/lucidd.mk lacks `{want}`"));
        }
    }
    // One defconfig per board manifest, each complete for its board.
    for name in board::all_names(repo) {
        let f = br.join("configs").join(format!("lucid_{name}_defconfig"));
        let text = read(&f);
        if text.is_empty() {
            p.push(format!("no configs/lucid_{name}_defconfig for board/{name}.toml"));
            continue;
        }
        let b = match board::load(repo, &name, None) {
            Ok(b) => b,
            Err(e) => {
                p.push(e.to_string());
                continue;
            }
        };
        let at = format!("configs/lucid_{name}_defconfig");
        let get = |k: &str| -> Option<String> {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}=")).map(|v| v.trim_matches('"').to_owned()))
        };
        for k in COMMON {
            if get(k).is_none() {
                p.push(format!("{at}: {k} not set"));
            }
        }
        if get("BR2_ROOTFS_POST_SCRIPT_ARGS").as_deref() != Some(name.as_str()) {
            p.push(format!("{at}: BR2_ROOTFS_POST_SCRIPT_ARGS must be the board name {name}"));
        }
        let is_pi = b.boot.firmware_package.is_some() || b.boot.method == BootMethod::RpiTryboot;
        if is_pi {
            let tarball = get("BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION").unwrap_or_default();
            if !tarball.contains("github,raspberrypi,linux,") {
                p.push(format!("{at}: a Pi board needs the Raspberry Pi kernel (BR2_LINUX_KERNEL_CUSTOM_TARBALL of raspberrypi/linux)"));
            }
            let dts = get("BR2_LINUX_KERNEL_INTREE_DTS_NAME").unwrap_or_default();
            if dts.is_empty() {
                p.push(format!("{at}: BR2_LINUX_KERNEL_INTREE_DTS_NAME not set"));
            }
            if !b.boot.firmware_files.is_empty() && get("BR2_PACKAGE_RPI_FIRMWARE").is_none() {
                p.push(format!("{at}: the board loads {:?}: BR2_PACKAGE_RPI_FIRMWARE", b.boot.firmware_files));
            }
        }
        // A board whose Debian build carries wpa_supplicant has Wi-Fi: the Buildroot build
        // must carry it too, with the radio's firmware.
        if b.rootfs.packages.iter().any(|p| p.package == "wpasupplicant") {
            for k in [
                "BR2_PACKAGE_WPA_SUPPLICANT",
                "BR2_PACKAGE_WPA_SUPPLICANT_NL80211",
                "BR2_PACKAGE_BRCMFMAC_SDIO_FIRMWARE_RPI",
                "BR2_PACKAGE_BRCMFMAC_SDIO_FIRMWARE_RPI_WIFI",
            ] {
                if get(k).is_none() {
                    p.push(format!("{at}: board/{name}.toml carries wpa_supplicant: {k}"));
                }
            }
        }
        if b.hardware.encoder == Encoder::V4l2M2m && !is_pi {
            p.push(format!("{at}: a hardware encoder board must build the Raspberry Pi kernel"));
        }
        if b.boot.method == BootMethod::UbootEnv {
            let want = if is_pi { "rpi_arm64" } else { "qemu_arm64" };
            if get("BR2_TARGET_UBOOT").is_none() || get("BR2_TARGET_UBOOT_BOARD_DEFCONFIG").as_deref() != Some(want) {
                p.push(format!(
                    "{at}: U-Boot boards need BR2_TARGET_UBOOT with BR2_TARGET_UBOOT_BOARD_DEFCONFIG=\"{want}\""
                ));
            }
            if get("BR2_PACKAGE_HOST_UBOOT_TOOLS").is_none() {
                p.push(format!("{at}: boot.scr needs BR2_PACKAGE_HOST_UBOOT_TOOLS (mkimage)"));
            }
        }
        // post-image takes BINARIES_DIR/Image (Buildroot's default arm64 kernel format).
        for k in ["BR2_LINUX_KERNEL_IMAGEGZ", "BR2_LINUX_KERNEL_VMLINUX", "BR2_LINUX_KERNEL_IMAGE_TARGET_CUSTOM"] {
            if get(k).is_some() {
                p.push(format!("{at}: {k}: post-image needs the uncompressed arm64 Image"));
            }
        }
        p.extend(missing_refs(repo, &br, &text, &at));
    }
    // The hooks call the image tool's Buildroot entries (their command lines are parsed
    // by the CLI in a test of main.rs).
    for (hook, want) in [("post-build.sh", "rootfs-files"), ("post-image.sh", "--from-buildroot")] {
        let text = read(&br.join("board").join(hook));
        if !text.contains(want) {
            p.push(format!("board/{hook} does not call xtask {want}"));
        }
        if text.to_lowercase().contains("not implemented") {
            p.push(format!("board/{hook} still stops as not implemented"));
        }
    }
    p
}

/// `$(BR2_EXTERNAL_LUCID_PATH)/x` references that do not exist (scripts must be executable).
fn missing_refs(_repo: &Path, br: &Path, text: &str, at: &str) -> Vec<String> {
    let mut p = Vec::new();
    for token in ["$(BR2_EXTERNAL_LUCID_PATH)/", "$BR2_EXTERNAL_LUCID_PATH/"] {
        for piece in text.split(token).skip(1) {
            let rel: String = piece.chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != ')').collect();
            let path = br.join(&rel);
            // `../target/...` is a build output of this repository (the prebuilt static
            // daemon), made before Buildroot runs; the package checks for it at build time.
            if rel.starts_with("../target/") {
                continue;
            }
            if !path.exists() {
                p.push(format!("{at}: references {rel}, which does not exist"));
            } else if rel.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o111 == 0).unwrap_or(true) {
                    p.push(format!("{at}: {rel} is not executable"));
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_external_tree_is_consistent() {
        let problems = check(&crate::repo_root());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn the_check_catches_a_missing_reference() {
        let br = crate::repo_root().join("buildroot");
        let p = missing_refs(&crate::repo_root(), &br, "X=\"$(BR2_EXTERNAL_LUCID_PATH)/board/nope.sh\"", "t");
        assert_eq!(p.len(), 1);
    }
}
