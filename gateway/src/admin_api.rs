//! The admin API: IAM management over JSON. `POST /` (or
//! `/airlock/v1/iam`) with `X-Amz-Target: AirlockIAM.<Action>`, signed for
//! SigV4 service `iam`. Action and member names are those of AWS IAM
//! (`CreateUser` with `UserName`, ...), so `airlock admin` can mirror
//! `aws iam`. Every action is itself authorized as `iam:<Action>` against the
//! ARN it acts on. Also: first-start bootstrap and the declarative file.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use airlock_iam::{Context, DecisionEffect, Policy, PolicyKind};

use crate::auth::{authenticate, Principal, DEFAULT_INSTANCE_ROLE};
use crate::authz::{self, authorize, Identity};
use crate::error::{ApiError, GatewayError};
use crate::iam_store::{DeleteOutcome, Group, IamStore, ManagedPolicy, OwnerKind, Role, User};
use crate::server::{json_response, new_access_key, AppState, Body, ReadRequest};
use crate::store::Tag;
use crate::util::{ms_to_json, now_ms, random_string, UPPER_ALNUM};

type ApiResult = Result<Response<Body>, ApiError>;

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_POLICY_ARN: &str = "arn:aws:iam::aws:policy/AdministratorAccess";
pub const INSTANCE_CORE_ARN: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";
const MAX_KEYS_PER_USER: usize = 2;
/// IAM's tag quota per user.
const MAX_TAGS: usize = 50;
/// A simulation evaluates actions × resources; these bound that product so
/// one request cannot pin a core.
const MAX_SIM_ACTIONS: usize = 100;
const MAX_SIM_RESOURCES: usize = 100;
const MAX_SIM_POLICIES: usize = 20;
const MAX_CONTEXT_ENTRIES: usize = 100;

const ADMIN_DOC: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;

/// What AmazonSSMManagedInstanceCore grants on AWS, as far as an Airlock
/// agent calls anything: instance information and the ssmmessages channels.
const INSTANCE_CORE_DOC: &str = r#"{"Version":"2012-10-17","Statement":[
{"Effect":"Allow","Action":["ssm:DescribeAssociation","ssm:GetDocument","ssm:DescribeDocument","ssm:GetManifest","ssm:GetParameter","ssm:GetParameters","ssm:ListAssociations","ssm:ListInstanceAssociations","ssm:PutInventory","ssm:PutComplianceItems","ssm:UpdateAssociationStatus","ssm:UpdateInstanceAssociationStatus","ssm:UpdateInstanceInformation"],"Resource":"*"},
{"Effect":"Allow","Action":["ssmmessages:CreateControlChannel","ssmmessages:CreateDataChannel","ssmmessages:OpenControlChannel","ssmmessages:OpenDataChannel"],"Resource":"*"},
{"Effect":"Allow","Action":["ec2messages:AcknowledgeMessage","ec2messages:DeleteMessage","ec2messages:FailMessage","ec2messages:GetEndpoint","ec2messages:GetMessages","ec2messages:SendReply"],"Resource":"*"}]}"#;

/// Session encryption and recordings need the agent to use KMS; on AWS
/// this is a customer policy next to the managed one.
const INSTANCE_EXTRAS_DOC: &str = r#"{"Version":"2012-10-17","Statement":[
{"Sid":"SessionEncryption","Effect":"Allow","Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*"}]}"#;

const TRUST_SSM_DOC: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_string(UPPER_ALNUM, 17))
}

fn store_err(e: crate::store::StoreError) -> GatewayError {
    GatewayError::Store(e)
}

