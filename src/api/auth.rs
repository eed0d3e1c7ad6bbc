//! Optional API keys (`--api-keys-file`): one key per line with a role.
//!
//! ```text
//! # role   key
//! read     3f1c…   (GET: status, results, events, lists, stats, metrics, docs)
//! submit   9a77…   (read, and POST /ingest)
//! admin    c0de…   (submit, and cancelling requests)
//! ```
//!
//! Keys are kept as SHA-256 digests and compared in constant time, every key
//! every time, so neither timing nor length gives one away. The file is read
//! again when it changes (checked at most once a second): keys rotate without
//! a restart. Without a file, every endpoint is open; `/healthz` always is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Shorter keys are refused: they could be guessed.
const MIN_KEY_LEN: usize = 16;
/// How often the file's modification time is checked.
const RECHECK: Duration = Duration::from_secs(1);

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Submit,
    Admin,
}

impl Role {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "submit" => Some(Self::Submit),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Submit => "submit",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}, line {1}: {2}")]
    Line(PathBuf, usize, String),
}

pub struct ApiKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    modified: Option<SystemTime>,
    checked: Instant,
    keys: Keys,
}

/// SHA-256 digests of the keys, with their roles.
type Keys = Vec<([u8; 32], Role)>;

impl ApiKeys {
    /// Reads the keys file; an unreadable or malformed file stops the start.
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let (modified, keys) = read_keys(path)?;
        Ok(Self {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                modified,
                checked: Instant::now(),
                keys,
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The role of a presented key, if it is one of ours.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        self.reload_if_changed();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let loaded = self.lock();
        // Look at every key, whatever matches, so the time taken says nothing.
        let mut found = None;
        for (key, role) in &loaded.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(*role);
            }
        }
        found
    }

    fn reload_if_changed(&self) {
        let mut loaded = self.lock();
        if loaded.checked.elapsed() < RECHECK {
            return;
        }
        loaded.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == loaded.modified {
            return;
        }
        match read_keys(&self.path) {
            Ok((modified, keys)) => {
                tracing::info!(keys = keys.len(), "API keys reloaded");
                loaded.modified = modified;
                loaded.keys = keys;
            }
            // A half-written file must not lock everyone out: keep the old keys.
            Err(error) => tracing::error!(%error, "API keys file not reloaded"),
        }
    }
}

fn read_keys(path: &Path) -> Result<(Option<SystemTime>, Keys), KeysError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeysError::Read(path.to_owned(), e))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| KeysError::Line(path.to_owned(), n + 1, why.to_owned());
        let (role, key) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<role> <key>`"))?;
        let role =
            Role::parse(role).ok_or_else(|| bad("the role must be read, submit or admin"))?;
        let key = key.trim();
        if key.len() < MIN_KEY_LEN {
            return Err(bad(&format!(
                "a key needs at least {MIN_KEY_LEN} characters"
            )));
        }
        keys.push((Sha256::digest(key.as_bytes()).into(), role));
    }
    Ok((modified, keys))
}

/// The role each operation of the API needs, read from the API document:
/// an operation's `security(...)` is the one place its role is written, so a
/// new endpoint cannot be documented with one role and guarded with another.
#[derive(Debug, Default)]
pub struct Roles {
    operations: Vec<Operation>,
}

#[derive(Debug)]
struct Operation {
    method: Method,
    /// The path's segments; `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
    /// `None` for an operation open to all (`/healthz`).
    role: Option<Role>,
}

impl Roles {
    /// The roles of every operation of `document`: the least role its
    /// `api_key` requirement names; none if it has no such requirement.
    pub fn from_document(document: &utoipa::openapi::OpenApi) -> Self {
        let document = serde_json::to_value(document).unwrap_or_default();
        let mut operations = Vec::new();
        let Some(paths) = document["paths"].as_object() else {
            return Self::default();
        };
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, operation) in item {
                let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
                    continue;
                };
                let role = operation["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|requirement| requirement["api_key"].as_array())
                    .flatten()
                    .filter_map(|scope| scope.as_str().and_then(Role::parse))
                    .min();
                let segments = path
                    .split('/')
                    .map(|segment| (!segment.starts_with('{')).then(|| segment.to_owned()))
                    .collect();
                operations.push(Operation {
                    method,
                    segments,
                    role,
                });
            }
        }
        Self { operations }
    }

    /// The role a request needs; `None` for what is open to all.
    fn needed(&self, method: &Method, path: &str) -> Option<Role> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let segments: Vec<&str> = path.split('/').collect();
        // The most literal match wins (`/a/b` over `/a/{x}`), as in routing.
        let documented = self
            .operations
            .iter()
            .filter(|op| op.method == *method && op.segments.len() == segments.len())
            .filter(|op| {
                op.segments
                    .iter()
                    .zip(&segments)
                    .all(|(want, got)| match want {
                        Some(literal) => literal == got,
                        None => !got.is_empty(),
                    })
            })
            .max_by_key(|op| op.segments.iter().filter(|s| s.is_some()).count());
        match documented {
            Some(operation) => operation.role,
            None => undocumented_role(method, path),
        }
    }
}

