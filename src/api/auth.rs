//! Optional API keys (`--api-keys-file`): one key per line with a role, and
//! optionally the tenant the key belongs to.
//!
//! ```text
//! # role   key      tenant
//! read     3f1c…             (GET: status, results, events, lists, stats, metrics, docs)
//! submit   9a77…    acme     (read, and POST /ingest)
//! admin    c0de…             (submit, and cancelling requests)
//! ```
//!
//! A key with a tenant sees and acts on only its tenant's requests, and is
//! refused the operator endpoints (the operations whose `api_key`
//! requirement names the `operator` scope: metrics, stats, the queues);
//! a key without a tenant is an operator's and sees everything, as does
//! every caller when no keys file is given.
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
use crate::domain::TenantName;

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

/// SHA-256 digests of the keys, with what each key is.
type Keys = Vec<([u8; 32], Key)>;

/// What a known key is: its role and, for a tenant's key, its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub role: Role,
    pub tenant: Option<TenantName>,
}

/// Who is asking, as the key middleware found it; in every request's
/// extensions. `tenant` is `None` for an operator's key, for what is open to
/// all, and for everyone when no keys file is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The key's role; `None` without a key.
    pub role: Option<Role>,
    pub tenant: Option<TenantName>,
}

impl Caller {
    /// The tenant this caller is confined to, if any.
    pub fn tenant(&self) -> Option<&TenantName> {
        self.tenant.as_ref()
    }

    /// Whether this caller may see a request of `owner` (its tenant, `None`
    /// for a request without one): a tenant sees only its own; everyone else
    /// sees all.
    pub fn may_see(&self, owner: Option<&TenantName>) -> bool {
        match &self.tenant {
            Some(mine) => owner == Some(mine),
            None => true,
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // A request the middleware did not see (none in the served router)
        // is nobody's: tenant-less.
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

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

    /// What a presented key is, if it is one of ours.
    pub fn key_of(&self, presented: &str) -> Option<Key> {
        self.reload_if_changed();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let loaded = self.lock();
        // Look at every key, whatever matches, so the time taken says nothing.
        let mut found = None;
        for (key, what) in &loaded.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(what);
            }
        }
        found.cloned()
    }

    /// The role of a presented key, if it is one of ours.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        self.key_of(presented).map(|key| key.role)
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
        let mut columns = line.split_whitespace();
        let (Some(role), Some(key)) = (columns.next(), columns.next()) else {
            return Err(bad("expected `<role> <key> [tenant]`"));
        };
        let tenant = columns.next();
        if columns.next().is_some() {
            return Err(bad("expected `<role> <key> [tenant]`: too many columns"));
        }
        let role =
            Role::parse(role).ok_or_else(|| bad("the role must be read, submit or admin"))?;
        if key.len() < MIN_KEY_LEN {
            return Err(bad(&format!(
                "a key needs at least {MIN_KEY_LEN} characters"
            )));
        }
        let tenant = tenant
            .map(|name| {
                TenantName::parse(name).map_err(|why| bad(&format!("tenant `{name}`: {why}")))
            })
            .transpose()?;
        keys.push((Sha256::digest(key.as_bytes()).into(), Key { role, tenant }));
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
    /// Whether it needs an operator's key (one without a tenant): its
    /// `api_key` requirement names the `operator` scope.
    operator: bool,
}

/// The scope that marks an operation as an operator's.
pub const OPERATOR_SCOPE: &str = "operator";