/// Creates, when missing, the AWS-managed policies Airlock knows, the
/// `admin` user with an inline AdministratorAccess policy, and the default
/// instance role. Never overwrites what an operator changed.
pub async fn bootstrap(iam: &dyn IamStore) -> Result<(), GatewayError> {
    let now = now_ms();
    for (arn, name, doc) in [
        (ADMIN_POLICY_ARN, "AdministratorAccess", ADMIN_DOC),
        (
            INSTANCE_CORE_ARN,
            "AmazonSSMManagedInstanceCore",
            INSTANCE_CORE_DOC,
        ),
    ] {
        iam.create_policy(ManagedPolicy {
            arn: arn.into(),
            name: name.into(),
            policy_id: new_id("ANPA"),
            document: doc.into(),
            description: String::new(),
            created_ms: now,
        })
        .await
        .map_err(store_err)?;
    }
    let created = iam
        .create_user(User {
            name: ADMIN_USER.into(),
            user_id: new_id("AIDA"),
            created_ms: now,
            boundary: None,
            tags: Vec::new(),
        })
        .await
        .map_err(store_err)?;
    if created {
        iam.put_inline_policy(
            OwnerKind::User,
            ADMIN_USER,
            "AdministratorAccess",
            ADMIN_DOC,
        )
        .await
        .map_err(store_err)?;
    }
    let role_created = iam
        .create_role(Role {
            name: DEFAULT_INSTANCE_ROLE.into(),
            role_id: new_id("AROA"),
            created_ms: now,
            assume_role_policy: TRUST_SSM_DOC.into(),
            description: "Default role of registered Airlock agents".into(),
            boundary: None,
        })
        .await
        .map_err(store_err)?;
    if role_created {
        iam.attach_policy(OwnerKind::Role, DEFAULT_INSTANCE_ROLE, INSTANCE_CORE_ARN)
            .await
            .map_err(store_err)?;
        iam.put_inline_policy(
            OwnerKind::Role,
            DEFAULT_INSTANCE_ROLE,
            "AirlockAgentExtras",
            INSTANCE_EXTRAS_DOC,
        )
        .await
        .map_err(store_err)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Request helpers

struct Args<'a> {
    v: &'a Value,
}

impl Args<'_> {
    fn opt(&self, k: &str) -> Result<Option<String>, ApiError> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(validation(format!("{k} must be a string."))),
        }
    }
    fn req(&self, k: &str) -> Result<String, ApiError> {
        self.opt(k)?.ok_or_else(|| {
            validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                lower_first(k)
            ))
        })
    }
    /// A policy document: the JSON text (as `aws iam` sends it) or an object.
    fn doc(&self, k: &str) -> Result<String, ApiError> {
        match self.v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v @ Value::Object(_)) => Ok(v.to_string()),
            _ => self.req(k),
        }
    }
    fn strings(&self, k: &str) -> Result<Vec<String>, ApiError> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| validation(format!("{k} must be a list of strings.")))
                })
                .collect(),
            Some(_) => Err(validation(format!("{k} must be a list of strings."))),
        }
    }
    fn tags(&self) -> Result<Vec<Tag>, ApiError> {
        let tags: Vec<Tag> = match self.v.get("Tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(t) => {
                serde_json::from_value(t.clone()).map_err(|e| validation(format!("Tags: {e}")))?
            }
        };
        if tags.len() > MAX_TAGS {
            return Err(validation(format!("At most {MAX_TAGS} tags are allowed.")));
        }
        for t in &tags {
            if t.key.is_empty() || t.key.chars().count() > 128 || t.value.chars().count() > 256 {
                return Err(validation(
                    "Tag keys must be 1-128 and values 0-256 characters.",
                ));
            }
        }
        Ok(tags)
    }
    /// [`Args::strings`] with at most `max` entries.
    fn bounded(&self, k: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let v = self.strings(k)?;
        if v.len() > max {
            return Err(validation(format!("{k} may hold at most {max} entries.")));
        }
        Ok(v)
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn validation(m: impl Into<String>) -> ApiError {
    ApiError::new("ValidationError", m)
}

/// The answer to a Delete*: empty on success, NoSuchEntity or DeleteConflict.
fn deleted(outcome: DeleteOutcome, kind: &str, name: &str) -> ApiResult {
    match outcome {
        DeleteOutcome::Deleted => ok(json!({})),
        DeleteOutcome::NotFound => Err(no_such(kind, name)),
        DeleteOutcome::Conflict(m) => Err(conflict(m)),
    }
}

fn no_such(kind: &str, name: &str) -> ApiError {
    let mut e = ApiError::new(
        "NoSuchEntity",
        format!("The {kind} with name {name} cannot be found."),
    );
    e.status = 404;
    e
}

fn exists_err(kind: &str, name: &str) -> ApiError {
    let mut e = ApiError::new(
        "EntityAlreadyExists",
        format!("{kind} with name {name} already exists."),
    );
    e.status = 409;
    e
}

fn conflict(m: String) -> ApiError {
    let mut e = ApiError::new("DeleteConflict", m);
    e.status = 409;
    e
}

/// IAM names: 1–64 (users) / 1–128 (others) of `[\w+=,.@-]`.
fn check_name(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !ok {
        return Err(validation(format!(
            "1 validation error detected: Value '{v}' at '{}' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+ and have length between 1 and {max}",
            lower_first(field)
        )));
    }
    Ok(())
}

/// The 1-based line on which the `index`-th element of the top-level
/// `Statement` array starts (or the `Statement` key itself for a single
/// object), so a malformed-policy error can point at it.
fn statement_line(text: &str, index: usize) -> Option<usize> {
    let key = text.find("\"Statement\"")?;
    let bytes = text.as_bytes();
    let mut i = key + "\"Statement\"".len();
    while i < bytes.len() && bytes[i] != b'[' && bytes[i] != b'{' {
        i += 1;
    }
    let line_at = |pos: usize| text[..pos].bytes().filter(|b| *b == b'\n').count() + 1;
    if bytes.get(i) == Some(&b'{') {
        return Some(line_at(i));
    }
    let (mut depth, mut in_str, mut esc, mut n) = (0usize, false, false, 0usize);
    for (j, &b) in bytes.iter().enumerate().skip(i) {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                if depth == 1 && b == b'{' {
                    if n == index {
                        return Some(line_at(j));
                    }
                    n += 1;
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses a policy document; a bad one is `MalformedPolicyDocument` naming
/// the line and the problem.
pub fn parse_policy(name: &str, doc: &str) -> Result<Policy, ApiError> {
    Policy::parse_named(name, doc).map_err(|e| {
        let m = match &e {
            airlock_iam::Error::Syntax { .. } | airlock_iam::Error::TooLarge { .. } => {
                e.to_string()
            }
            airlock_iam::Error::Invalid { location, problem } => {
                let line = location
                    .strip_prefix("Statement[")
                    .and_then(|r| r.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| statement_line(doc, n))
                    .or_else(|| {
                        location
                            .starts_with("Statement")
                            .then(|| statement_line(doc, 0))
                            .flatten()
                    });
                match line {
                    Some(l) => format!("line {l}: {location}: {problem}"),
                    None => format!("{location}: {problem}"),
                }
            }
        };
        ApiError::new("MalformedPolicyDocument", m)
    })
}

fn ok(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

/// Items per page when a List call names no `MaxItems` (as IAM).
const DEFAULT_MAX_ITEMS: u64 = 100;

/// One page of a List answer: `items` under `member`, at most `MaxItems`
/// (1–1000) of them from where `Marker` says the previous page stopped;
/// `IsTruncated` and the next `Marker` when more remain.
fn listed(a: &Args, member: &str, items: Vec<Value>) -> Result<Value, ApiError> {
    let max = match a.v.get("MaxItems") {
        None | Some(Value::Null) => DEFAULT_MAX_ITEMS,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| validation("MaxItems must be an integer from 1 to 1000."))?,
    };
    let start = match a.opt("Marker")? {
        None => 0,
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|&s| s <= items.len())
            .ok_or_else(|| validation("Marker is not one this API gave out."))?,
    };
    let total = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(usize::try_from(max).unwrap_or(usize::MAX))
        .collect();
    let next = start + page.len();
    let mut out = json!({ member: page, "IsTruncated": next < total });
    if next < total {
        out["Marker"] = Value::String(next.to_string());
    }
    Ok(out)
}

fn user_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:user/{name}", state.config.aws.account_id)
}
fn group_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:group/{name}", state.config.aws.account_id)
}
fn role_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:role/{name}", state.config.aws.account_id)
}
fn policy_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:policy/{name}", state.config.aws.account_id)
}

