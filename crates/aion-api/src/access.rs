//! Who may do what. With tokens configured, every route but `/healthz` and the panel's static
//! files needs a bearer token whose role covers the route and whose tenant scope covers the
//! tenant asked for. Without tokens (loopback development mode) requests must name a loopback
//! `Host` (and `Origin`, when sent) with the bound port — a DNS-rebinding page cannot reach the
//! API — and mutating routes need the per-process CSRF secret the panel page carries.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Metric series, triggers, heatmap, training status, settings (read), `/metrics`.
    Read,
    /// Also start and cancel training.
    Operate,
    /// Also change the gate's settings (which apply to every tenant).
    Admin,
}

/// One token of the tokens file. The file holds the token's SHA-256, not the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (logs only).
    pub name: String,
    /// Hex SHA-256 of the token, e.g. `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    pub role: Role,
    /// Tenant ids it may see, or `["*"]` for all.
    pub tenants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    token: Vec<TokenEntry>,
}

/// The tokens the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(TokenEntry, [u8; 32])>,
}

/// Why a request was refused: 401 (who are you) or 403 (not allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(String),
    Forbidden(String),
}

/// The token a request carried, once matched.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    tenants: Option<Vec<String>>,
}

impl Principal {
    /// Loopback development mode: everything, for every tenant.
    pub fn local() -> Self {
        Self {
            name: "loopback".into(),
            role: Role::Admin,
            tenants: None,
        }
    }

    /// Whether the token covers every tenant.
    pub fn all_tenants(&self) -> bool {
        self.tenants.is_none()
    }

    pub fn may_see(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == tenant))
    }

    /// Checks role and tenant scope.
    pub fn allow(&self, need: Role, tenant: Option<&str>) -> Result<(), Denied> {
        if self.role < need {
            return Err(Denied::Forbidden(format!(
                "token {:?} has role {:?}; this needs {need:?}",
                self.name, self.role
            )));
        }
        match tenant {
            Some(t) if !self.may_see(t) => Err(Denied::Forbidden(format!(
                "token {:?} is not scoped to tenant {t:?}",
                self.name
            ))),
            None if need == Role::Admin && !self.all_tenants() => Err(Denied::Forbidden(format!(
                "token {:?} is scoped to some tenants; this changes all of them",
                self.name
            ))),
            _ => Ok(()),
        }
    }
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Equal in time independent of where the inputs differ (both are digests: same length).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Tokens {
    /// The tokens file (TOML, `[[token]]` tables), validated.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading tokens file {}: {e}", path.display()))?;
        let file: TokensFile =
            toml::from_str(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        let mut tokens = Self::default();
        for entry in file.token {
            tokens
                .add(entry)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(tokens)
    }

    /// A single token with every right (`--token` / `AION_API_TOKEN`).
    pub fn admin(token: &str) -> Self {
        let mut tokens = Self::default();
        tokens.entries.push((
            TokenEntry {
                name: "admin".into(),
                sha256: String::new(),
                role: Role::Admin,
                tenants: vec!["*".into()],
            },
            Sha256::digest(token.as_bytes()).into(),
        ));
        tokens
    }

    fn add(&mut self, entry: TokenEntry) -> Result<(), String> {
        let digest = parse_hex(&entry.sha256.to_ascii_lowercase())
            .ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", entry.name))?;
        if entry.tenants.is_empty() {
            return Err(format!(
                "token {:?}: tenants is empty (use [\"*\"] for all)",
                entry.name
            ));
        }
        for tenant in entry.tenants.iter().filter(|t| *t != "*") {
            aion_events::validate_tenant_id(tenant)
                .map_err(|r| format!("token {:?}: tenant {tenant:?}: {}", entry.name, r.message))?;
        }
        if self.entries.iter().any(|(_, d)| same(d, &digest)) {
            return Err(format!("token {:?} appears twice", entry.name));
        }
        self.entries.push((entry, digest));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of `Authorization: Bearer <token>`. Every entry is compared, whichever
    /// matches, so timing does not say which one did or how close a guess came.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Denied> {
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Denied::Unauthenticated("a bearer token is required".into()))?;
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = None;
        for (entry, d) in &self.entries {
            if same(d, &digest) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or_else(|| Denied::Unauthenticated("unknown bearer token".into()))?;
        Ok(Principal {
            name: entry.name.clone(),
            role: entry.role,
            tenants: (!entry.tenants.iter().any(|t| t == "*")).then(|| entry.tenants.clone()),
        })
    }
}

/// Loopback mode: the `Host` must be a loopback name with the bound port, and an `Origin`, when
/// sent, that same host over http.
pub fn check_loopback_host(
    bound: SocketAddr,
    host: Option<&str>,
    origin: Option<&str>,
) -> Result<(), Denied> {
    let port = bound.port();
    let allowed = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    let host = host.unwrap_or_default();
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Err(Denied::Forbidden(format!(
            "Host {host:?} is not this loopback server (use http://127.0.0.1:{port}/)"
        )));
    }
    if let Some(origin) = origin {
        if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
            return Err(Denied::Forbidden(format!(
                "Origin {origin:?} is not this server"
            )));
        }
    }
    Ok(())
}