/// The role of what the API document does not describe: the dashboard's
/// page and assets hold no data, and a browser opening them cannot send a
/// key (what the page then reads does need one); any other read needs
/// `read`, anything else `admin`.
fn undocumented_role(method: &Method, path: &str) -> Option<Role> {
    match (method, path) {
        (&Method::GET, "/") => None,
        (&Method::GET, p) if p.starts_with("/dashboard/") => None,
        (&Method::GET, _) => Some(Role::Read),
        _ => Some(Role::Admin),
    }
}

/// Checks the bearer key of every request when keys are configured.
pub async fn require_key(
    State((app, roles)): State<(AppState, Arc<Roles>)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(keys) = &app.api_keys else {
        return next.run(request).await;
    };
    let Some(needed) = roles.needed(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|key| keys.role_of(key)) {
        Some(role) if role >= needed => next.run(request).await,
        Some(role) => ApiError::forbidden(format!(
            "this key's role is {}; this needs {}",
            role.as_str(),
            needed.as_str()
        ))
        .into_response(),
        None => {
            let mut response = ApiError::unauthorized(if presented.is_some() {
                "unknown API key"
            } else {
                "send an API key: Authorization: Bearer <key>"
            })
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_is_parsed_with_roles_and_comments() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# operators\nadmin  aaaaaaaaaaaaaaaaaaaa\n\nread bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.role_of("aaaaaaaaaaaaaaaaaaaa"), Some(Role::Admin));
        assert_eq!(keys.role_of("bbbbbbbbbbbbbbbbbbbb"), Some(Role::Read));
        assert_eq!(keys.role_of("bbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(keys.role_of(""), None);
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        for bad in ["owner aaaaaaaaaaaaaaaaaaaa", "read short", "justonetoken"] {
            std::fs::write(&path, bad).unwrap();
            assert!(ApiKeys::load(&path).is_err(), "{bad}");
        }
        assert!(ApiKeys::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn roles_needed_per_endpoint_come_from_the_document() {
        let roles = Roles::from_document(&crate::api::document());
        let needed = |method: Method, path: &str| roles.needed(&method, path);
        assert_eq!(needed(Method::GET, "/healthz"), None);
        assert_eq!(needed(Method::GET, "/"), None);
        assert_eq!(needed(Method::HEAD, "/"), None);
        assert_eq!(needed(Method::GET, "/dashboard/app.js"), None);
        assert_eq!(needed(Method::POST, "/"), Some(Role::Admin));
        assert_eq!(needed(Method::GET, "/status/x"), Some(Role::Read));
        assert_eq!(needed(Method::GET, "/status/x/events"), Some(Role::Read));
        assert_eq!(needed(Method::GET, "/openapi.json"), Some(Role::Read));
        assert_eq!(needed(Method::POST, "/ingest"), Some(Role::Submit));
        assert_eq!(needed(Method::DELETE, "/ingestions/x"), Some(Role::Admin));
        assert_eq!(
            needed(Method::POST, "/ingestions/x/cancel"),
            Some(Role::Admin)
        );
        assert_eq!(needed(Method::GET, "/queues/x"), Some(Role::Read));
        assert_eq!(needed(Method::PATCH, "/queues/x"), Some(Role::Admin));
        assert_eq!(needed(Method::POST, "/queues/x/pause"), Some(Role::Admin));
        // An unknown path: a read needs a key, anything else the most.
        assert_eq!(needed(Method::GET, "/nope"), Some(Role::Read));
        assert_eq!(needed(Method::PUT, "/ingest"), Some(Role::Admin));
    }
}