fn user_json(state: &AppState, u: &User) -> Value {
    let mut v = json!({
        "Path": "/",
        "UserName": u.name,
        "UserId": u.user_id,
        "Arn": user_arn(state, &u.name),
        "CreateDate": ms_to_json(u.created_ms),
    });
    if !u.tags.is_empty() {
        v["Tags"] = json!(u.tags);
    }
    if let Some(b) = &u.boundary {
        v["PermissionsBoundary"] =
            json!({"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": b});
    }
    v
}

fn group_json(state: &AppState, g: &Group) -> Value {
    json!({"Path": "/", "GroupName": g.name, "GroupId": g.group_id, "Arn": group_arn(state, &g.name), "CreateDate": ms_to_json(g.created_ms)})
}

fn role_json(state: &AppState, r: &Role) -> Value {
    let mut v = json!({
        "Path": "/", "RoleName": r.name, "RoleId": r.role_id, "Arn": role_arn(state, &r.name),
        "CreateDate": ms_to_json(r.created_ms),
        "AssumeRolePolicyDocument": r.assume_role_policy,
        "Description": r.description,
    });
    if let Some(b) = &r.boundary {
        v["PermissionsBoundary"] =
            json!({"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": b});
    }
    v
}

fn policy_json(p: &ManagedPolicy) -> Value {
    json!({
        "PolicyName": p.name, "PolicyId": p.policy_id, "Arn": p.arn, "Path": "/",
        "DefaultVersionId": "v1", "IsAttachable": true, "Description": p.description,
        "CreateDate": ms_to_json(p.created_ms), "UpdateDate": ms_to_json(p.created_ms),
    })
}

fn key_meta(user: &str, k: &crate::store::AccessKey) -> Value {
    json!({"UserName": user, "AccessKeyId": k.access_key_id, "Status": k.status, "CreateDate": ms_to_json(k.created_ms)})
}

/// Which kind of entity an action names, and the member holding its name.
fn owner_of(action: &str) -> Option<(OwnerKind, &'static str)> {
    if action.contains("User") && !action.contains("Group") || action == "ListAccessKeys" {
        Some((OwnerKind::User, "UserName"))
    } else if action.contains("Group") && action != "ListGroupsForUser" {
        Some((OwnerKind::Group, "GroupName"))
    } else if action.contains("Role") {
        Some((OwnerKind::Role, "RoleName"))
    } else {
        None
    }
}

/// The ARN an admin action is authorized against.
fn action_resource(
    state: &AppState,
    caller: &Principal,
    action: &str,
    a: &Args<'_>,
) -> Result<String, ApiError> {
    if matches!(
        action,
        "ListUsers" | "ListGroups" | "ListRoles" | "ListPolicies"
    ) || action.starts_with("Simulate")
    {
        return Ok("*".into());
    }
    if matches!(action, "GetPolicy" | "DeletePolicy") {
        return a.req("PolicyArn");
    }
    if action == "CreatePolicy" {
        return Ok(policy_arn(state, &a.req("PolicyName")?));
    }
    if matches!(
        action,
        "CreateAccessKey"
            | "ListAccessKeys"
            | "UpdateAccessKey"
            | "DeleteAccessKey"
            | "GetUser"
            | "ListGroupsForUser"
    ) {
        // Like IAM, these default to the caller's own user.
        let name = match a.opt("UserName")? {
            Some(n) => n,
            None => caller.user_name().unwrap_or_default().to_string(),
        };
        return Ok(user_arn(state, &name));
    }
    if matches!(action, "AddUserToGroup" | "RemoveUserFromGroup") {
        return Ok(group_arn(state, &a.req("GroupName")?));
    }
    match owner_of(action) {
        Some((OwnerKind::User, k)) => Ok(user_arn(state, &a.req(k)?)),
        Some((OwnerKind::Group, k)) => Ok(group_arn(state, &a.req(k)?)),
        Some((OwnerKind::Role, k)) => Ok(role_arn(state, &a.req(k)?)),
        None => Ok("*".into()),
    }
}

const ACTIONS: &[&str] = &[
    "CreateUser",
    "GetUser",
    "ListUsers",
    "DeleteUser",
    "TagUser",
    "UntagUser",
    "ListUserTags",
    "PutUserPermissionsBoundary",
    "DeleteUserPermissionsBoundary",
    "CreateAccessKey",
    "ListAccessKeys",
    "UpdateAccessKey",
    "DeleteAccessKey",
    "PutUserPolicy",
    "GetUserPolicy",
    "DeleteUserPolicy",
    "ListUserPolicies",
    "AttachUserPolicy",
    "DetachUserPolicy",
    "ListAttachedUserPolicies",
    "CreateGroup",
    "GetGroup",
    "ListGroups",
    "DeleteGroup",
    "AddUserToGroup",
    "RemoveUserFromGroup",
    "ListGroupsForUser",
    "PutGroupPolicy",
    "GetGroupPolicy",
    "DeleteGroupPolicy",
    "ListGroupPolicies",
    "AttachGroupPolicy",
    "DetachGroupPolicy",
    "ListAttachedGroupPolicies",
    "CreateRole",
    "GetRole",
    "ListRoles",
    "DeleteRole",
    "UpdateAssumeRolePolicy",
    "PutRolePolicy",
    "GetRolePolicy",
    "DeleteRolePolicy",
    "ListRolePolicies",
    "AttachRolePolicy",
    "DetachRolePolicy",
    "ListAttachedRolePolicies",
    "PutRolePermissionsBoundary",
    "DeleteRolePermissionsBoundary",
    "CreatePolicy",
    "GetPolicy",
    "ListPolicies",
    "DeletePolicy",
    "SimulateCustomPolicy",
    "SimulatePrincipalPolicy",
];

