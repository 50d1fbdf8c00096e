//! Access control of every route on every port: default deny, one reviewed allow-list.
//!
//! Owns the policy: which routes are open to anyone on the LAN (`PUBLIC`, each with the
//! reason it may be), which mutations a viewer may make (`VIEWER_WRITES`), which reads only
//! an admin may make (`ADMIN_READS`), and which routes a signed share URL opens
//! (`SHARE_ROUTES`). Everything else needs a credential: reads a viewer token, writes the
//! admin token. `authorize` runs as a route layer on all five routers, so it sees the
//! matched route template, and a route added later is protected without anyone
//! remembering to ask for it. Handlers never check tokens themselves.
//!
//! It must not decide who a token belongs to (that is `engine::access`) and must not
//! accept a token in a URL: URLs end up in logs, playlists, browser history and Referer
//! headers. Players use share URLs, which carry an expiry and an HMAC, never a token.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::engine::access::{Principal, Role};

/// Routes anyone may call without a credential. Keep this list short; each entry says why
/// its answer is safe to give to anyone on the LAN.
pub const PUBLIC: &[(&str, &str, &str)] = &[
    ("GET", "/", "the service's name and version, as the Lucid contract requires; names no session"),
    ("GET", "/health", "liveness for load balancers, the supervisor and the trial-boot self-check"),
    ("GET", "/metrics", "Prometheus counters; scraped without credentials, name no session"),
    ("GET", "/api/v1/openapi.json", "the API document, the same for every device"),
    ("GET", "/api/v1/device", "the device's public identity (id, verifying key) that owners pin"),
    ("GET", "/api/v1/sessions/{id}/manifest", "signed, and reveals only digests and counts"),
    ("GET", "/api/v1/sessions/{id}/checkpoint", "a signed tree head: digests only"),
    ("GET", "/api/v1/sessions/{id}/checkpoints", "signed tree heads: digests only"),
    ("GET", "/api/v1/sessions/{id}/chunks/{index}/proof", "a Merkle path: digests only"),
    ("GET", "/api/v1/sessions/{id}/consistency", "a Merkle consistency proof: digests only"),
    (
        "GET",
        "/api/v1/sessions/{id}/evidence",
        "sealed chunks (AEAD under a key wrapped by the KEK), records, signatures",
    ),
    // The device log names sessions by id (already public: it is the origin of every
    // session checkpoint) and holds kinds, counts, digests, times and fixed deletion
    // reasons; never a name, a description or a key.
    ("GET", "/api/v1/device/log/checkpoint", "a signed tree head of the device log: digests only"),
    ("GET", "/api/v1/device/log/entries", "device-log events: session ids, counts, digests, no names"),
    ("GET", "/api/v1/device/log/proof", "a Merkle path: digests only"),
    ("GET", "/api/v1/device/log/consistency", "a Merkle consistency proof: digests only"),
    ("GET", "/api/v1/device/evidence", "the device log's events and signed checkpoints, the public key"),
    (
        "GET",
        "/api/v1/sessions/{id}/clip-evidence",
        "records, Merkle paths and signatures of some chunks: digests only, no sealed bytes, as evidence",
    ),
];

/// Mutations a viewer may make: asking for a share URL changes nothing on the device.
/// Every other mutation needs the admin token, among them `POST /api/v1/sessions/{id}/lock`
/// and `/unlock` (what retention may delete is the owner's decision).
pub const VIEWER_WRITES: &[(&str, &str)] = &[("POST", "/api/v1/sessions/{id}/share")];

/// Reads only an admin may make.
/// The settings report may quote a line of the owner's file (a parse error), which may
/// hold a secret they mistyped. The network report names the device's addresses and the
/// networks it joins (SSIDs, never a PSK): a map of the owner's premises.
pub const ADMIN_READS: &[(&str, &str)] =
    &[("GET", "/api/v1/tokens"), ("GET", "/api/v1/settings"), ("GET", "/api/v1/network")];

/// Routes a share URL (`?exp=…&sig=…`, signed for the `{id}` in the path) opens.
/// A clip is part of the export, so it is opened by the same share URL.
pub const SHARE_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/sessions/{id}/media/{file}"),
    ("GET", "/api/v1/sessions/{id}/export.mp4"),
    ("GET", "/api/v1/sessions/{id}/clip.mp4"),
];

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Public,
    Role(Role),
}

fn listed(list: &[(&str, &str)], method: &str, route: &str) -> bool {
    list.iter().any(|(m, r)| *m == method && *r == route)
}

