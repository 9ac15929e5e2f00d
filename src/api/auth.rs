//! Who is calling: `Authorization: Bearer <key>`, each key bound to a tenant. Keys are
//! held only as BLAKE3 hashes and compared in constant time. With no keys configured
//! there is one open tenant, and the server only listens on loopback (checked at start).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::AppState;

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<(blake3::Hash, String)>,
    open_tenant: String,
}

impl ApiKeys {
    /// Parses `tenant=secret` / `tenant=blake3:<hex>` entries.
    pub fn from_config(entries: &[String], open_tenant: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let (tenant, secret) = entry
                .split_once('=')
                .filter(|(t, s)| !t.trim().is_empty() && !s.is_empty())
                .ok_or_else(|| format!("auth.keys[{i}]: expected `tenant=secret` or `tenant=blake3:<hex>`"))?;
            let hash = match secret.strip_prefix("blake3:") {
                Some(hex) => blake3::Hash::from_hex(hex).map_err(|_| format!("auth.keys[{i}]: bad BLAKE3 hex"))?,
                None => blake3::hash(secret.as_bytes()),
            };
            keys.push((hash, tenant.trim().to_owned()));
        }
        if open_tenant.is_empty() {
            return Err("auth.open_tenant must not be empty".into());
        }
        Ok(Self { keys, open_tenant: open_tenant.to_owned() })
    }

    /// Whether requests need a key.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant a request's `Authorization` header names.
    pub fn tenant(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        if !self.required() {
            return Ok(self.open_tenant.clone());
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <key>` header"))?;
        let presented = blake3::hash(token.as_bytes());
        // Hash equality is constant-time; every key is compared so timing says nothing
        // about which one matched.
        let mut found = None;
        for (hash, tenant) in &self.keys {
            if *hash == presented {
                found = Some(tenant);
            }
        }
        found.cloned().ok_or_else(|| unauthorized("unknown API key"))
    }
}

/// The caller's tenant, as an extractor: handlers that take it are authenticated.
pub struct Tenant(pub String);

impl FromRequestParts<Arc<AppState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        state.keys.tenant(header).map(Tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_tenants_and_hashed_keys_work() {
        let hashed = format!("globex=blake3:{}", blake3::hash(b"t0p").to_hex());
        let keys = ApiKeys::from_config(&["acme=s3cret".into(), hashed], "default").unwrap();
        assert_eq!(keys.tenant(Some("Bearer s3cret")).unwrap(), "acme");
        assert_eq!(keys.tenant(Some("Bearer t0p")).unwrap(), "globex");
        assert_eq!(keys.tenant(Some("Bearer nope")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(keys.tenant(None).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(keys.tenant(Some("s3cret")).unwrap_err().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn no_keys_means_the_open_tenant_and_bad_entries_are_named() {
        let keys = ApiKeys::from_config(&[], "default").unwrap();
        assert!(!keys.required());
        assert_eq!(keys.tenant(None).unwrap(), "default");
        let err = ApiKeys::from_config(&["nokey".into()], "default").err().unwrap();
        assert!(err.contains("auth.keys[0]"));
        let err = ApiKeys::from_config(&["t=blake3:zz".into()], "default").err().unwrap();
        assert!(err.contains("BLAKE3"));
    }
}
