//! Access control over real HTTP: every route of all five routers is denied without a
//! credential unless it is on the one allow-list (`http::auth::PUBLIC`); roles, viewer
//! tokens, share URLs, tokens in URLs, CORS, and the permissions of the files on disk.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::harness::{Client, Daemon, TOKEN, test_config};

const SERVICES: [&str; 5] = ["pipeline", "recorder", "processor", "storage", "gateway"];
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];

/// Every route template declared in `src/http/*.rs` (`.route("TEMPLATE", …)`).
fn declared_routes() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for piece in text.split(".route(\"").skip(1) {
            out.push(piece.split('"').next().unwrap().to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A concrete path for a template; ids that cannot collide with a static segment.
fn fill(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{file}" => "playlist.m3u8",
            "{index}" => "0",
            s if s.starts_with('{') => "zz-probe",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn public(method: &str, template: &str) -> bool {
    let m = if method == "HEAD" { "GET" } else { method };
    lucidd::http::auth::PUBLIC.iter().any(|(pm, pr, _)| *pm == m && *pr == template)
}

/// The router's fallback (no route of that path here) in either error shape.
fn is_fallback(status: u16, body: &str) -> bool {
    status == 404 && body.contains("\"Not Found\"")
}

#[test]
fn every_route_not_on_the_allow_list_answers_401_without_a_credential() {
    let d = Daemon::start();
    let http = reqwest::blocking::Client::new();
    let routes = declared_routes();
    assert!(routes.len() > 50, "found only {} routes: is the source scan broken?", routes.len());
    let mut seen = std::collections::BTreeSet::new();
    let mut protected = 0;
    let mut leaks = Vec::new();
    for svc in SERVICES {
        for template in &routes {
            let url = d.url(svc, &fill(template));
            let mut get_exists = false;
            for m in METHODS {
                let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
                // A JSON body, so that a route reached without auth would run its handler
                // rather than stop at a missing body.
                let r = http.request(method, &url).json(&json!({})).send().unwrap();
                let status = r.status().as_u16();
                let body = r.text().unwrap_or_default();
                // A HEAD answer has no body to tell the fallback by: it exists where GET does.
                let absent = if m == "HEAD" { !get_exists } else { status == 405 || is_fallback(status, &body) };
                if absent {
                    continue; // no such route on this port with this method
                }
                if m == "GET" {
                    get_exists = true;
                }
                seen.insert(template.clone());
                if public(m, template) {
                    continue;
                }
                protected += 1;
                if status != 401 {
                    leaks.push(format!("{svc} {m} {template} -> {status} {body}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "routes that answer without a credential:\n{}", leaks.join("\n"));
    let unseen: Vec<_> = routes.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(unseen.is_empty(), "declared routes no port answered: {unseen:?}");
    assert!(protected > 60, "only {protected} protected (service, method, route) triples");
    // The allow-list names only routes that exist.
    for (_, r, _) in lucidd::http::auth::PUBLIC {
        assert!(routes.iter().any(|t| t == r), "PUBLIC names {r}, which no router declares");
    }
}

#[test]
fn the_storage_chunk_read_of_issue_8_needs_a_credential() {
    let d = Daemon::start();
    let c = d.client();
    let sid = "sess-issue8";
    let up = c.post_json(
        &d.url("storage", &format!("/sessions/{sid}/chunks")),
        &json!({"chunk_data": "aGVsbG8=", "chunk_metadata": {
            "chunk_id": "c0", "chunk_index": 0, "timestamp": "2026-01-01T00:00:00Z",
            "hash_sha256": lucidd::util::hex(ring::digest::digest(&ring::digest::SHA256, b"hello").as_ref()),
        }}),
    );
    assert!(up.status < 300, "upload: {} {}", up.status, up.text());
    let url = d.url("storage", &format!("/sessions/{sid}/chunks/c0"));
    let anon = d.anon().get(&url);
    assert_eq!(anon.status, 401, "{}", anon.text());
    assert!(!anon.text().contains("aGVsbG8="), "plaintext leaked in a 401");
    assert_eq!(anon.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    assert_eq!(c.get(&url).status, 200);
    // Listing sessions is not open either.
    assert_eq!(d.anon().get(&d.url("gateway", "/api/v1/sessions")).status, 401);
}

fn viewer(d: &Daemon, name: &str) -> (String, Client) {
    let r = d.client().post_json(&d.url("gateway", "/api/v1/tokens"), &json!({"name": name, "role": "viewer"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    for k in ["id", "name", "role", "token", "created_at"] {
        assert!(v.get(k).is_some(), "token response lacks {k}: {v}");
    }
    assert_eq!(v["role"], "viewer");
    let token = v["token"].as_str().unwrap().to_owned();
    (v["id"].as_str().unwrap().to_owned(), Client { http: reqwest::blocking::Client::new(), token: Some(token) })
}

/// Records a short camera session and stops it.
fn record(d: &Daemon, c: &Client) -> String {
    let s = c.post_json(&d.url("gateway", "/api/v1/sessions"), &json!({"name": "access"})).json();
    let sid = s["session_id"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/start"))).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(c.post(&d.url("gateway", &format!("/api/v1/sessions/{sid}/stop"))).status, 200);
    sid
}

#[test]
fn viewer_tokens_read_but_never_mutate_and_revocation_is_immediate() {
    let d = Daemon::start();
    let admin = d.client();
    let (id, v) = viewer(&d, "kitchen tablet");
    let sessions = d.url("gateway", "/api/v1/sessions");
    assert_eq!(v.get(&sessions).status, 200);
    let r = v.post_json(&sessions, &json!({"name": "x"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(v.get(&d.url("gateway", "/api/v1/tokens")).status, 403);
    assert_eq!(v.post(&d.url("storage", "/cleanup")).status, 403);
    assert_eq!(v.put_json(&d.url("gateway", "/api/v1/camera"), &json!({"encoder": "software"})).status, 403);

    // The listing never shows a secret or its hash.
    let list = admin.get(&d.url("gateway", "/api/v1/tokens"));
    assert_eq!(list.status, 200);
    let text = list.text();
    assert!(text.contains("kitchen tablet"));
    assert!(!text.contains(v.token.as_deref().unwrap()) && !text.contains("sha256"), "{text}");
    // Names are unique; bad bodies are 422; only viewer tokens can be made.
    assert_eq!(admin.post_json(&d.url("gateway", "/api/v1/tokens"), &json!({"name": "kitchen tablet"})).status, 409);
    assert_eq!(admin.post_json(&d.url("gateway", "/api/v1/tokens"), &json!({"name": 5})).status, 422);
    assert_eq!(
        admin.post_json(&d.url("gateway", "/api/v1/tokens"), &json!({"name": "a", "role": "admin"})).status,
        400
    );

    assert_eq!(admin.delete(&d.url("gateway", &format!("/api/v1/tokens/{id}"))).status, 204);
    assert_eq!(v.get(&sessions).status, 401, "a revoked token still works");
    assert_eq!(admin.delete(&d.url("gateway", &format!("/api/v1/tokens/{id}"))).status, 404);
}

#[test]
fn viewer_tokens_survive_a_restart_and_are_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let token = {
        let d = Daemon::start_with(tempfile::tempdir().unwrap(), cfg.clone());
        let (_, v) = viewer(&d, "restart");
        v.token.unwrap()
    };
    let d = Daemon::start_with(dir, cfg);
    let v = Client { http: reqwest::blocking::Client::new(), token: Some(token.clone()) };
    assert_eq!(v.get(&d.url("gateway", "/api/v1/sessions")).status, 200);
    let store = std::fs::read(d.dir.path().join("lucid.redb")).unwrap();
    assert!(!store.windows(token.len()).any(|w| w == token.as_bytes()), "the token is stored in clear");
}

#[test]
fn share_urls_open_one_sessions_media_and_nothing_else() {
    let d = Daemon::start();
    let admin = d.client();
    let (_, v) = viewer(&d, "player");
    let sid = record(&d, &admin);
    let other = record(&d, &admin);

    let r = v.post_json(&d.url("gateway", &format!("/api/v1/sessions/{sid}/share")), &json!({"ttl_seconds": 600}));
    assert_eq!(r.status, 200, "{}", r.text());
    let share: Value = r.json();
    let export_url = share["export_url"].as_str().unwrap();
    let playlist_url = share["playlist_url"].as_str().unwrap();
    assert!(share["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(!export_url.contains(TOKEN) && !export_url.contains(v.token.as_deref().unwrap()));

    // Anyone with the URL gets exactly what the admin gets.
    let shared = d.anon().get(&d.url("gateway", export_url));
    assert_eq!(shared.status, 200, "{}", shared.text());
    assert_eq!(shared.body, admin.get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/export.mp4"))).body);
    // The playlist hands the signature on to the init segment and every fragment.
    let pl = d.anon().get(&d.url("gateway", playlist_url)).text();
    let q = &export_url[export_url.find('?').unwrap()..];
    let uris: Vec<&str> = pl.lines().filter(|l| l.ends_with(q)).collect();
    assert!(uris.len() >= 2, "{pl}");
    let frag = uris.iter().find(|u| u.contains(".m4s")).unwrap();
    let base = format!("/api/v1/sessions/{sid}/media/");
    assert_eq!(d.anon().get(&d.url("gateway", &format!("{base}{frag}"))).status, 200);
    assert!(pl.contains(&format!("#EXT-X-MAP:URI=\"init.mp4{q}\"")), "{pl}");

    // Bound to that session, those routes and that signature.
    let elsewhere = export_url.replace(&sid, &other);
    assert_eq!(d.anon().get(&d.url("gateway", &elsewhere)).status, 401);
    let chunk = format!("/api/v1/sessions/{sid}/chunks/0/download{q}");
    assert_eq!(d.anon().get(&d.url("gateway", &chunk)).status, 401);
    let tampered = export_url.replace("exp=", "exp=1");
    assert_eq!(d.anon().get(&d.url("gateway", &tampered)).status, 401);
    let mut bad_sig = export_url.to_owned();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(d.anon().get(&d.url("gateway", &bad_sig)).status, 401);
    // TTL bounds.
    let share_url = d.url("gateway", &format!("/api/v1/sessions/{sid}/share"));
    assert_eq!(v.post_json(&share_url, &json!({"ttl_seconds": 1})).status, 400);
    assert_eq!(v.post_json(&share_url, &json!({"ttl_seconds": 99999999})).status, 400);
    assert_eq!(v.post(&share_url).status, 200, "an empty body takes the default TTL");
    assert_eq!(d.anon().post(&share_url).status, 401);
}

#[test]
fn tokens_in_urls_are_refused_with_a_reason() {
    let d = Daemon::start();
    let sid = record(&d, &d.client());
    for path in [
        format!("/api/v1/sessions/{sid}/export.mp4?access_token={TOKEN}"),
        format!("/api/v1/sessions/{sid}/media/playlist.m3u8?access_token={TOKEN}"),
        format!("/api/v1/sessions?access_token={TOKEN}"),
    ] {
        let r = d.anon().get(&d.url("gateway", &path));
        assert_eq!(r.status, 401, "{path}");
        assert!(r.text().contains("share"), "the 401 should point to share URLs: {}", r.text());
    }
    // A playlist fetched with the header names no credential in its URIs.
    let pl = d.client().get(&d.url("gateway", &format!("/api/v1/sessions/{sid}/media/playlist.m3u8"))).text();
    assert!(!pl.contains(TOKEN) && !pl.contains("access_token"), "{pl}");
}

#[test]
fn cors_is_closed_by_default_and_star_never_carries_credentials() {
    let probe = |d: &Daemon| {
        reqwest::blocking::Client::new()
            .request(reqwest::Method::OPTIONS, d.url("gateway", "/api/v1/sessions"))
            .header("Origin", "http://evil.example")
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
            .unwrap()
    };
    let d = Daemon::start();
    let r = probe(&d);
    assert!(r.headers().get("access-control-allow-origin").is_none(), "default CORS lets a page in: {:?}", r.headers());

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.cors_origins = "*".into();
    let d = Daemon::start_with(dir, cfg);
    let r = probe(&d);
    assert_eq!(r.headers().get("access-control-allow-origin").unwrap(), "*");
    assert!(r.headers().get("access-control-allow-credentials").is_none());

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.cors_origins = "http://nvr.lan, http://tablet.lan".into();
    let d = Daemon::start_with(dir, cfg);
    assert!(probe(&d).headers().get("access-control-allow-origin").is_none());
}

#[test]
fn an_empty_token_is_refused_at_start() {
    for t in ["", "   ", "\n"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        cfg.api_token = Some(t.into());
        let err = lucidd::Engine::open(cfg).expect_err("an empty token must not start");
        assert!(err.to_string().contains("empty"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.api_token = None;
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let p = dir.path().join("keys/api-token");
    std::fs::write(&p, "  \n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = lucidd::Engine::open(cfg).expect_err("an empty token file must not start");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn keys_and_store_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = {
        let mut c = test_config(&data);
        c.data_dir = data.clone();
        c
    };
    // SAFETY: umask only changes this process's file-creation mask; 0 is the worst case.
    let old = unsafe { libc::umask(0) };
    let opened = lucidd::Engine::open(cfg);
    unsafe { libc::umask(old) };
    let engine = opened.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("keys")), 0o700);
    assert_eq!(mode(&data.join("lucid.redb")), 0o600);
    for k in ["device.pk8", "kek", "url-key"] {
        assert_eq!(mode(&data.join("keys").join(k)), 0o600, "{k}");
    }
    engine.shutdown();
}
