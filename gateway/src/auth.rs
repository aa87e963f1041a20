//! SigV4 authentication of API and channel requests (via `airlock_sigv4`).

use std::time::Duration;

use airlock_sigv4::{parse_auth, verify_request, AuthError, ParsedAuth, Request, VerifyOptions};

use crate::error::ApiError;
use crate::role_creds::RoleCredentialMinter;
use crate::server::AppState;
use crate::store::AccessKey;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    /// `user/<name>` or `instance/<mi-id>`.
    pub principal: String,
    /// For an instance: the IAM role its activation named (its policies
    /// authorize the agent's calls). `None` for users.
    pub role: Option<String>,
}

impl Principal {
    pub fn user_name(&self) -> Option<&str> {
        self.principal.strip_prefix("user/")
    }
    pub fn instance_id(&self) -> Option<&str> {
        self.principal.strip_prefix("instance/")
    }
    /// IAM-style ARN used as SessionOwner / Owner.
    pub fn arn(&self, account_id: &str) -> String {
        match self.instance_id() {
            Some(id) => format!(
                "arn:aws:sts::{account_id}:assumed-role/{}/{id}",
                self.role.as_deref().unwrap_or(DEFAULT_INSTANCE_ROLE)
            ),
            None => format!("arn:aws:iam::{account_id}:{}", self.principal),
        }
    }
}

/// The role an instance acts as when its activation named none.
pub const DEFAULT_INSTANCE_ROLE: &str = "AirlockManagedInstance";

/// Maps a verification failure to the AWS JSON error (always HTTP 400 here;
/// botocore reads the code from `__type`).
pub fn auth_error(e: &AuthError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

/// The key behind role credentials (`ASIA…` + `X-Amz-Security-Token`),
/// checked before the signature like AWS does: a forged or foreign token is
/// `UnrecognizedClientException`, an expired one `ExpiredTokenException`.
fn role_key(state: &AppState, parsed: &ParsedAuth) -> Result<AccessKey, ApiError> {
    let token = parsed
        .session_token
        .as_deref()
        .ok_or_else(|| auth_error(&AuthError::UnrecognizedClient))?;
    let claims = state
        .role_creds
        .verify(token, &parsed.access_key_id)
        .ok_or_else(|| auth_error(&AuthError::UnrecognizedClient))?;
    if claims.expires_ms <= crate::util::now_ms() {
        return Err(auth_error(&AuthError::ExpiredToken));
    }
    Ok(AccessKey {
        secret: state.role_creds.secret_for(&parsed.access_key_id),
        access_key_id: parsed.access_key_id.clone(),
        principal: claims.principal,
        created_ms: 0,
        status: "Active".into(),
    })
}

/// Verifies the request's signature for one of `services`.
pub async fn authenticate(
    state: &AppState,
    req: &Request<'_>,
    services: &[&str],
) -> Result<Principal, ApiError> {
    let parsed = parse_auth(req).map_err(|e| auth_error(&e))?;
    let key = if RoleCredentialMinter::is_role_key(&parsed.access_key_id) {
        role_key(state, &parsed)?
    } else {
        let key = state
            .store
            .get_access_key(&parsed.access_key_id)
            .await?
            .ok_or_else(|| auth_error(&AuthError::UnrecognizedClient))?;
        if state.config.iam.require_role_credentials
            && key.principal.starts_with("instance/")
            && req.path != crate::role_creds::PATH
        {
            return Err(auth_error(&AuthError::UnrecognizedClient));
        }
        key
    };
    let regions = [state.config.aws.region.clone()];
    let opts = VerifyOptions {
        max_skew: Duration::from_secs(state.config.aws.max_skew_secs),
        allowed_regions: &regions,
        allowed_services: services,
        normalize_path: true,
        now: time::OffsetDateTime::now_utc(),
    };
    verify_request(req, &parsed, &key.secret, &opts).map_err(|e| auth_error(&e))?;
    // Checked after the signature so an unauthenticated caller cannot probe
    // which key ids exist but are disabled; AWS answers an inactive key
    // exactly like an unknown one.
    if key.status != "Active" {
        return Err(auth_error(&AuthError::UnrecognizedClient));
    }
    let role = match key.principal.strip_prefix("instance/") {
        Some(id) => {
            // Deregistered: its role credentials die with it.
            let instance = state
                .store
                .get_instance(id)
                .await?
                .ok_or_else(|| auth_error(&AuthError::UnrecognizedClient))?;
            // An activation may name the role by ARN or path; the role's
            // name is its last segment.
            let name = instance.iam_role.rsplit('/').next().unwrap_or_default();
            Some(if name.is_empty() {
                DEFAULT_INSTANCE_ROLE.to_string()
            } else {
                name.to_string()
            })
        }
        None => None,
    };
    Ok(Principal {
        access_key_id: key.access_key_id,
        principal: key.principal,
        role,
    })
}
