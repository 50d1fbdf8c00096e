//! Build script: makes a static aarch64 musl link of OpenH264 find `libstdc++.a`.
//!
//! Owns only link-path discovery for that one target. It must not compile code, change
//! anything for other targets, or fail the build when the cross compiler is absent (it
//! warns; the link error that follows names the missing library).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CXX_aarch64_unknown_linux_musl");
    println!("cargo:rerun-if-env-changed=CXX_aarch64-unknown-linux-musl");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "aarch64-unknown-linux-musl" {
        return;
    }
    // openh264-sys2 compiles its C++ with this compiler (cc crate conventions) and links
    // `stdc++`; rust-lld does not know the cross compiler's library directory, so ask the
    // same compiler where its static libstdc++ lives.
    let cxx = std::env::var("CXX_aarch64_unknown_linux_musl")
        .or_else(|_| std::env::var("CXX_aarch64-unknown-linux-musl"))
        .unwrap_or_else(|_| "aarch64-linux-gnu-g++".to_owned());
    let mut parts = cxx.split_whitespace();
    let Some(program) = parts.next() else {
        println!("cargo:warning=lucid-media: empty CXX for {target}; libstdc++.a not added to the link path");
        return;
    };
    let output = Command::new(program).args(parts).arg("-print-file-name=libstdc++.a").output();
    let path = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => {
            println!("cargo:warning=lucid-media: `{cxx} -print-file-name=libstdc++.a` failed: {}", o.status);
            return;
        }
        Err(e) => {
            println!("cargo:warning=lucid-media: cannot run `{cxx}` to locate libstdc++.a: {e}");
            return;
        }
    };
    // gcc echoes the bare name back when it does not find the file.
    match Path::new(&path).parent() {
        Some(dir) if Path::new(&path).is_absolute() && Path::new(&path).exists() => {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        _ => {
            println!("cargo:warning=lucid-media: `{cxx}` does not know libstdc++.a (got `{path}`)")
        }
    }
}
