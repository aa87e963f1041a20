//! AWS Signature Version 4, both ways.
//!
//! - [`canonical`]: canonical request, string to sign, signing key (shared by
//!   both directions so they can never disagree).
//! - [`sign`]: header and presigned-query signing for our clients.
//! - [`verify`]: server-side parsing and verification with AWS error codes.

pub mod canonical;
pub mod sign;
pub mod verify;

pub use sign::{presign_url, sign_request, Credentials, SecretKey};
pub use verify::{parse_auth, verify_request, AuthError, ParsedAuth, Request, VerifyOptions};
