//! The one error type of the crate, with the AWS error code each variant maps to.

/// Everything a KMS operation can refuse with. `code()` gives the AWS
/// `__type`; `Display` gives the `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// Unknown key id, key ARN or alias.
    #[error("{0}")]
    NotFound(String),
    /// The key exists but is disabled.
    #[error("{0}")]
    Disabled(String),
    /// Corrupt blob, wrong key material, or wrong / missing / extra
    /// encryption context. AWS sends no message for this one.
    #[error("")]
    InvalidCiphertext,
    /// Decrypt was given a `KeyId` that is not the key in the blob.
    #[error("{0}")]
    IncorrectKey(String),
    /// The operation is not allowed in the key's current state.
    #[error("{0}")]
    InvalidState(String),
    /// A request parameter failed validation.
    #[error("{0}")]
    Validation(String),
    /// The blob names a key that does not exist (AWS answers
    /// AccessDeniedException rather than NotFound here).
    #[error("The ciphertext refers to a customer master key that does not exist, does not exist in this region, or you are not allowed to access.")]
    CiphertextKeyUnknown,
    /// An alias with this name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Stored material did not unseal under the root key, or the RNG failed.
    #[error("{0}")]
    Internal(String),
}

impl KmsError {
    /// The AWS error code (`__type`) for this error.
    pub fn code(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidCiphertext => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::CiphertextKeyUnknown => "AccessDeniedException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::Internal(_) => "KMSInternalException",
        }
    }

    /// Whether the HTTP status should be 500 rather than 400.
    pub fn is_server_error(&self) -> bool {
        matches!(self, KmsError::Internal(_))
    }
}

pub type Result<T, E = KmsError> = std::result::Result<T, E>;
