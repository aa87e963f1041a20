//! Authorization of every API action against the caller's IAM-style
//! policies (issue 3). Every handler that acts on a resource calls
//! [`authorize`] before touching state, so a denial never has side effects.
//!
//! Policies come from [`crate::iam_store::IamStore`]: for a user, its inline
//! and attached policies plus those of its groups; for an instance, those of
//! the role its activation named. The decision itself is
//! `airlock_iam::evaluate` (pure); this module gathers inputs, adds the
//! global condition keys, writes the audit event and words the denial.

use airlock_iam::{
    access_denied_message, evaluate, Context, Decision, DecisionEffect, Policy, Request,
    StatementRef,
};

use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::iam_store::{IamStore, ManagedPolicy, OwnerKind};
use crate::server::{AppState, ReadRequest};
use crate::store::Tag;

/// Everything about a caller that policy evaluation needs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub arn: String,
    /// Set for IAM users only (roles have no `aws:username`).
    pub user_name: Option<String>,
    pub user_id: String,
    pub tags: Vec<Tag>,
    pub policies: Vec<Policy>,
    pub boundary: Option<Policy>,
}

fn parse_stored(name: &str, doc: &str) -> Result<Policy, ApiError> {
    // Documents were validated when stored; failing closed here keeps a
    // corrupt row from silently dropping a Deny.
    Policy::parse_named(name, doc).map_err(|e| {
        tracing::error!(policy = %name, error = %e, "stored policy does not parse");
        ApiError::internal()
    })
}

async fn owner_policies(
    iam: &dyn IamStore,
    kind: OwnerKind,
    owner: &str,
    out: &mut Vec<Policy>,
) -> Result<(), ApiError> {
    for (name, doc) in iam.list_inline_policies(kind, owner).await? {
        out.push(parse_stored(&name, &doc)?);
    }
    for p in iam.attached_policies(kind, owner).await? {
        out.push(parse_stored(&p.arn, &p.document)?);
    }
    Ok(())
}

async fn boundary_policy(
    iam: &dyn IamStore,
    arn: Option<&str>,
) -> Result<Option<Policy>, ApiError> {
    let Some(arn) = arn else { return Ok(None) };
    match iam.get_policy(arn).await? {
        Some(ManagedPolicy { arn, document, .. }) => Ok(Some(parse_stored(&arn, &document)?)),
        // A boundary naming a deleted policy allows nothing.
        None => Ok(Some(Policy {
            name: arn.to_string(),
            version: airlock_iam::Version::V2012_10_17,
            id: None,
            statements: Vec::new(),
        })),
    }
}

/// Loads the caller's identity policies, boundary and tags.
pub async fn load_identity(state: &AppState, principal: &Principal) -> Result<Identity, ApiError> {
    let account = &state.config.aws.account_id;
    let iam = state.iam.as_ref();
    let arn = principal.arn(account);
    let mut policies = Vec::new();
    if let Some(name) = principal.user_name() {
        let Some(user) = iam.get_user(name).await? else {
            // A key whose user was deleted: nothing allows it.
            return Ok(Identity {
                arn,
                user_name: Some(name.to_string()),
                user_id: String::new(),
                tags: Vec::new(),
                policies,
                boundary: None,
            });
        };
        owner_policies(iam, OwnerKind::User, name, &mut policies).await?;
        for g in iam.groups_for_user(name).await? {
            owner_policies(iam, OwnerKind::Group, &g, &mut policies).await?;
        }
        let boundary = boundary_policy(iam, user.boundary.as_deref()).await?;
        return Ok(Identity {
            arn,
            user_name: Some(name.to_string()),
            user_id: user.user_id,
            tags: user.tags,
            policies,
            boundary,
        });
    }
    let instance = principal.instance_id().unwrap_or_default();
    let role_name = principal
        .role
        .clone()
        .unwrap_or_else(|| crate::auth::DEFAULT_INSTANCE_ROLE.to_string());
    let (user_id, boundary) = match iam.get_role(&role_name).await? {
        Some(role) => {
            owner_policies(iam, OwnerKind::Role, &role_name, &mut policies).await?;
            let b = boundary_policy(iam, role.boundary.as_deref()).await?;
            (format!("{}:{instance}", role.role_id), b)
        }
        None => (format!(":{instance}"), None),
    };
    Ok(Identity {
        arn,
        user_name: None,
        user_id,
        tags: Vec::new(),
        policies,
        boundary,
    })
}

/// The global condition keys of a request (`aws:*`).
pub fn global_context(state: &AppState, req: &ReadRequest, id: &Identity) -> Context {
    let mut c = Context::new();
    if let Some(u) = &id.user_name {
        c.insert("aws:username", u.clone());
        c.insert("aws:PrincipalType", "User");
    } else {
        c.insert("aws:PrincipalType", "AssumedRole");
    }
    c.insert("aws:userid", id.user_id.clone());
    c.insert("aws:PrincipalArn", id.arn.clone());
    c.insert("aws:PrincipalAccount", state.config.aws.account_id.clone());
    c.insert("aws:RequestedRegion", state.config.aws.region.clone());
    for t in &id.tags {
        c.insert(&format!("aws:PrincipalTag/{}", t.key), t.value.clone());
    }
    if let Some(peer) = req.peer {
        c.insert("aws:SourceIp", peer.ip().to_string());
    }
    let now = time::OffsetDateTime::now_utc();
    let iso = time::format_description::well_known::Iso8601::DEFAULT;
    let now_text = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .or_else(|| now.format(&iso).ok())
        .unwrap_or_default();
    c.insert("aws:CurrentTime", now_text);
    c.insert("aws:EpochTime", now.unix_timestamp().to_string());
    c.insert(
        "aws:SecureTransport",
        if req.secure { "true" } else { "false" },
    );
    c
}

