//! Tidy checks over the repository (rust-analyzer's habit): every Rust source file opens
//! with a `//!` doc saying what it owns, and every 8087 route is in the OpenAPI file.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&repo_root().join("firmware"), &mut files);
    assert!(files.len() > 10);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading //! doc: {missing:#?}");
}

#[test]
fn openapi_documents_every_gateway_route() {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("firmware/lucidd/openapi.json")).unwrap())
            .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut undocumented = Vec::new();
    for file in ["gateway.rs", "appliance.rs", "update.rs", "tokens.rs", "network.rs"] {
        let src = std::fs::read_to_string(repo_root().join("firmware/lucidd/src/http").join(file)).unwrap();
        for line in src.lines() {
            let Some(rest) = line.trim().strip_prefix(".route(\"") else { continue };
            let route = rest.split('"').next().unwrap();
            let route = if route == "/api/v1/sessions/{id}/media/{file}" {
                "/api/v1/sessions/{id}/media/init.mp4"
            } else {
                route
            };
            if !paths.contains_key(route) {
                undocumented.push(route.to_owned());
            }
        }
    }
    assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
}

/// The document says what `http::auth` enforces: public operations declare no security,
/// every other one the bearer scheme and a 401, and admin-only ones a 403 for viewers.
#[test]
fn openapi_security_matches_the_access_policy() {
    use lucidd::engine::access::Role;
    use lucidd::http::auth::{Need, need};
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("firmware/lucidd/openapi.json")).unwrap())
            .unwrap();
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        // The document spells the media route's files out; the router has one template.
        let route =
            if path.starts_with("/api/v1/sessions/{id}/media/") { "/api/v1/sessions/{id}/media/{file}" } else { path };
        for (m, op) in ops.as_object().unwrap() {
            let Ok(method) = m.to_uppercase().parse::<axum::http::Method>() else { continue };
            let security = op["security"].as_array().map(|a| a.len());
            let has = |code: &str| op["responses"].get(code).is_some();
            match need(&method, route) {
                Need::Public if security != Some(0) => wrong.push(format!("{m} {path}: public, needs security: []")),
                Need::Role(r) => {
                    if security.unwrap_or(0) == 0 || !has("401") {
                        wrong.push(format!("{m} {path}: needs the bearer scheme and a 401"));
                    }
                    if r == Role::Admin && !has("403") {
                        wrong.push(format!("{m} {path}: admin only, needs a 403"));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "openapi.json disagrees with http::auth:\n{}", wrong.join("\n"));
}