/// What an operation needs of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needed {
    role: Role,
    operator: bool,
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
                let scopes: Vec<&str> = operation["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|requirement| requirement["api_key"].as_array())
                    .flatten()
                    .filter_map(|scope| scope.as_str())
                    .collect();
                let role = scopes.iter().filter_map(|scope| Role::parse(scope)).min();
                let operator = scopes.contains(&OPERATOR_SCOPE);
                let segments = path
                    .split('/')
                    .map(|segment| (!segment.starts_with('{')).then(|| segment.to_owned()))
                    .collect();
                operations.push(Operation {
                    method,
                    segments,
                    role,
                    operator,
                });
            }
        }
        Self { operations }
    }

    /// What a request needs; `None` for what is open to all.
    fn needed(&self, method: &Method, path: &str) -> Option<Needed> {
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
            Some(operation) => operation.role.map(|role| Needed {
                role,
                operator: operation.operator,
            }),
            None => undocumented_role(method, path).map(|role| Needed {
                role,
                operator: false,
            }),
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
    mut request: Request,
    next: Next,
) -> Response {
    let Some(keys) = &app.api_keys else {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    };
    let Some(needed) = roles.needed(request.method(), request.uri().path()) else {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|key| keys.key_of(key)) {
        // A tenant's key is told first what no other role would change.
        Some(Key {
            tenant: Some(_), ..
        }) if needed.operator => {
            ApiError::forbidden("this endpoint needs an operator key (a key without a tenant)")
                .into_response()
        }
        Some(key) if key.role < needed.role => ApiError::forbidden(format!(
            "this key's role is {}; this needs {}",
            key.role.as_str(),
            needed.role.as_str()
        ))
        .into_response(),
        Some(Key { role, tenant }) => {
            request.extensions_mut().insert(Caller {
                role: Some(role),
                tenant,
            });
            next.run(request).await
        }
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
        for bad in [
            "owner aaaaaaaaaaaaaaaaaaaa",
            "read short",
            "justonetoken",
            "read aaaaaaaaaaaaaaaaaaaa acme extra",
            "read aaaaaaaaaaaaaaaaaaaa ac/me",
            "read aaaaaaaaaaaaaaaaaaaa acmé",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(ApiKeys::load(&path).is_err(), "{bad}");
        }
        assert!(ApiKeys::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn roles_needed_per_endpoint_come_from_the_document() {
        let roles = Roles::from_document(&crate::api::document());
        let needed = |method: Method, path: &str| roles.needed(&method, path).map(|n| n.role);
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

    #[test]
    fn the_third_column_is_the_keys_tenant() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        let long = "t".repeat(64);
        std::fs::write(
            &path,
            format!(
                "# role key tenant\nsubmit aaaaaaaaaaaaaaaaaaaa acme\n\
                 read\tbbbbbbbbbbbbbbbbbbbb   Globex_2.eu-1  \n\
                 admin cccccccccccccccccccc\nread dddddddddddddddddddd {long}\n"
            ),
        )
        .unwrap();
        let keys = ApiKeys::load(&path).unwrap();
        let key = |k: &str| keys.key_of(k).unwrap();
        assert_eq!(key("aaaaaaaaaaaaaaaaaaaa").role, Role::Submit);
        assert_eq!(key("aaaaaaaaaaaaaaaaaaaa").tenant.unwrap().as_str(), "acme");
        assert_eq!(
            key("bbbbbbbbbbbbbbbbbbbb").tenant.unwrap().as_str(),
            "Globex_2.eu-1"
        );
        assert_eq!(key("cccccccccccccccccccc").role, Role::Admin);
        assert_eq!(key("cccccccccccccccccccc").tenant, None);
        assert_eq!(key("dddddddddddddddddddd").tenant.unwrap().as_str(), long);
    }

    #[test]
    fn a_bad_tenant_is_refused_with_its_file_and_line() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        let long = "t".repeat(65);
        for bad in ["ac/me", "acmé", "a:b", long.as_str()] {
            std::fs::write(
                &path,
                format!(
                    "# keys\nread aaaaaaaaaaaaaaaaaaaa acme\nsubmit bbbbbbbbbbbbbbbbbbbb {bad}\n"
                ),
            )
            .unwrap();
            let error = ApiKeys::load(&path).err().unwrap().to_string();
            assert!(
                error.contains(&path.display().to_string()) && error.contains("line 3"),
                "{error}"
            );
            assert!(error.contains("tenant"), "{error}");
        }
    }

    #[test]
    fn operator_endpoints_come_from_the_document() {
        let roles = Roles::from_document(&crate::api::document());
        let operator = |method: Method, path: &str| roles.needed(&method, path).map(|n| n.operator);
        for (method, path) in [
            (Method::GET, "/stats"),
            (Method::GET, "/metrics"),
            (Method::GET, "/queues"),
            (Method::GET, "/queues/x"),
            (Method::PATCH, "/queues/x"),
            (Method::POST, "/queues/x/pause"),
            (Method::POST, "/queues/x/resume"),
        ] {
            assert_eq!(
                operator(method.clone(), path),
                Some(true),
                "{method} {path}"
            );
        }
        for (method, path) in [
            (Method::GET, "/status/x"),
            (Method::GET, "/ingestions"),
            (Method::GET, "/ingestions/x/results"),
            (Method::GET, "/events"),
            (Method::GET, "/status/x/events"),
            (Method::POST, "/ingest"),
            (Method::POST, "/ingestions/x/cancel"),
            (Method::DELETE, "/ingestions/x"),
            (Method::GET, "/readyz"),
            (Method::GET, "/openapi.json"),
            (Method::GET, "/nope"),
        ] {
            assert_eq!(
                operator(method.clone(), path),
                Some(false),
                "{method} {path}"
            );
        }
        assert_eq!(operator(Method::GET, "/healthz"), None);
    }
}