/// Entry point: authenticate (service `iam`), authorize `iam:<Action>`, run.
pub async fn handle(state: &Arc<AppState>, req: &ReadRequest) -> ApiResult {
    let caller = authenticate(state, &req.sigv4(), &["iam"]).await?;
    let target = req.header("x-amz-target").unwrap_or("");
    let action = target
        .strip_prefix("AirlockIAM.")
        .filter(|a| ACTIONS.contains(a))
        .ok_or_else(|| {
            ApiError::new(
                "UnknownOperationException",
                format!("Unknown operation {target}."),
            )
        })?;
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| validation(format!("Invalid request body: {e}")))?
    };
    if !body.is_object() {
        return Err(validation("The request body must be a JSON object."));
    }
    let a = Args { v: &body };
    let resource = action_resource(state, &caller, action, &a)?;
    authorize(
        state,
        req,
        &caller,
        &format!("iam:{action}"),
        &[resource],
        Context::new(),
    )
    .await?;
    run(state, &caller, action, &a).await
}

async fn run(state: &AppState, caller: &Principal, action: &str, a: &Args<'_>) -> ApiResult {
    let iam = state.iam.as_ref();
    let now = now_ms();
    let self_user = || -> Result<String, ApiError> {
        match a.opt("UserName")? {
            Some(n) => Ok(n),
            None => caller
                .user_name()
                .map(str::to_string)
                .ok_or_else(|| validation("UserName is required.")),
        }
    };
    match action {
        "CreateUser" => {
            let name = a.req("UserName")?;
            check_name("UserName", &name, 64)?;
            let boundary = a.opt("PermissionsBoundary")?;
            if let Some(b) = &boundary {
                require_policy(iam, b).await?;
            }
            let u = User {
                name: name.clone(),
                user_id: new_id("AIDA"),
                created_ms: now,
                boundary,
                tags: a.tags()?,
            };
            if !iam.create_user(u.clone()).await? {
                return Err(exists_err("User", &name));
            }
            ok(json!({"User": user_json(state, &u)}))
        }
        "GetUser" => {
            let name = self_user()?;
            let u = get_user(iam, &name).await?;
            ok(json!({"User": user_json(state, &u)}))
        }
        "ListUsers" => {
            let users: Vec<Value> = iam
                .list_users()
                .await?
                .iter()
                .map(|u| user_json(state, u))
                .collect();
            ok(listed(a, "Users", users)?)
        }
        "DeleteUser" => {
            let name = a.req("UserName")?;
            if name == ADMIN_USER && caller.user_name() == Some(ADMIN_USER) {
                return Err(conflict(
                    "The bootstrap admin user cannot delete itself.".into(),
                ));
            }
            let principal = format!("user/{name}");
            if !state.store.list_access_keys(&principal).await?.is_empty() {
                return Err(conflict(
                    "Cannot delete entity, must delete access keys first.".into(),
                ));
            }
            deleted(iam.delete_user(&name).await?, "user", &name)
        }
        "TagUser" => {
            let name = a.req("UserName")?;
            let tags = a.tags()?;
            let existing = get_user(iam, &name).await?.tags;
            let merged = existing
                .iter()
                .map(|t| &t.key)
                .chain(tags.iter().map(|t| &t.key))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if merged > MAX_TAGS {
                return Err(ApiError::new(
                    "LimitExceeded",
                    format!("A user may carry at most {MAX_TAGS} tags."),
                ));
            }
            if !iam.tag_user(&name, tags).await? {
                return Err(no_such("user", &name));
            }
            ok(json!({}))
        }
        "UntagUser" => {
            let name = a.req("UserName")?;
            if !iam.untag_user(&name, a.strings("TagKeys")?).await? {
                return Err(no_such("user", &name));
            }
            ok(json!({}))
        }
        "ListUserTags" => {
            let u = get_user(iam, &a.req("UserName")?).await?;
            ok(listed(
                a,
                "Tags",
                u.tags.into_iter().map(|x| json!(x)).collect(),
            )?)
        }
        "PutUserPermissionsBoundary" | "PutRolePermissionsBoundary" => {
            let (kind, key, what) = if action.contains("User") {
                (OwnerKind::User, "UserName", "user")
            } else {
                (OwnerKind::Role, "RoleName", "role")
            };
            let name = a.req(key)?;
            let b = a.req("PermissionsBoundary")?;
            require_policy(iam, &b).await?;
            if !iam.set_boundary(kind, &name, Some(&b)).await? {
                return Err(no_such(what, &name));
            }
            ok(json!({}))
        }
        "DeleteUserPermissionsBoundary" | "DeleteRolePermissionsBoundary" => {
            let (kind, key, what) = if action.contains("User") {
                (OwnerKind::User, "UserName", "user")
            } else {
                (OwnerKind::Role, "RoleName", "role")
            };
            let name = a.req(key)?;
            if !iam.set_boundary(kind, &name, None).await? {
                return Err(no_such(what, &name));
            }
            ok(json!({}))
        }
        "CreateAccessKey" => {
            let name = self_user()?;
            get_user(iam, &name).await?;
            let principal = format!("user/{name}");
            if state.store.list_access_keys(&principal).await?.len() >= MAX_KEYS_PER_USER {
                return Err(ApiError::new(
                    "LimitExceeded",
                    format!("Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}"),
                ));
            }
            let k = new_access_key(&principal);
            state.store.put_access_key(k.clone()).await?;
            tracing::info!(user = %name, access_key_id = %k.access_key_id, "access key created");
            let mut v = key_meta(&name, &k);
            v["SecretAccessKey"] = json!(k.secret);
            ok(json!({"AccessKey": v}))
        }
        "ListAccessKeys" => {
            let name = self_user()?;
            get_user(iam, &name).await?;
            let keys = state
                .store
                .list_access_keys(&format!("user/{name}"))
                .await?;
            let meta: Vec<Value> = keys.iter().map(|k| key_meta(&name, k)).collect();
            ok(listed(a, "AccessKeyMetadata", meta)?)
        }
        "UpdateAccessKey" => {
            let name = self_user()?;
            let id = a.req("AccessKeyId")?;
            let status = a.req("Status")?;
            if status != "Active" && status != "Inactive" {
                return Err(validation(format!(
                    "1 validation error detected: Value '{status}' at 'status' failed to satisfy constraint: Member must satisfy enum value set: [Active, Inactive]"
                )));
            }
            if !state
                .store
                .set_access_key_status(&format!("user/{name}"), &id, &status)
                .await?
            {
                return Err(no_such_key(&id));
            }
            tracing::info!(user = %name, access_key_id = %id, %status, "access key status changed");
            ok(json!({}))
        }
        "DeleteAccessKey" => {
            let name = self_user()?;
            let id = a.req("AccessKeyId")?;
            if !state
                .store
                .delete_access_key(&format!("user/{name}"), &id)
                .await?
            {
                return Err(no_such_key(&id));
            }
            ok(json!({}))
        }
        "PutUserPolicy" | "PutGroupPolicy" | "PutRolePolicy" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            let pname = a.req("PolicyName")?;
            check_name("PolicyName", &pname, 128)?;
            let doc = a.doc("PolicyDocument")?;
            parse_policy(&pname, &doc)?;
            if !iam.put_inline_policy(kind, &owner, &pname, &doc).await? {
                return Err(no_such(kind.as_str(), &owner));
            }
            ok(json!({}))
        }
        "GetUserPolicy" | "GetGroupPolicy" | "GetRolePolicy" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            let pname = a.req("PolicyName")?;
            let doc = iam
                .get_inline_policy(kind, &owner, &pname)
                .await?
                .ok_or_else(|| no_such("policy", &pname))?;
            let mut v = json!({"PolicyName": pname, "PolicyDocument": doc});
            v[key] = json!(owner);
            ok(v)
        }
        "DeleteUserPolicy" | "DeleteGroupPolicy" | "DeleteRolePolicy" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            let pname = a.req("PolicyName")?;
            if !iam.delete_inline_policy(kind, &owner, &pname).await? {
                return Err(no_such("policy", &pname));
            }
            ok(json!({}))
        }
        "ListUserPolicies" | "ListGroupPolicies" | "ListRolePolicies" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            require_owner(iam, kind, &owner).await?;
            let names: Vec<String> = iam
                .list_inline_policies(kind, &owner)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            ok(listed(
                a,
                "PolicyNames",
                names.into_iter().map(Value::String).collect(),
            )?)
        }
        "AttachUserPolicy" | "AttachGroupPolicy" | "AttachRolePolicy" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            let arn = a.req("PolicyArn")?;
            require_policy(iam, &arn).await?;
            if !iam.attach_policy(kind, &owner, &arn).await? {
                return Err(no_such(kind.as_str(), &owner));
            }
            ok(json!({}))
        }
        "DetachUserPolicy" | "DetachGroupPolicy" | "DetachRolePolicy" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            let arn = a.req("PolicyArn")?;
            if !iam.detach_policy(kind, &owner, &arn).await? {
                return Err(ApiError::new(
                    "NoSuchEntity",
                    format!("Policy {arn} was not found."),
                ));
            }
            ok(json!({}))
        }
        "ListAttachedUserPolicies" | "ListAttachedGroupPolicies" | "ListAttachedRolePolicies" => {
            let (kind, key) = owner_of(action).unwrap_or((OwnerKind::User, "UserName"));
            let owner = a.req(key)?;
            require_owner(iam, kind, &owner).await?;
            let list: Vec<Value> = iam
                .attached_policies(kind, &owner)
                .await?
                .iter()
                .map(|p| json!({"PolicyName": p.name, "PolicyArn": p.arn}))
                .collect();
            ok(listed(a, "AttachedPolicies", list)?)
        }
        "CreateGroup" => {
            let name = a.req("GroupName")?;
            check_name("GroupName", &name, 128)?;
            let g = Group {
                name: name.clone(),
                group_id: new_id("AGPA"),
                created_ms: now,
            };
            if !iam.create_group(g.clone()).await? {
                return Err(exists_err("Group", &name));
            }
            ok(json!({"Group": group_json(state, &g)}))
        }
        "GetGroup" => {
            let name = a.req("GroupName")?;
            let g = iam
                .get_group(&name)
                .await?
                .ok_or_else(|| no_such("group", &name))?;
            let mut users = Vec::new();
            for m in iam.group_members(&name).await? {
                if let Some(u) = iam.get_user(&m).await? {
                    users.push(user_json(state, &u));
                }
            }
            let mut page = listed(a, "Users", users)?;
            page["Group"] = group_json(state, &g);
            ok(page)
        }
        "ListGroups" => {
            let groups: Vec<Value> = iam
                .list_groups()
                .await?
                .iter()
                .map(|g| group_json(state, g))
                .collect();
            ok(listed(a, "Groups", groups)?)
        }
        "DeleteGroup" => {
            let name = a.req("GroupName")?;
            deleted(iam.delete_group(&name).await?, "group", &name)
        }
        "AddUserToGroup" => {
            let (g, u) = (a.req("GroupName")?, a.req("UserName")?);
            get_user(iam, &u).await?;
            if !iam.add_user_to_group(&g, &u).await? {
                return Err(no_such("group", &g));
            }
            ok(json!({}))
        }
        "RemoveUserFromGroup" => {
            let (g, u) = (a.req("GroupName")?, a.req("UserName")?);
            if !iam.remove_user_from_group(&g, &u).await? {
                return Err(no_such("user", &u));
            }
            ok(json!({}))
        }
        "ListGroupsForUser" => {
            let name = self_user()?;
            get_user(iam, &name).await?;
            let mut groups = Vec::new();
            for g in iam.groups_for_user(&name).await? {
                if let Some(g) = iam.get_group(&g).await? {
                    groups.push(group_json(state, &g));
                }
            }
            ok(listed(a, "Groups", groups)?)
        }
        "CreateRole" => {
            let name = a.req("RoleName")?;
            check_name("RoleName", &name, 64)?;
            let trust = match a.v.get("AssumeRolePolicyDocument") {
                None | Some(Value::Null) => TRUST_SSM_DOC.to_string(),
                _ => a.doc("AssumeRolePolicyDocument")?,
            };
            serde_json::from_str::<Value>(&trust).map_err(|e| {
                ApiError::new("MalformedPolicyDocument", format!("line {}: {e}", e.line()))
            })?;
            let boundary = a.opt("PermissionsBoundary")?;
            if let Some(b) = &boundary {
                require_policy(iam, b).await?;
            }
            let r = Role {
                name: name.clone(),
                role_id: new_id("AROA"),
                created_ms: now,
                assume_role_policy: trust,
                description: a.opt("Description")?.unwrap_or_default(),
                boundary,
            };
            if !iam.create_role(r.clone()).await? {
                return Err(exists_err("Role", &name));
            }
            ok(json!({"Role": role_json(state, &r)}))
        }
        "GetRole" => {
            let name = a.req("RoleName")?;
            let r = iam
                .get_role(&name)
                .await?
                .ok_or_else(|| no_such("role", &name))?;
            ok(json!({"Role": role_json(state, &r)}))
        }
        "ListRoles" => {
            let roles: Vec<Value> = iam
                .list_roles()
                .await?
                .iter()
                .map(|r| role_json(state, r))
                .collect();
            ok(listed(a, "Roles", roles)?)
        }
        "DeleteRole" => {
            let name = a.req("RoleName")?;
            deleted(iam.delete_role(&name).await?, "role", &name)
        }
        "UpdateAssumeRolePolicy" => {
            let name = a.req("RoleName")?;
            let trust = a.doc("PolicyDocument")?;
            serde_json::from_str::<Value>(&trust).map_err(|e| {
                ApiError::new("MalformedPolicyDocument", format!("line {}: {e}", e.line()))
            })?;
            if !iam.update_assume_role_policy(&name, &trust).await? {
                return Err(no_such("role", &name));
            }
            ok(json!({}))
        }
        "CreatePolicy" => {
            let name = a.req("PolicyName")?;
            check_name("PolicyName", &name, 128)?;
            let doc = a.doc("PolicyDocument")?;
            parse_policy(&name, &doc)?;
            let p = ManagedPolicy {
                arn: policy_arn(state, &name),
                name: name.clone(),
                policy_id: new_id("ANPA"),
                document: doc,
                description: a.opt("Description")?.unwrap_or_default(),
                created_ms: now,
            };
            if !iam.create_policy(p.clone()).await? {
                return Err(exists_err("A policy", &name));
            }
            ok(json!({"Policy": policy_json(&p)}))
        }
        "GetPolicy" => {
            let arn = a.req("PolicyArn")?;
            let p = require_policy(iam, &arn).await?;
            let mut v = policy_json(&p);
            v["PolicyDocument"] = json!(p.document);
            ok(json!({"Policy": v}))
        }
        "ListPolicies" => {
            let list: Vec<Value> = iam.list_policies().await?.iter().map(policy_json).collect();
            ok(listed(a, "Policies", list)?)
        }
        "DeletePolicy" => {
            let arn = a.req("PolicyArn")?;
            deleted(iam.delete_policy(&arn).await?, "policy", &arn)
        }
        "SimulateCustomPolicy" => simulate_custom(a),
        "SimulatePrincipalPolicy" => simulate_principal(state, a).await,
        _ => Err(ApiError::new(
            "UnknownOperationException",
            format!("Unknown operation {action}."),
        )),
    }
}

