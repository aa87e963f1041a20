//! Short-lived role credentials for registered agents (issue 3, "roles with
//! trust to agents"). An agent trades its long-term registration key for an
//! `ASIA…` access key, a secret and a session token valid for
//! `iam.role_credentials_ttl_secs`, and refreshes them before they expire.
//!
//! The credentials are stateless, so every gateway sharing the root key
//! accepts them and nothing needs storing or cleaning up:
//! - secret = base64(HMAC(k_secret, access key id)), 40 characters;
//! - token  = base64url(version ‖ expiry ms ‖ principal ‖ access key id ‖
//!   HMAC(k_token, everything before)).
//!
//! Both keys are derived from `root.key` with distinct labels, so neither is
//! the root key and neither can forge the other. Revocation follows the
//! instance: a deregistered instance's tokens stop verifying (auth looks the
//! instance up on every request).

use aws_lc_rs::hmac;
use base64::Engine;

use crate::util::{random_string, UPPER_ALNUM};

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const AKID_LEN: usize = 20;
/// Longest principal accepted in a token (`instance/mi-` + 17 hex is 29).
const MAX_PRINCIPAL: usize = 64;
/// A token longer than this is rejected before decoding.
const MAX_TOKEN_CHARS: usize = 256;

/// Issued credentials. `Debug` hides the secret and the token.
#[derive(Clone)]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expires_ms: i64,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub principal: String,
    pub expires_ms: i64,
}

/// Mints and verifies role credentials. Holds derived keys only.
pub struct RoleCredentialMinter {
    secret_key: hmac::Key,
    token_key: hmac::Key,
}

impl std::fmt::Debug for RoleCredentialMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleCredentialMinter")
    }
}

fn derive(root: &[u8; 32], label: &[u8]) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, root);
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref())
}

impl RoleCredentialMinter {
    pub fn new(root_key: &[u8; 32]) -> Self {
        RoleCredentialMinter {
            secret_key: derive(root_key, b"airlock role-credentials secret v1"),
            token_key: derive(root_key, b"airlock role-credentials token v1"),
        }
    }

    pub fn is_role_key(access_key_id: &str) -> bool {
        access_key_id.starts_with("ASIA")
    }

    /// The secret of a role access key id.
    pub fn secret_for(&self, access_key_id: &str) -> String {
        let mac = hmac::sign(&self.secret_key, access_key_id.as_bytes());
        let mut s = base64::engine::general_purpose::STANDARD.encode(mac.as_ref());
        s.truncate(40);
        s
    }

    /// New credentials for `principal` (`instance/<id>`) valid until `expires_ms`.
    pub fn mint(&self, principal: &str, expires_ms: i64) -> Option<RoleCredentials> {
        if principal.is_empty() || principal.len() > MAX_PRINCIPAL {
            return None;
        }
        let access_key_id = format!("ASIA{}", random_string(UPPER_ALNUM, AKID_LEN - 4));
        let mut body = vec![VERSION];
        body.extend_from_slice(&expires_ms.to_be_bytes());
        body.push(principal.len() as u8);
        body.extend_from_slice(principal.as_bytes());
        body.extend_from_slice(access_key_id.as_bytes());
        let mac = hmac::sign(&self.token_key, &body);
        body.extend_from_slice(mac.as_ref());
        Some(RoleCredentials {
            secret_access_key: self.secret_for(&access_key_id),
            session_token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&body),
            access_key_id,
            expires_ms,
        })
    }

    /// Checks a token's MAC and that it was issued for `access_key_id`.
    /// Expiry is the caller's check (it needs its own error).
    pub fn verify(&self, token: &str, access_key_id: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let body_len = raw.len().checked_sub(MAC_LEN)?;
        let (body, mac) = raw.split_at(body_len);
        hmac::verify(&self.token_key, body, mac).ok()?;
        let (&version, rest) = body.split_first()?;
        if version != VERSION {
            return None;
        }
        let (exp, rest) = rest.split_at_checked(8)?;
        let expires_ms = i64::from_be_bytes(exp.try_into().ok()?);
        let (&plen, rest) = rest.split_first()?;
        let (principal, akid) = rest.split_at_checked(plen as usize)?;
        if akid != access_key_id.as_bytes() {
            return None;
        }
        Some(Claims {
            principal: String::from_utf8(principal.to_vec()).ok()?,
            expires_ms,
        })
    }
}