/// `policy#Sid`, or `policy#<index>` for a statement without a Sid.
pub fn statement_label(s: &StatementRef) -> String {
    match &s.sid {
        Some(sid) => format!("{}#{sid}", s.policy_name),
        None => format!("{}#{}", s.policy_name, s.index),
    }
}

/// The statement reported as deciding: the first explicit Deny, else the
/// first Allow; none for an implicit deny.
fn deciding(d: &Decision) -> Option<String> {
    d.matched.first().map(statement_label)
}

/// Evaluates one request against a loaded identity (no audit, no I/O).
pub fn decide(id: &Identity, action: &str, resource: &str, context: &Context) -> Decision {
    let policies: Vec<&Policy> = id.policies.iter().collect();
    let boundary: Option<Vec<&Policy>> = id.boundary.as_ref().map(|b| vec![b]);
    evaluate(
        &policies,
        boundary.as_deref(),
        &Request::new(action, resource, context.clone()),
    )
}

/// Decides whether `principal` may perform `action` (e.g. `ssm:StartSession`,
/// `kms:Decrypt`, `iam:CreateUser`) on every ARN in `resources`. `context`
/// carries the action-specific condition keys (`ssm:resourceTag/*`,
/// `kms:EncryptionContext:*`, ...); the global keys (`aws:username`,
/// `aws:SourceIp`, `aws:CurrentTime`, ...) are added here. Returns
/// `AccessDeniedException` worded as AWS words it, and writes an audit event
/// for every decision.
pub async fn authorize(
    state: &AppState,
    req: &ReadRequest,
    principal: &Principal,
    action: &str,
    resources: &[String],
    context: Context,
) -> Result<(), ApiError> {
    let id = load_identity(state, principal).await?;
    let mut ctx = global_context(state, req, &id);
    for (k, v) in context.iter() {
        ctx.set(k, v.to_vec());
    }
    let source_ip = req.peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let time_text = ctx
        .get("aws:CurrentTime")
        .and_then(|v| v.first().cloned())
        .unwrap_or_default();
    let star = ["*".to_string()];
    let resources = if resources.is_empty() {
        &star[..]
    } else {
        resources
    };
    let mut denial = None;
    for resource in resources {
        let d = decide(&id, action, resource, &ctx);
        state.audit.record(&AuditEvent {
            event: "authorization",
            time: time_text.clone(),
            request_id: req.request_id.clone(),
            principal: id.arn.clone(),
            access_key_id: principal.access_key_id.clone(),
            action: action.to_string(),
            resource: resource.clone(),
            decision: d.effect.as_str().to_string(),
            statement: deciding(&d),
            source_ip: source_ip.clone(),
        });
        if d.effect != DecisionEffect::Allowed && denial.is_none() {
            let shown = if resource == "*" {
                ""
            } else {
                resource.as_str()
            };
            denial = Some(access_denied_message(&id.arn, action, shown, &d));
        }
    }
    match denial {
        Some(m) => Err(ApiError::access_denied(m)),
        None => Ok(()),
    }
}

/// `arn:aws:ssm:<region>:<account>:managed-instance/<id>`.
pub fn instance_arn(state: &AppState, instance_id: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:managed-instance/{instance_id}",
        state.config.aws.region, state.config.aws.account_id
    )
}

/// `arn:aws:ssm:<region>:<account>:session/<id>`.
pub fn session_arn(state: &AppState, session_id: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:session/{session_id}",
        state.config.aws.region, state.config.aws.account_id
    )
}

/// AWS-owned documents (`AWS-…`) have an empty account field; every other
/// document (including the default `SSM-SessionManagerRunShell`) is the
/// account's own. A name that already is an ARN is used as given.
pub fn document_arn(state: &AppState, name: &str) -> String {
    if name.starts_with("arn:") {
        return name.to_string();
    }
    let account = if name.starts_with("AWS-") {
        ""
    } else {
        state.config.aws.account_id.as_str()
    };
    format!(
        "arn:aws:ssm:{}:{account}:document/{name}",
        state.config.aws.region
    )
}

/// `ssm:resourceTag/<k>` and `aws:ResourceTag/<k>` for a target's tags.
pub fn resource_tag_context(tags: &[Tag]) -> Context {
    let mut c = Context::new();
    for t in tags {
        c.insert(&format!("ssm:resourceTag/{}", t.key), t.value.clone());
        c.insert(&format!("aws:ResourceTag/{}", t.key), t.value.clone());
    }
    c
}
