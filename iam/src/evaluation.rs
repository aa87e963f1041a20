//! Decision logic (§2.4) and AccessDenied messages (§2.5).

use std::collections::BTreeMap;

use crate::conditions;
use crate::matching::{action_matches, resource_matches_in};
use crate::policy::{ActionSpec, Effect, Policy, ResourceSpec, Version};

/// Request context: lowercase key name -> values (a single-valued key has one value; a
/// multi-valued key may have several or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    entries: BTreeMap<String, Vec<String>>,
}

impl Context {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder form of [`Context::insert`].
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Builder form of [`Context::set`].
    pub fn with_values(mut self, key: &str, values: Vec<String>) -> Self {
        self.set(key, values);
        self
    }

    /// Appends one value to `key` (so repeated inserts build a multi-valued key).
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.entries
            .entry(key.to_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Replaces every value of `key`; an empty vector is a present-but-empty multi-valued key.
    pub fn set(&mut self, key: &str, values: Vec<String>) {
        self.entries.insert(key.to_lowercase(), values);
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(&key.to_lowercase());
    }

    /// Values of `key`, looked up case-insensitively.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.entries.get(&key.to_lowercase()).map(Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `service:Action`, e.g. `ssm:StartSession`.
    pub action: String,
    /// Resource ARN; `*` for actions without a resource type.
    pub resource: String,
    pub context: Context,
}

impl Request {
    pub fn new(action: impl Into<String>, resource: impl Into<String>, context: Context) -> Self {
        Request {
            action: action.into(),
            resource: resource.into(),
            context,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionEffect {
    Allowed,
    ExplicitDeny,
    ImplicitDeny,
}

impl DecisionEffect {
    /// The policy simulator's spelling: `allowed`, `explicitDeny`, `implicitDeny`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionEffect::Allowed => "allowed",
            DecisionEffect::ExplicitDeny => "explicitDeny",
            DecisionEffect::ImplicitDeny => "implicitDeny",
        }
    }
}

/// Which set of policies a statement came from, or which set caused a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Identity,
    PermissionsBoundary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRef {
    pub policy_name: String,
    pub sid: Option<String>,
    /// Index in the policy's statement list.
    pub index: usize,
    pub kind: PolicyKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: DecisionEffect,
    /// ExplicitDeny: every matching Deny statement. Allowed: the matching Allow statements
    /// (identity, then boundary). ImplicitDeny: empty.
    pub matched: Vec<StatementRef>,
    /// For denials, the policy set responsible (used for the message wording).
    pub denied_by: Option<PolicyKind>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == DecisionEffect::Allowed
    }
}

/// Whether statement `index` of `policy` applies to `request` (action, resource and all
/// conditions match). Out-of-range indexes never apply.
pub fn statement_applies(policy: &Policy, index: usize, request: &Request) -> bool {
    let Some(st) = policy.statements.get(index) else {
        return false;
    };
    let vars = policy.version == Version::V2012_10_17;
    let action_ok = match &st.action {
        ActionSpec::Action(list) => list.iter().any(|p| action_matches(p, &request.action)),
        ActionSpec::NotAction(list) => !list.iter().any(|p| action_matches(p, &request.action)),
    };
    if !action_ok {
        return false;
    }
    let ctx = vars.then_some(&request.context);
    let resource_ok = match &st.resource {
        ResourceSpec::Resource(list) => list
            .iter()
            .any(|p| resource_matches_in(p, &request.resource, ctx)),
        ResourceSpec::NotResource(list) => !list
            .iter()
            .any(|p| resource_matches_in(p, &request.resource, ctx)),
    };
    resource_ok
        && st
            .conditions
            .iter()
            .all(|c| conditions::evaluate(c, &request.context, vars))
}

fn collect(
    policies: &[&Policy],
    kind: PolicyKind,
    request: &Request,
    allows: &mut Vec<StatementRef>,
    denies: &mut Vec<StatementRef>,
) {
    for policy in policies {
        for (index, st) in policy.statements.iter().enumerate() {
            if statement_applies(policy, index, request) {
                let r = StatementRef {
                    policy_name: policy.name.clone(),
                    sid: st.sid.clone(),
                    index,
                    kind,
                };
                match st.effect {
                    Effect::Allow => allows.push(r),
                    Effect::Deny => denies.push(r),
                }
            }
        }
    }
}

/// Evaluates identity policies and an optional permission boundary: an explicit Deny anywhere
/// wins; otherwise an identity Allow is required, and with a boundary the boundary must allow too.
pub fn evaluate(policies: &[&Policy], boundary: Option<&[&Policy]>, request: &Request) -> Decision {
    let (mut id_allow, mut id_deny) = (Vec::new(), Vec::new());
    collect(
        policies,
        PolicyKind::Identity,
        request,
        &mut id_allow,
        &mut id_deny,
    );
    let (mut b_allow, mut b_deny) = (Vec::new(), Vec::new());
    if let Some(b) = boundary {
        collect(
            b,
            PolicyKind::PermissionsBoundary,
            request,
            &mut b_allow,
            &mut b_deny,
        );
    }
    if !id_deny.is_empty() || !b_deny.is_empty() {
        let denied_by = if id_deny.is_empty() {
            PolicyKind::PermissionsBoundary
        } else {
            PolicyKind::Identity
        };
        id_deny.extend(b_deny);
        return Decision {
            effect: DecisionEffect::ExplicitDeny,
            matched: id_deny,
            denied_by: Some(denied_by),
        };
    }
    let implicit = |kind| Decision {
        effect: DecisionEffect::ImplicitDeny,
        matched: Vec::new(),
        denied_by: Some(kind),
    };
    if id_allow.is_empty() {
        return implicit(PolicyKind::Identity);
    }
    if boundary.is_some() && b_allow.is_empty() {
        return implicit(PolicyKind::PermissionsBoundary);
    }
    id_allow.extend(b_allow);
    Decision {
        effect: DecisionEffect::Allowed,
        matched: id_allow,
        denied_by: None,
    }
}

/// The AWS AccessDeniedException message for a denial. An empty `resource` leaves out
/// ` on resource: …`. For an `Allowed` decision the implicit-deny wording is returned (callers
/// only ask for denials).
pub fn access_denied_message(
    principal_arn: &str,
    action: &str,
    resource: &str,
    decision: &Decision,
) -> String {
    let on = if resource.is_empty() {
        String::new()
    } else {
        format!(" on resource: {resource}")
    };
    let head = format!("User: {principal_arn} is not authorized to perform: {action}{on}");
    let boundary = decision.denied_by == Some(PolicyKind::PermissionsBoundary);
    match (decision.effect, boundary) {
        (DecisionEffect::ExplicitDeny, false) => {
            format!("{head} with an explicit deny in an identity-based policy")
        }
        (DecisionEffect::ExplicitDeny, true) => {
            format!("{head} with an explicit deny in a permissions boundary")
        }
        (_, false) => format!("{head} because no identity-based policy allows the {action} action"),
        (_, true) => format!("{head} because no permissions boundary allows the {action} action"),
    }
}
