/// Everything that can go wrong in this crate: only policy parsing fails; evaluation is total.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The document exceeds [`crate::MAX_POLICY_BYTES`].
    #[error("policy document is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    /// The document is not well-formed JSON.
    #[error("malformed policy JSON at line {line}, column {column}: {problem}")]
    Syntax {
        line: usize,
        column: usize,
        problem: String,
    },
    /// Well-formed JSON that is not a valid policy; `location` names the element
    /// (e.g. `Statement[1] (Sid "Dev")`).
    #[error("invalid policy at {location}: {problem}")]
    Invalid { location: String, problem: String },
}
