//! Key identifiers: key ids, key ARNs, alias names and alias ARNs.

use uuid::Uuid;

use crate::error::{KmsError, Result};

/// How a request named a key, before the caller resolves aliases against
/// its alias table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A bare key id or a key ARN (in this region and account).
    Id(Uuid),
    /// `alias/<name>` or an alias ARN, normalised to `alias/<name>`.
    Alias(String),
}

pub fn key_arn(region: &str, account: &str, key_id: &Uuid) -> String {
    format!("arn:aws:kms:{region}:{account}:key/{key_id}")
}

pub fn alias_arn(region: &str, account: &str, alias_name: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:{alias_name}")
}

fn not_found(s: &str) -> KmsError {
    if s.contains("alias/") {
        KmsError::NotFound(format!("Alias {s} is not found."))
    } else {
        KmsError::NotFound(format!("Invalid keyId '{s}'"))
    }
}

/// Parses a `KeyId` request parameter: key id, key ARN, alias name or alias
/// ARN. ARNs for another region or account are `NotFound` (this service
/// holds only its own keys).
pub fn parse_key_ref(s: &str, region: &str, account: &str) -> Result<KeyRef> {
    if s.is_empty() || s.len() > 2048 {
        return Err(KmsError::Validation(
            "1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have length between 1 and 2048".into(),
        ));
    }
    if s.starts_with("alias/") {
        return Ok(KeyRef::Alias(s.to_string()));
    }
    if let Some(rest) = s.strip_prefix("arn:") {
        let prefix = format!("aws:kms:{region}:{account}:");
        let res = rest
            .strip_prefix(prefix.as_str())
            .ok_or_else(|| not_found(s))?;
        if let Some(id) = res.strip_prefix("key/") {
            return Uuid::try_parse(id)
                .map(KeyRef::Id)
                .map_err(|_| not_found(s));
        }
        if res.starts_with("alias/") {
            return Ok(KeyRef::Alias(res.to_string()));
        }
        return Err(not_found(s));
    }
    // Only the hyphenated 36-character form is a key id.
    if s.len() == 36 {
        if let Ok(id) = Uuid::try_parse(s) {
            return Ok(KeyRef::Id(id));
        }
    }
    Err(not_found(s))
}

/// Validates an alias name for CreateAlias: `alias/` prefix, non-empty
/// suffix, at most 256 characters, `^[a-zA-Z0-9:/_-]+$`, and not in the
/// reserved `alias/aws/` namespace.
pub fn validate_alias_name(name: &str) -> Result<()> {
    let suffix = name.strip_prefix("alias/").ok_or_else(|| {
        KmsError::Validation("Invalid identifier: alias names must begin with 'alias/'".into())
    })?;
    if suffix.is_empty() || name.len() > 256 {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must have length between 1 and 256"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::Validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::Validation(
            "Cannot create an alias with the reserved prefix alias/aws/".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "us-east-1";
    const A: &str = "123456789012";

    #[test]
    fn key_refs() {
        let id = Uuid::from_u128(0xabc);
        assert_eq!(parse_key_ref(&id.to_string(), R, A), Ok(KeyRef::Id(id)));
        assert_eq!(parse_key_ref(&key_arn(R, A, &id), R, A), Ok(KeyRef::Id(id)));
        assert_eq!(
            parse_key_ref("alias/x", R, A),
            Ok(KeyRef::Alias("alias/x".into()))
        );
        assert_eq!(
            parse_key_ref(&alias_arn(R, A, "alias/x"), R, A),
            Ok(KeyRef::Alias("alias/x".into()))
        );
        assert_eq!(
            parse_key_ref(&key_arn("eu-west-1", A, &id), R, A)
                .unwrap_err()
                .code(),
            "NotFoundException"
        );
        assert_eq!(
            parse_key_ref("nope", R, A).unwrap_err().code(),
            "NotFoundException"
        );
        assert_eq!(
            parse_key_ref("", R, A).unwrap_err().code(),
            "ValidationException"
        );
    }

    #[test]
    fn aliases() {
        assert!(validate_alias_name("alias/my-key_1:x/y").is_ok());
        for bad in [
            "my-key",
            "alias/",
            "alias/has space",
            "alias/aws/ssm",
            "alias/é",
        ] {
            assert_eq!(
                validate_alias_name(bad).unwrap_err().code(),
                "ValidationException",
                "{bad}"
            );
        }
        assert!(validate_alias_name(&format!("alias/{}", "a".repeat(251))).is_err());
    }
}