fn no_such_key(id: &str) -> ApiError {
    let mut e = ApiError::new(
        "NoSuchEntity",
        format!("The Access Key with id {id} cannot be found."),
    );
    e.status = 404;
    e
}

async fn get_user(iam: &dyn IamStore, name: &str) -> Result<User, ApiError> {
    iam.get_user(name)
        .await?
        .ok_or_else(|| no_such("user", name))
}

async fn require_policy(iam: &dyn IamStore, arn: &str) -> Result<ManagedPolicy, ApiError> {
    iam.get_policy(arn).await?.ok_or_else(|| {
        let mut e = ApiError::new("NoSuchEntity", format!("Policy {arn} does not exist."));
        e.status = 404;
        e
    })
}

async fn require_owner(iam: &dyn IamStore, kind: OwnerKind, name: &str) -> Result<(), ApiError> {
    let found = match kind {
        OwnerKind::User => iam.get_user(name).await?.is_some(),
        OwnerKind::Group => iam.get_group(name).await?.is_some(),
        OwnerKind::Role => iam.get_role(name).await?.is_some(),
    };
    if found {
        Ok(())
    } else {
        Err(no_such(kind.as_str(), name))
    }
}

// ---------------------------------------------------------------------------
// Policy simulator

/// `ContextEntries`: `[{ContextKeyName, ContextKeyValues, ContextKeyType}]`.
fn context_entries(a: &Args<'_>) -> Result<Context, ApiError> {
    let mut c = Context::new();
    let Some(list) = a.v.get("ContextEntries") else {
        return Ok(c);
    };
    let list = list
        .as_array()
        .ok_or_else(|| validation("ContextEntries must be a list."))?;
    if list.len() > MAX_CONTEXT_ENTRIES {
        return Err(validation(format!(
            "ContextEntries may hold at most {MAX_CONTEXT_ENTRIES} entries."
        )));
    }
    for e in list {
        let name = e
            .get("ContextKeyName")
            .and_then(Value::as_str)
            .ok_or_else(|| validation("ContextKeyName is required."))?;
        let values: Vec<String> = match e.get("ContextKeyValues") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        c.set(name, values);
    }
    Ok(c)
}