/// A fresh random secret, hex (the loopback panel's CSRF secret).
pub fn random_secret() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares a presented CSRF secret with the process's, in constant time.
pub fn check_csrf(secret: &str, given: Option<&str>) -> Result<(), Denied> {
    let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
    match given {
        Some(g) if same(&digest(secret), &digest(g)) => Ok(()),
        _ => Err(Denied::Forbidden(
            "missing or wrong X-Aion-Csrf header (reload the panel)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn tokens() -> Tokens {
        let text = format!(
            "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"operate\"\ntenants = [\"acme\"]\n\
             [[token]]\nname = \"root\"\nsha256 = \"{}\"\nrole = \"admin\"\ntenants = [\"*\"]\n",
            sha("ops-secret"),
            sha("root-secret").to_uppercase()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, text).unwrap();
        Tokens::load(&path).unwrap()
    }

    #[test]
    fn tokens_authenticate_with_their_role_and_scope() {
        let t = tokens();
        let ops = t.authenticate(Some("Bearer ops-secret")).unwrap();
        assert_eq!((ops.name.as_str(), ops.role), ("ops", Role::Operate));
        assert!(ops.allow(Role::Operate, Some("acme")).is_ok());
        assert!(matches!(
            ops.allow(Role::Read, Some("globex")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            ops.allow(Role::Admin, None),
            Err(Denied::Forbidden(_))
        ));
        let root = t.authenticate(Some("Bearer root-secret")).unwrap();
        assert!(root.allow(Role::Admin, None).is_ok());
        assert!(root.allow(Role::Read, Some("globex")).is_ok());
        for bad in [
            None,
            Some("ops-secret"),
            Some("Bearer ops-secre"),
            Some("Bearer ops-secretx"),
            Some("Bearer "),
        ] {
            assert!(
                matches!(t.authenticate(bad), Err(Denied::Unauthenticated(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_scoped_admin_cannot_change_what_applies_to_every_tenant() {
        let p = Principal {
            name: "a".into(),
            role: Role::Admin,
            tenants: Some(vec!["acme".into()]),
        };
        assert!(p.allow(Role::Admin, None).is_err());
        assert!(p.allow(Role::Operate, Some("acme")).is_ok());
    }

    #[test]
    fn bad_tokens_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        for (text, reason) in [
            ("[[token]]\nname=\"a\"\nsha256=\"abc\"\nrole=\"read\"\ntenants=[\"*\"]", "64 hex"),
            (&*format!("[[token]]\nname=\"a\"\nsha256=\"{}\"\nrole=\"root\"\ntenants=[\"*\"]", sha("x")), "role"),
            (&*format!("[[token]]\nname=\"a\"\nsha256=\"{}\"\nrole=\"read\"\ntenants=[]", sha("x")), "empty"),
            (&*format!("[[token]]\nname=\"a\"\nsha256=\"{}\"\nrole=\"read\"\ntenants=[\"a b\"]", sha("x")), "tenant"),
            (&*format!("[[token]]\nname=\"a\"\nsha256=\"{0}\"\nrole=\"read\"\ntenants=[\"*\"]\n[[token]]\nname=\"b\"\nsha256=\"{0}\"\nrole=\"read\"\ntenants=[\"*\"]", sha("x")), "twice"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Tokens::load(&path).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn loopback_mode_accepts_only_its_own_host_and_origin() {
        let bound: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(check_loopback_host(bound, Some("127.0.0.1:8080"), None).is_ok());
        assert!(
            check_loopback_host(bound, Some("localhost:8080"), Some("http://localhost:8080"))
                .is_ok()
        );
        for (host, origin) in [
            (Some("evil.example:8080"), None),
            (None, None),
            (Some("127.0.0.1:9999"), None),
            (Some("127.0.0.1:8080"), Some("http://evil.example:8080")),
            (Some("127.0.0.1:8080"), Some("null")),
        ] {
            assert!(
                check_loopback_host(bound, host, origin).is_err(),
                "{host:?} {origin:?}"
            );
        }
    }

    #[test]
    fn csrf_needs_the_exact_secret() {
        let secret = random_secret().unwrap();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, random_secret().unwrap());
        assert!(check_csrf(&secret, Some(&secret)).is_ok());
        assert!(check_csrf(&secret, Some(&secret[..63])).is_err());
        assert!(check_csrf(&secret, None).is_err());
    }
}