/// Whether role `role_name` exists and its trust policy lets SSM assume it.
/// Checked when an activation names the role and again at every credential
/// request: on AWS a role whose trust no longer names the service cannot be
/// assumed, and the instance's credentials stop renewing.
pub async fn role_trusts_ssm(
    state: &crate::server::AppState,
    role_name: &str,
) -> Result<bool, crate::error::ApiError> {
    let account = &state.config.aws.account_id;
    let assumed_by = airlock_iam::Context::new()
        .with("aws:SourceAccount", account.as_str())
        .with(
            "aws:SourceArn",
            format!("arn:aws:ssm:{}:{account}:*", state.config.aws.region),
        );
    Ok(state.iam.get_role(role_name).await?.is_some_and(|role| {
        airlock_iam::trust_allows_service(
            &role.assume_role_policy,
            "ssm.amazonaws.com",
            "sts:AssumeRole",
            &assumed_by,
        )
    }))
}

/// `POST /airlock/v1/role-credentials`, signed (service `ssm`) with an
/// instance's long-term registration key: answers
/// `{AccessKeyId, SecretAccessKey, SessionToken, Expiration}` for the role
/// the instance acts as. Role credentials cannot mint more of themselves.
pub async fn handle(
    state: &crate::server::AppState,
    req: &crate::server::ReadRequest,
) -> Result<http::Response<crate::server::Body>, crate::error::ApiError> {
    use crate::error::ApiError;
    let p = crate::auth::authenticate(state, &req.sigv4(), &["ssm"]).await?;
    let Some(instance) = p.instance_id() else {
        return Err(ApiError::access_denied(
            "Only registered instances may request role credentials.",
        ));
    };
    if RoleCredentialMinter::is_role_key(&p.access_key_id) {
        return Err(ApiError::access_denied(
            "Role credentials cannot be used to request role credentials.",
        ));
    }
    let role = p.role.as_deref().unwrap_or_default();
    if !role_trusts_ssm(state, role).await? {
        tracing::warn!(instance_id = %instance, role, "role credentials refused: role gone or no longer trusts SSM");
        return Err(ApiError::access_denied(format!(
            "Nonexistent role or missing ssm service principal in trust policy: arn:aws:iam::{}:role/{role}",
            state.config.aws.account_id
        )));
    }
    let ttl_ms = state.config.iam.role_credentials_ttl_secs as i64 * 1000;
    let expires_ms = crate::util::now_ms() + ttl_ms;
    let c = state
        .role_creds
        .mint(&p.principal, expires_ms)
        .ok_or_else(ApiError::internal)?;
    tracing::info!(
        instance_id = %instance,
        role = p.role.as_deref().unwrap_or_default(),
        access_key_id = %c.access_key_id,
        expires_ms,
        "role credentials issued"
    );
    Ok(crate::server::json_response(
        http::StatusCode::OK,
        &serde_json::json!({
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "SessionToken": c.session_token,
            "Expiration": crate::util::ms_to_json(expires_ms),
        }),
    ))
}

/// The path of [`handle`].
pub const PATH: &str = "/airlock/v1/role-credentials";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_tamper() {
        let m = RoleCredentialMinter::new(&[7; 32]);
        let c = m.mint("instance/mi-0123456789abcdef0", 1_000).unwrap();
        assert!(RoleCredentialMinter::is_role_key(&c.access_key_id));
        assert_eq!(c.secret_access_key.len(), 40);
        assert_eq!(m.secret_for(&c.access_key_id), c.secret_access_key);
        let claims = m.verify(&c.session_token, &c.access_key_id).unwrap();
        assert_eq!(claims.principal, "instance/mi-0123456789abcdef0");
        assert_eq!(claims.expires_ms, 1_000);
        // Another key id, another root key, a flipped byte, garbage: all refused.
        assert!(m.verify(&c.session_token, "ASIAOTHER").is_none());
        assert!(RoleCredentialMinter::new(&[8; 32])
            .verify(&c.session_token, &c.access_key_id)
            .is_none());
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&c.session_token)
            .unwrap();
        raw[3] ^= 1;
        let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(m.verify(&bad, &c.access_key_id).is_none());
        assert!(m.verify("", &c.access_key_id).is_none());
        assert!(m.verify(&"A".repeat(5000), &c.access_key_id).is_none());
        assert!(!format!("{c:?}").contains(&c.secret_access_key));
    }
}
