//! `policy` parses IAM JSON documents (Version, Statement, Action/Resource, Condition) into typed [`Policy`] values.
//! `matching` implements action (case-insensitive glob) and resource (segment-wise ARN glob) matching.
//! `conditions` evaluates every condition operator, `...IfExists`, `Null` and `ForAnyValue:`/`ForAllValues:`.
//! `variables` expands `${aws:username}`-style policy variables, defaults and `${*}`/`${?}`/`${$}` escapes.
//! `evaluation` combines identity policies and permission boundaries into a [`Decision`] and AWS deny messages.
//!
//! Pure library: no I/O, no clock reads. The caller supplies every context value, including
//! `aws:CurrentTime`, as strings in a [`Context`] keyed by lowercase key name (multi-valued keys are
//! `Vec<String>`). Semantics follow `shared/spec/sigv4-iam-kms.md` §2:
//! explicit Deny beats Allow beats implicit deny, and a permission boundary must also allow.
//!
//! ```
//! use airlock_iam::{evaluate, Context, DecisionEffect, Policy, Request};
//! let p = Policy::parse_named("own-sessions", r#"{"Version":"2012-10-17","Statement":{
//!     "Effect":"Allow","Action":"ssm:TerminateSession",
//!     "Resource":"arn:aws:ssm:*:*:session/${aws:username}-*"}}"#).unwrap();
//! let req = Request::new("ssm:TerminateSession", "arn:aws:ssm:us-east-1:123456789012:session/bob-0a1b",
//!     Context::new().with("aws:username", "bob"));
//! assert_eq!(evaluate(&[&p], None, &req).effect, DecisionEffect::Allowed);
//! ```

mod conditions;
mod error;
mod evaluation;
mod matching;
mod policy;
mod trust;
mod variables;

pub use conditions::{OpKind, Operator, Qualifier};
pub use error::Error;
pub use evaluation::{
    access_denied_message, evaluate, statement_applies, Context, Decision, DecisionEffect,
    PolicyKind, Request, StatementRef,
};
pub use matching::{action_matches, resource_matches};
pub use policy::{
    ActionSpec, Condition, Effect, Policy, ResourceSpec, Statement, Version, MAX_POLICY_BYTES,
};
pub use trust::trust_allows_service;