fn parse_inputs(a: &Args<'_>, key: &str, prefix: &str) -> Result<Vec<Policy>, ApiError> {
    let docs: Vec<String> = match a.v.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(_) => return Err(validation(format!("{key} must be a list."))),
    };
    if docs.len() > MAX_SIM_POLICIES {
        return Err(validation(format!(
            "{key} may hold at most {MAX_SIM_POLICIES} policies."
        )));
    }
    docs.iter()
        .enumerate()
        .map(|(i, d)| parse_policy(&format!("{prefix}.{}", i + 1), d))
        .collect()
}

fn simulate(
    id: &Identity,
    actions: &[String],
    resources: &[String],
    ctx: &Context,
    policy_type: &str,
) -> Value {
    let star = ["*".to_string()];
    let resources = if resources.is_empty() {
        &star[..]
    } else {
        resources
    };
    let mut results = Vec::new();
    for action in actions {
        for resource in resources {
            let d = authz::decide(id, action, resource, ctx);
            let matched: Vec<Value> = d
                .matched
                .iter()
                .map(|s| {
                    let mut m = json!({
                        "SourcePolicyId": s.policy_name,
                        "SourcePolicyType": if s.kind == PolicyKind::PermissionsBoundary { "PermissionsBoundaryPolicy" } else { policy_type },
                        "StatementIndex": s.index,
                    });
                    if let Some(sid) = &s.sid {
                        m["Sid"] = json!(sid);
                    }
                    m
                })
                .collect();
            let mut r = json!({
                "EvalActionName": action,
                "EvalResourceName": resource,
                "EvalDecision": d.effect.as_str(),
                "MatchedStatements": matched,
                "MissingContextValues": [],
            });
            if d.effect != DecisionEffect::Allowed {
                if let Some(kind) = d.denied_by {
                    r["DeniedBy"] = json!(if kind == PolicyKind::PermissionsBoundary {
                        "PermissionsBoundary"
                    } else {
                        "IdentityPolicy"
                    });
                }
            }
            results.push(r);
        }
    }
    json!({"EvaluationResults": results, "IsTruncated": false})
}