/// The policy: what `method` on the route template `route` needs.
pub fn need(method: &Method, route: &str) -> Need {
    // HEAD is a GET without a body: it needs what the GET needs.
    let m = if method == Method::HEAD { "GET" } else { method.as_str() };
    if PUBLIC.iter().any(|(pm, pr, _)| *pm == m && *pr == route) {
        return Need::Public;
    }
    if listed(ADMIN_READS, m, route) {
        return Need::Role(Role::Admin);
    }
    if m == "GET" || listed(VIEWER_WRITES, m, route) {
        return Need::Role(Role::Viewer);
    }
    Need::Role(Role::Admin)
}

/// The bearer token of a request, if it sent one.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A query parameter, percent-decoding not needed: the values we read are base64url and
/// digits.
fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The `{id}` of a matched `/api/v1/sessions/{id}/...` route.
fn session_of_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/sessions/")?.split('/').next().filter(|s| !s.is_empty())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The route layer of all five routers: lets a request through only if the policy allows
/// it for the credential it carries. 401 without a valid credential, 403 for a viewer on
/// an admin route.
pub async fn authorize(
    State(engine): State<AppState>,
    route: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    // Route layers only run on matched routes, so the template is always there; a request
    // without one is refused rather than waved through.
    let Some(route) = route else {
        return ApiError::Unauthorized.into_response();
    };
    let want = match need(req.method(), route.as_str()) {
        Need::Public => return next.run(req).await,
        Need::Role(r) => r,
    };
    if query_param(&req, "access_token").is_some() {
        return ApiError::UnauthorizedBecause(
            "tokens are not accepted in URLs: send Authorization: Bearer, or use a share URL from \
             POST /api/v1/sessions/{id}/share"
                .into(),
        )
        .into_response();
    }
    if let Some(token) = bearer(&req) {
        return match engine.access().identify(token) {
            Some(p) if p.role() >= want => next.run(req).await,
            Some(Principal::Viewer { .. }) => {
                ApiError::Forbidden("a viewer token cannot do this; it needs the admin token".into()).into_response()
            }
            _ => ApiError::Unauthorized.into_response(),
        };
    }
    let m = if req.method() == Method::HEAD { "GET" } else { req.method().as_str() };
    if want == Role::Viewer && listed(SHARE_ROUTES, m, route.as_str()) {
        let path = req.uri().path();
        let exp = query_param(&req, "exp").and_then(|v| v.parse::<u64>().ok());
        let sig = query_param(&req, "sig");
        if let (Some(sid), Some(exp), Some(sig)) = (session_of_path(path), exp, sig) {
            if engine.access().check_share(sid, exp, sig, now_unix()) {
                return next.run(req).await;
            }
            return ApiError::UnauthorizedBecause("this share URL is expired or not valid for this session".into())
                .into_response();
        }
    }
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_deny_and_writes_need_admin() {
        assert_eq!(need(&Method::GET, "/api/v1/sessions"), Need::Role(Role::Viewer));
        assert_eq!(need(&Method::POST, "/api/v1/sessions"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::DELETE, "/sessions/{sid}/chunks/{cid}"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::GET, "/sessions/{sid}/chunks/{cid}"), Need::Role(Role::Viewer));
        assert_eq!(need(&Method::GET, "/a-route-added-later"), Need::Role(Role::Viewer));
        assert_eq!(need(&Method::PATCH, "/a-route-added-later"), Need::Role(Role::Admin));
    }

    #[test]
    fn allow_list_and_exceptions() {
        assert_eq!(need(&Method::GET, "/health"), Need::Public);
        assert_eq!(need(&Method::HEAD, "/health"), Need::Public);
        // Public means GET only: the same route with another method is protected.
        assert_eq!(need(&Method::POST, "/health"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::GET, "/api/v1/tokens"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::POST, "/api/v1/sessions/{id}/share"), Need::Role(Role::Viewer));
        // Locking decides what retention may delete: admin only, by the default for writes.
        assert_eq!(need(&Method::POST, "/api/v1/sessions/{id}/lock"), Need::Role(Role::Admin));
        assert_eq!(need(&Method::POST, "/api/v1/sessions/{id}/unlock"), Need::Role(Role::Admin));
    }

    #[test]
    fn every_public_entry_says_why() {
        for (m, r, why) in PUBLIC {
            assert_eq!(*m, "GET", "{r}: only reads may be public");
            assert!(why.len() > 20, "{r}: say why it is safe to be open");
        }
    }
}