fn simulate_custom(a: &Args<'_>) -> ApiResult {
    let policies = parse_inputs(a, "PolicyInputList", "PolicyInputList")?;
    if policies.is_empty() {
        return Err(validation("PolicyInputList must name at least one policy."));
    }
    let boundary = parse_inputs(
        a,
        "PermissionsBoundaryPolicyInputList",
        "PermissionsBoundaryPolicyInputList",
    )?;
    let actions = a.bounded("ActionNames", MAX_SIM_ACTIONS)?;
    if actions.is_empty() {
        return Err(validation("ActionNames must name at least one action."));
    }
    let id = Identity {
        arn: a.opt("CallerArn")?.unwrap_or_default(),
        user_name: None,
        user_id: String::new(),
        tags: Vec::new(),
        policies,
        boundary: boundary.into_iter().next(),
    };
    let ctx = context_entries(a)?;
    ok(simulate(
        &id,
        &actions,
        &a.bounded("ResourceArns", MAX_SIM_RESOURCES)?,
        &ctx,
        "IAM Policy",
    ))
}

async fn simulate_principal(state: &AppState, a: &Args<'_>) -> ApiResult {
    let source = a.req("PolicySourceArn")?;
    let prefix = format!("arn:aws:iam::{}:", state.config.aws.account_id);
    let rest = source
        .strip_prefix(&prefix)
        .ok_or_else(|| validation(format!("PolicySourceArn {source} is not in this account.")))?;
    let principal = if let Some(u) = rest.strip_prefix("user/") {
        get_user(state.iam.as_ref(), u).await?;
        Principal {
            access_key_id: String::new(),
            principal: format!("user/{u}"),
            role: None,
        }
    } else if let Some(r) = rest.strip_prefix("role/") {
        if state.iam.get_role(r).await?.is_none() {
            return Err(no_such("role", r));
        }
        Principal {
            access_key_id: String::new(),
            principal: "instance/simulated".into(),
            role: Some(r.to_string()),
        }
    } else {
        return Err(validation(
            "PolicySourceArn must name a user or a role of this account.",
        ));
    };
    let mut id = authz::load_identity(state, &principal).await?;
    if principal.role.is_some() {
        id.arn = source.clone();
    }
    for p in parse_inputs(a, "PolicyInputList", "PolicyInputList")? {
        id.policies.push(p);
    }
    let actions = a.bounded("ActionNames", MAX_SIM_ACTIONS)?;
    if actions.is_empty() {
        return Err(validation("ActionNames must name at least one action."));
    }
    // The principal's own keys are filled in; explicit entries override them.
    let mut ctx = Context::new();
    if let Some(u) = &id.user_name {
        ctx.insert("aws:username", u.clone());
    }
    ctx.insert("aws:userid", id.user_id.clone());
    ctx.insert("aws:PrincipalArn", id.arn.clone());
    for t in &id.tags {
        ctx.insert(&format!("aws:PrincipalTag/{}", t.key), t.value.clone());
    }
    for (k, v) in context_entries(a)?.iter() {
        ctx.set(k, v.to_vec());
    }
    ok(simulate(
        &id,
        &actions,
        &a.bounded("ResourceArns", MAX_SIM_RESOURCES)?,
        &ctx,
        "IAM Policy",
    ))
}

// ---------------------------------------------------------------------------
// Declarative file

/// `[iam] file`: users, groups, roles and managed policies an operator keeps
/// in version control. Applied at every start: missing entities are
/// created, listed policies are put (replacing same-named ones), listed
/// attachments and memberships are added. Nothing is deleted.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Declarative {
    #[serde(default)]
    pub policies: Vec<DeclPolicy>,
    #[serde(default)]
    pub groups: Vec<DeclOwner>,
    #[serde(default)]
    pub users: Vec<DeclOwner>,
    #[serde(default)]
    pub roles: Vec<DeclOwner>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeclPolicy {
    pub policy_name: String,
    pub policy_document: Value,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeclOwner {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Inline policies by name.
    #[serde(default)]
    pub policies: BTreeMap<String, Value>,
    #[serde(default)]
    pub attached_policies: Vec<String>,
    #[serde(default)]
    pub permissions_boundary: Option<String>,
}

fn doc_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies a declarative file (JSON). Errors name the entity and problem.
pub async fn apply_declarative(
    iam: &dyn IamStore,
    account_id: &str,
    text: &str,
) -> Result<(), GatewayError> {
    let d: Declarative =
        serde_json::from_str(text).map_err(|e| GatewayError::Config(format!("iam file: {e}")))?;
    let cfg = |m: String| GatewayError::Config(format!("iam file: {m}"));
    let now = now_ms();
    let resolve = |arn: &str| -> String {
        if arn.starts_with("arn:") {
            arn.to_string()
        } else {
            format!("arn:aws:iam::{account_id}:policy/{arn}")
        }
    };
    for p in &d.policies {
        check_name("PolicyName", &p.policy_name, 128)
            .map_err(|e| cfg(format!("policy {:?}: {}", p.policy_name, e.message)))?;
        let doc = doc_text(&p.policy_document);
        parse_policy(&p.policy_name, &doc)
            .map_err(|e| cfg(format!("policy {}: {}", p.policy_name, e.message)))?;
        let arn = format!("arn:aws:iam::{account_id}:policy/{}", p.policy_name);
        let created = iam
            .create_policy(ManagedPolicy {
                arn: arn.clone(),
                name: p.policy_name.clone(),
                policy_id: new_id("ANPA"),
                document: doc.clone(),
                description: p.description.clone(),
                created_ms: now,
            })
            .await
            .map_err(store_err)?;
        if !created {
            let same = iam
                .get_policy(&arn)
                .await
                .map_err(store_err)?
                .is_some_and(|old| old.document == doc);
            if !same {
                tracing::warn!(policy = %arn, "iam file: managed policy exists with another document; kept the stored one");
            }
        }
    }
    for (kind, list) in [
        (OwnerKind::Group, &d.groups),
        (OwnerKind::User, &d.users),
        (OwnerKind::Role, &d.roles),
    ] {
        for o in list {
            check_name("Name", &o.name, 64)
                .map_err(|e| cfg(format!("{} {:?}: {}", kind.as_str(), o.name, e.message)))?;
            if kind != OwnerKind::User && (!o.groups.is_empty() || !o.tags.is_empty()) {
                return Err(cfg(format!(
                    "{} {}: only users take Groups and Tags",
                    kind.as_str(),
                    o.name
                )));
            }
            if kind == OwnerKind::Group && o.permissions_boundary.is_some() {
                return Err(cfg(format!(
                    "group {}: groups have no permissions boundary",
                    o.name
                )));
            }
            match kind {
                OwnerKind::Group => {
                    iam.create_group(Group {
                        name: o.name.clone(),
                        group_id: new_id("AGPA"),
                        created_ms: now,
                    })
                    .await
                    .map_err(store_err)?;
                }
                OwnerKind::User => {
                    iam.create_user(User {
                        name: o.name.clone(),
                        user_id: new_id("AIDA"),
                        created_ms: now,
                        boundary: None,
                        tags: Vec::new(),
                    })
                    .await
                    .map_err(store_err)?;
                    iam.tag_user(&o.name, o.tags.clone())
                        .await
                        .map_err(store_err)?;
                    for g in &o.groups {
                        if !iam.add_user_to_group(g, &o.name).await.map_err(store_err)? {
                            return Err(cfg(format!("user {}: no group {g}", o.name)));
                        }
                    }
                }
                OwnerKind::Role => {
                    iam.create_role(Role {
                        name: o.name.clone(),
                        role_id: new_id("AROA"),
                        created_ms: now,
                        assume_role_policy: TRUST_SSM_DOC.into(),
                        description: String::new(),
                        boundary: None,
                    })
                    .await
                    .map_err(store_err)?;
                }
            }
            for (pname, doc) in &o.policies {
                let doc = doc_text(doc);
                parse_policy(pname, &doc).map_err(|e| {
                    cfg(format!(
                        "{} {} policy {pname}: {}",
                        kind.as_str(),
                        o.name,
                        e.message
                    ))
                })?;
                iam.put_inline_policy(kind, &o.name, pname, &doc)
                    .await
                    .map_err(store_err)?;
            }
            for arn in &o.attached_policies {
                let arn = resolve(arn);
                if !iam
                    .attach_policy(kind, &o.name, &arn)
                    .await
                    .map_err(store_err)?
                {
                    return Err(cfg(format!(
                        "{} {}: no policy {arn}",
                        kind.as_str(),
                        o.name
                    )));
                }
            }
            if let Some(b) = &o.permissions_boundary {
                let b = resolve(b);
                if iam.get_policy(&b).await.map_err(store_err)?.is_none() {
                    return Err(cfg(format!("{} {}: no policy {b}", kind.as_str(), o.name)));
                }
                iam.set_boundary(kind, &o.name, Some(&b))
                    .await
                    .map_err(store_err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_policy_names_line() {
        let doc = "{\n \"Version\": \"2012-10-17\",\n \"Statement\": [\n  {\"Effect\": \"Allow\", \"Action\": \"*\", \"Resource\": \"*\"},\n  {\"Effect\": \"Maybe\", \"Action\": \"*\", \"Resource\": \"*\"}\n ]\n}";
        let e = parse_policy("p", doc).unwrap_err();
        assert_eq!(e.code, "MalformedPolicyDocument");
        assert!(e.message.starts_with("line 5:"), "{}", e.message);
        let e =
            parse_policy("p", "{\n \"Version\": \"2012-10-17\",\n \"Statement\": [\n").unwrap_err();
        assert!(e.message.contains("line"), "{}", e.message);
    }

    #[test]
    fn statement_lines() {
        let t = "{\"Statement\": {\n\"Effect\":\"Allow\"}}";
        assert_eq!(statement_line(t, 0), Some(1));
        let t = "{\"Statement\": [\n{\"Sid\":\"a{\"},\n\n{}]}";
        assert_eq!(statement_line(t, 1), Some(4));
        assert_eq!(statement_line(t, 2), None);
    }
}
