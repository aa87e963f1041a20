//! AWS JSON 1.1 `AmazonSSM.*` operations, agent registration, and the
//! `ssmmessages` channel-creation POSTs.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{authenticate, Principal};
use crate::authz::{authorize, document_arn, instance_arn, resource_tag_context, session_arn};
use crate::error::ApiError;
use crate::hub::{new_relay, TokenKind};
use crate::server::{json_response, new_access_key, AppState, Body, ReadRequest};
use crate::store::{
    Activation, CreateSessionOutcome, Instance, RegisterOutcome, Session, SessionFilter,
    SessionLimits, Tag,
};
use crate::util::{hex17, ms_to_json, now_ms, random_string, sha256_hex};

pub const SHELL_DOCUMENT: &str = "SSM-SessionManagerRunShell";
const FINAL_STATES: [&str; 2] = ["Terminated", "Failed"];
const ACTIVE_STATES: [&str; 4] = ["Connecting", "Connected", "Disconnected", "Terminating"];

type ApiResult = Result<Response<Body>, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("Invalid request body: {e}")))
}

fn require_user(p: &Principal) -> Result<&str, ApiError> {
    p.user_name()
        .ok_or_else(|| ApiError::access_denied("Instances may not call the SSM API."))
}

fn check_len(field: &str, v: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must have length between {min} and {max}",
            lower_first(field)
        )));
    }
    Ok(())
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Epoch seconds as sent by botocore (number) or ISO-8601 text.
fn parse_time(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_f64().map(|s| (s * 1000.0) as i64),
        Value::String(s) => {
            if let Ok(f) = s.parse::<f64>() {
                return Some((f * 1000.0) as i64);
            }
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        _ => None,
    }
}

fn encode_next_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

fn decode_next_token(t: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("o:")?
        .parse()
        .ok()
}

fn max_results(v: Option<i64>, max: i64, default: i64) -> Result<usize, ApiError> {
    let n = v.unwrap_or(default);
    if n < 1 || n > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {max}"
        )));
    }
    Ok(n as usize)
}

/// `POST /` dispatch.
pub async fn ssm(state: &Arc<AppState>, req: &ReadRequest) -> ApiResult {
    let principal = authenticate(state, &req.sigv4(), &["ssm"]).await?;
    let target = req.header("x-amz-target").unwrap_or("");
    let op = target.strip_prefix("AmazonSSM.").ok_or_else(|| {
        ApiError::new(
            "UnknownOperationException",
            "Missing or unknown X-Amz-Target.",
        )
    })?;
    require_user(&principal)?;
    // Actions without a resource type are authorized against `*` here; the
    // others in their handlers, once the resource is known.
    if matches!(
        op,
        "CreateActivation"
            | "DescribeActivations"
            | "DeleteActivation"
            | "DescribeInstanceInformation"
            | "DescribeSessions"
    ) {
        let action = format!("ssm:{op}");
        authorize(
            state,
            req,
            &principal,
            &action,
            &[],
            airlock_iam::Context::new(),
        )
        .await?;
    }
    match op {
        "CreateActivation" => create_activation(state, req, &principal).await,
        "DescribeActivations" => describe_activations(state, req).await,
        "DeleteActivation" => delete_activation(state, req).await,
        "DescribeInstanceInformation" => describe_instance_information(state, req).await,
        "DeregisterManagedInstance" => deregister(state, req, &principal).await,
        "StartSession" => start_session(state, req, &principal).await,
        "ResumeSession" => resume_session(state, req, &principal).await,
        "TerminateSession" => terminate_session(state, req, &principal).await,
        "DescribeSessions" => describe_sessions(state, req).await,
        "AddTagsToResource" => add_tags(state, req, &principal).await,
        "RemoveTagsFromResource" => remove_tags(state, req, &principal).await,
        "ListTagsForResource" => list_tags(state, req, &principal).await,
        _ => match crate::documents::api(state, req, &principal, op).await {
            Some(r) => r,
            None => Err(ApiError::new(
                "UnknownOperationException",
                format!("Unknown operation {op}."),
            )),
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateActivationReq {
    iam_role: Option<String>,
    description: Option<String>,
    default_instance_name: Option<String>,
    registration_limit: Option<i64>,
    expiration_date: Option<Value>,
    tags: Option<Value>,
}

async fn create_activation(
    state: &AppState,
    req: &ReadRequest,
    principal: &Principal,
) -> ApiResult {
    let r: CreateActivationReq = parse_body(&req.body)?;
    let iam_role = r
        .iam_role
        .ok_or_else(|| ApiError::validation("IamRole is required."))?;
    check_len("IamRole", &iam_role, 1, 64)?;
    // Registered agents act as this role, so it must exist and trust SSM to
    // assume it (as on AWS).
    let role_name = iam_role.rsplit('/').next().unwrap_or(&iam_role).to_string();
    let trusted = crate::role_creds::role_trusts_ssm(state, &role_name).await?;
    if !trusted {
        return Err(ApiError::validation(format!(
            "Nonexistent role or missing ssm service principal in trust policy: arn:aws:iam::{}:role/{role_name}",
            state.config.aws.account_id
        )));
    }
    // Agents registered with the activation act as the role: handing it out
    // is passing the role, as on AWS, or anyone allowed to create an
    // activation could give themselves the role's permissions.
    let mut passed_to = airlock_iam::Context::new();
    passed_to.insert("iam:PassedToService", "ssm.amazonaws.com");
    authorize(
        state,
        req,
        principal,
        "iam:PassRole",
        &[format!(
            "arn:aws:iam::{}:role/{role_name}",
            state.config.aws.account_id
        )],
        passed_to,
    )
    .await?;
    let limit = r.registration_limit.unwrap_or(1);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation(
            "RegistrationLimit must be between 1 and 1000.",
        ));
    }
    let now = now_ms();
    let expiration_ms = match &r.expiration_date {
        Some(v) => parse_time(v)
            .ok_or_else(|| ApiError::validation("ExpirationDate is not a valid timestamp."))?,
        None => now + 24 * 3600 * 1000,
    };
    if expiration_ms <= now {
        return Err(ApiError::new(
            "InvalidParameters",
            "ExpirationDate must be in the future.",
        ));
    }
    let code = random_string(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        20,
    );
    let id = uuid::Uuid::new_v4().to_string();
    let a = Activation {
        activation_id: id.clone(),
        code_hash: sha256_hex(code.as_bytes()),
        iam_role,
        description: r.description.unwrap_or_default(),
        default_instance_name: r.default_instance_name.unwrap_or_default(),
        registration_limit: limit,
        registrations_count: 0,
        expiration_ms,
        created_ms: now,
        tags_json: r.tags.map(|t| t.to_string()).unwrap_or_else(|| "[]".into()),
    };
    state.store.put_activation(a).await?;
    ok(json!({"ActivationId": id, "ActivationCode": code}))
}

fn activation_json(a: &Activation) -> Value {
    json!({
        "ActivationId": a.activation_id,
        "Description": a.description,
        "DefaultInstanceName": a.default_instance_name,
        "IamRole": a.iam_role,
        "RegistrationLimit": a.registration_limit,
        "RegistrationsCount": a.registrations_count,
        "ExpirationDate": ms_to_json(a.expiration_ms),
        "Expired": a.expiration_ms <= now_ms(),
        "CreatedDate": ms_to_json(a.created_ms),
        "Tags": serde_json::from_str::<Value>(&a.tags_json).unwrap_or(json!([])),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct KeyValues {
    filter_key: Option<String>,
    filter_values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeActivationsReq {
    filters: Option<Vec<KeyValues>>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

async fn describe_activations(state: &AppState, req: &ReadRequest) -> ApiResult {
    let r: DescribeActivationsReq = parse_body(&req.body)?;
    let max = max_results(r.max_results, 50, 50)?;
    let mut list = state.store.list_activations().await?;
    for f in r.filters.unwrap_or_default() {
        let vals = f.filter_values.unwrap_or_default();
        match f.filter_key.as_deref() {
            Some("ActivationIds") => list.retain(|a| vals.contains(&a.activation_id)),
            Some("DefaultInstanceName") => list.retain(|a| vals.contains(&a.default_instance_name)),
            Some("IamRole") => list.retain(|a| vals.contains(&a.iam_role)),
            _ => return Err(ApiError::new("InvalidFilter", "Unsupported filter key.")),
        }
    }
    let (page, next) = paginate(list, r.next_token.as_deref(), max)?;
    let mut out = json!({"ActivationList": page.iter().map(activation_json).collect::<Vec<_>>()});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    ok(out)
}

fn paginate<T>(
    list: Vec<T>,
    token: Option<&str>,
    max: usize,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let start = match token {
        Some(t) => decode_next_token(t).ok_or_else(|| {
            ApiError::new("InvalidNextToken", "The specified token is not valid.")
        })?,
        None => 0,
    };
    let total = list.len();
    let page: Vec<T> = list.into_iter().skip(start).take(max).collect();
    let next = (start + max < total).then(|| encode_next_token(start + max));
    Ok((page, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ActivationIdReq {
    activation_id: Option<String>,
}

async fn delete_activation(state: &AppState, req: &ReadRequest) -> ApiResult {
    let r: ActivationIdReq = parse_body(&req.body)?;
    let id = r
        .activation_id
        .ok_or_else(|| ApiError::validation("ActivationId is required."))?;
    if !state.store.delete_activation(&id).await? {
        return Err(ApiError::new(
            "InvalidActivationId",
            format!("Activation {id} does not exist."),
        ));
    }
    ok(json!({}))
}

/// `Online` while this gateway holds the agent's control socket, or another
/// writer reported it online less than 2 minutes ago.
fn ping_status(state: &AppState, i: &Instance) -> &'static str {
    if state.hub.is_online(&i.instance_id) {
        return "Online";
    }
    if i.ping_status == "Online" && now_ms() - i.last_ping_ms < 120_000 {
        return "Online";
    }
    "ConnectionLost"
}

fn instance_json(state: &AppState, i: &Instance) -> Value {
    json!({
        "InstanceId": i.instance_id,
        "PingStatus": ping_status(state, i),
        "LastPingDateTime": ms_to_json(i.last_ping_ms),
        "AgentVersion": i.agent_version,
        "IsLatestVersion": true,
        "PlatformType": if i.platform_type.is_empty() { "Linux".to_string() } else { platform_type(&i.platform_type) },
        "PlatformName": i.platform_name,
        "PlatformVersion": i.platform_version,
        "ActivationId": i.activation_id,
        "IamRole": i.iam_role,
        "RegistrationDate": ms_to_json(i.registration_ms),
        "ResourceType": "ManagedInstance",
        "Name": i.computer_name,
        "IPAddress": i.ip_address,
        "ComputerName": i.computer_name,
    })
}

/// Agent reports `linux`/`windows`/`macos`; the API enum is Linux|Windows|MacOS.
fn platform_type(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "windows" => "Windows".into(),
        "macos" | "darwin" => "MacOS".into(),
        _ => "Linux".into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceFilter {
    key: Option<String>,
    values: Option<Vec<String>>,
    value_set: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstanceInformationReq {
    instance_information_filter_list: Option<Vec<InstanceFilter>>,
    filters: Option<Vec<InstanceFilter>>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

async fn describe_instance_information(state: &AppState, req: &ReadRequest) -> ApiResult {
    let r: DescribeInstanceInformationReq = parse_body(&req.body)?;
    let max = max_results(r.max_results, 50, 50)?;
    let instances = state.store.list_instances().await?;
    let mut list: Vec<Value> = instances.iter().map(|i| instance_json(state, i)).collect();
    let filters = r
        .instance_information_filter_list
        .into_iter()
        .flatten()
        .chain(r.filters.into_iter().flatten());
    for f in filters {
        let key = f.key.unwrap_or_default();
        let vals = f.values.or(f.value_set).unwrap_or_default();
        let field = match key.as_str() {
            "InstanceIds" => "InstanceId",
            "PingStatus" => "PingStatus",
            "PlatformTypes" => "PlatformType",
            "ActivationIds" => "ActivationId",
            "IamRole" => "IamRole",
            "ResourceType" => "ResourceType",
            "AgentVersion" => "AgentVersion",
            _ => {
                return Err(ApiError::new(
                    "InvalidInstanceInformationFilterValue",
                    format!("Unsupported filter key {key}."),
                ))
            }
        };
        list.retain(|v| {
            v.get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| vals.iter().any(|x| x == s))
        });
    }
    let (page, next) = paginate(list, r.next_token.as_deref(), max)?;
    let mut out = json!({"InstanceInformationList": page});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceIdReq {
    instance_id: Option<String>,
}

async fn deregister(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
    let r: InstanceIdReq = parse_body(&req.body)?;
    let id = r
        .instance_id
        .ok_or_else(|| ApiError::validation("InstanceId is required."))?;
    authorize_instance(state, req, principal, "ssm:DeregisterManagedInstance", &id).await?;
    if !state.store.delete_instance(&id).await? {
        return Err(ApiError::new(
            "InvalidInstanceId",
            format!("Instance {id} is not a managed instance."),
        ));
    }
    ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartSessionReq {
    target: Option<String>,
    document_name: Option<String>,
    reason: Option<String>,
    parameters: Option<Map<String, Value>>,
}

fn stream_url(req: &ReadRequest, session_id: &str) -> String {
    let host = req.header("host").unwrap_or("localhost");
    let scheme = if req.secure { "wss" } else { "ws" };
    format!("{scheme}://{host}/v1/data-channel/{session_id}?role=publish_subscribe")
}

async fn start_session(
    state: &Arc<AppState>,
    req: &ReadRequest,
    principal: &Principal,
) -> ApiResult {
    let r: StartSessionReq = parse_body(&req.body)?;
    let target = r.target.ok_or_else(|| ApiError::validation("1 validation error detected: Value null at 'target' failed to satisfy constraint: Member must not be null"))?;
    check_len("Target", &target, 1, 400)?;
    if let Some(reason) = &r.reason {
        check_len("Reason", reason, 1, 256)?;
    }
    let mut resolved = crate::documents::resolve_for_session(
        &state.documents,
        r.document_name.as_deref(),
        r.parameters,
    )
    .await?;
    // The agent must know a session may not run unrecorded, whether the
    // preference or the gateway's own config says so.
    if state.recordings.config.fail_closed {
        if let Some(inputs) = resolved.document.inputs.as_object_mut() {
            inputs.insert("recordingFailClosed".into(), Value::Bool(true));
        }
    }
    let document = resolved.name.clone();
    // Both the target and the document need an Allow (the default shell
    // document too: Airlock always performs ssm:SessionDocumentAccessCheck).
    let target_tags = state.store.instance_tags(&target).await?;
    let mut ctx = resource_tag_context(&target_tags);
    ctx.insert("ssm:SessionDocumentAccessCheck", "true");
    let resources = [instance_arn(state, &target), document_arn(state, &document)];
    authorize(state, req, principal, "ssm:StartSession", &resources, ctx).await?;
    let not_connected =
        || ApiError::new("TargetNotConnected", format!("{target} is not connected."));
    if state.store.get_instance(&target).await?.is_none() {
        return Err(not_connected());
    }
    let agent = state.hub.agent(&target).ok_or_else(not_connected)?;
    crate::recordings::admit_session(state).await?;
    let user = require_user(principal)?;
    let session_id = format!("{user}-{}", hex17());
    let owner = principal.arn(&state.config.aws.account_id);
    let (token, token_hash) = state.hub.issue_token(
        TokenKind::Client,
        &session_id,
        state.config.limits.token_ttl_secs,
    );
    let now = now_ms();
    let tags = state.store.instance_tags(&target).await?;
    let limits = SessionLimits {
        per_target: state.config.sessions.limit_for(&target, &tags),
        per_principal: state.config.sessions.max_per_principal,
    };
    let outcome = state
        .store
        .create_session_within_limit(
            Session {
                session_id: session_id.clone(),
                target: target.clone(),
                owner: owner.clone(),
                document_name: document.clone(),
                status: "Connecting".into(),
                start_ms: now,
                end_ms: None,
                reason: r.reason.unwrap_or_default(),
                details: "Connecting: session started".into(),
                client_token_hash: token_hash,
                agent_token_hash: String::new(),
            },
            limits,
        )
        .await;
    let refused = match outcome {
        Ok(CreateSessionOutcome::Created) => {
            state.audit.session_state(
                &session_id,
                "Connecting",
                &format!("Connecting: session started by {owner} on {target} with {document}"),
            );
            None
        }
        Ok(CreateSessionOutcome::TargetLimit { limit, active }) => {
            Some(limit_exceeded(limit, &format!("target {target}"), &active))
        }
        Ok(CreateSessionOutcome::PrincipalLimit { limit, active }) => Some(limit_exceeded(
            limit,
            &format!("principal {owner}"),
            &active,
        )),
        Err(e) => {
            state.hub.revoke_tokens(TokenKind::Client, &session_id);
            return Err(e.into());
        }
    };
    if let Some(err) = refused {
        state.hub.revoke_tokens(TokenKind::Client, &session_id);
        tracing::info!(target = %target, principal = %principal.principal, "{}", err.message);
        return Err(err);
    }
    let relay = Arc::new(new_relay(
        &session_id,
        &target,
        &principal.principal,
        state.config.limits.relay_queue(),
        &state.hub.relay_memory,
        &state.sessions_cancel,
    ));
    state.hub.insert_relay(relay.clone());
    let frame = crate::documents::start_frame(&session_id, &owner, &resolved);
    let sent = match frame {
        Some(f) => agent.tx.try_send(f).is_ok(),
        None => false,
    };
    if !sent {
        end_session(
            state,
            &session_id,
            "Failed",
            "The agent could not be reached.",
        )
        .await;
        return Err(not_connected());
    }
    relay.span.in_scope(|| tracing::info!("session started"));
    ok(session_answer(state, req, &session_id, &token))
}

/// The refusal of a session over a concurrent-session limit. Its own code
/// (not a throttling one), so SDKs do not retry it.
pub fn limit_exceeded(limit: u32, scope: &str, active: &[String]) -> ApiError {
    ApiError::new(
        "SessionLimitExceeded",
        format!(
            "Unable to start new sessions because the maximum session limit of {limit} has been reached for {scope}; active sessions: {} (terminate one with TerminateSession)",
            if active.is_empty() { "none".to_string() } else { active.join(", ") }
        ),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionIdReq {
    session_id: Option<String>,
}

async fn resume_session(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
    let r: SessionIdReq = parse_body(&req.body)?;
    let id = r
        .session_id
        .ok_or_else(|| ApiError::validation("SessionId is required."))?;
    check_len("SessionId", &id, 1, 96)?;
    authorize_session(state, req, principal, "ssm:ResumeSession", &id).await?;
    let s = state.store.get_session(&id).await?.ok_or_else(|| {
        ApiError::new(
            "DoesNotExistException",
            format!("Session {id} does not exist."),
        )
    })?;
    if s.owner != principal.arn(&state.config.aws.account_id) {
        return Err(ApiError::access_denied("Session belongs to another user."));
    }
    if FINAL_STATES.contains(&s.status.as_str()) || state.hub.relay(&id).is_none() {
        // No token: the plugin reports "Session: <id> timed out." and exits.
        return ok(json!({"SessionId": id}));
    }
    state.hub.revoke_tokens(TokenKind::Client, &id);
    let (token, hash) =
        state
            .hub
            .issue_token(TokenKind::Client, &id, state.config.limits.token_ttl_secs);
    state
        .store
        .set_session_tokens(&id, Some(&hash), None)
        .await?;
    ok(session_answer(state, req, &id, &token))
}

/// What StartSession and ResumeSession return. Beyond the SSM members,
/// Airlock clients learn how long a dropped session waits for them (SDKs
/// drop members their model does not have).
fn session_answer(
    state: &AppState,
    req: &ReadRequest,
    session_id: &str,
    token: &str,
) -> serde_json::Value {
    json!({
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": stream_url(req, session_id),
        "AirlockResumeWindowSeconds": state.config.sessions.resume_window_secs,
    })
}

async fn terminate_session(
    state: &AppState,
    req: &ReadRequest,
    principal: &Principal,
) -> ApiResult {
    let r: SessionIdReq = parse_body(&req.body)?;
    let id = r
        .session_id
        .ok_or_else(|| ApiError::validation("SessionId is required."))?;
    check_len("SessionId", &id, 1, 96)?;
    authorize_session(state, req, principal, "ssm:TerminateSession", &id).await?;
    end_session(
        state,
        &id,
        "Terminated",
        "Session terminated by TerminateSession.",
    )
    .await;
    ok(json!({"SessionId": id}))
}

/// Authorizes `action` on a session ARN, with the session's
/// `ssm:resourceTag/aws:ssmmessages:*` keys when it exists.
async fn authorize_session(
    state: &AppState,
    req: &ReadRequest,
    principal: &Principal,
    action: &str,
    id: &str,
) -> Result<(), ApiError> {
    let mut ctx = airlock_iam::Context::new();
    if let Some(s) = state.store.get_session(id).await? {
        ctx.insert("ssm:resourceTag/aws:ssmmessages:session-id", id);
        ctx.insert("ssm:resourceTag/aws:ssmmessages:target-id", s.target);
    }
    authorize(
        state,
        req,
        principal,
        action,
        &[session_arn(state, id)],
        ctx,
    )
    .await
}

/// Authorizes `action` on a managed-instance ARN with its tags as context.
async fn authorize_instance(
    state: &AppState,
    req: &ReadRequest,
    principal: &Principal,
    action: &str,
    id: &str,
) -> Result<(), ApiError> {
    let tags = state.store.instance_tags(id).await?;
    let ctx = resource_tag_context(&tags);
    authorize(
        state,
        req,
        principal,
        action,
        &[instance_arn(state, id)],
        ctx,
    )
    .await
}

/// Moves a session to a final state and tears its relay down: both sockets
/// get `channel_closed` (with `reason` as Output) and are closed; the agent's
/// control channel also gets `channel_closed`.
pub async fn end_session(state: &AppState, session_id: &str, status: &str, reason: &str) {
    end_session_with(state, session_id, status, reason, reason).await
}

/// [`end_session`] with the client-facing `output` separate from the
/// recorded `reason` (Details become `<status>: <reason>`).
pub async fn end_session_with(
    state: &AppState,
    session_id: &str,
    status: &str,
    output: &str,
    reason: &str,
) {
    let details = format!("{status}: {reason}");
    let changed = match state
        .update_session_status(session_id, status, Some(now_ms()), Some(&details))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not record session end");
            false
        }
    };
    state.hub.revoke_tokens(TokenKind::Client, session_id);
    state.hub.revoke_tokens(TokenKind::AgentData, session_id);
    if let Some(relay) = state.hub.remove_relay(session_id) {
        if let Ok(mut g) = relay.close_reason.lock() {
            *g = Some((status.to_string(), output.to_string()));
        }
        relay.cancel.cancel();
        if let Some(agent) = state.hub.agent(&relay.target) {
            if let Some(f) =
                crate::ws::channel_closed_frame(session_id, &relay.target, output, Some(status))
            {
                let _ = agent.tx.try_send(f);
            }
        }
        relay
            .span
            .in_scope(|| tracing::info!(status, changed, reason, "session ended"));
    }
}

/// The SSM model spells these members in lowercase (`key`, `value`).
#[derive(Deserialize)]
struct SessionFilterReq {
    #[serde(alias = "Key")]
    key: Option<String>,
    #[serde(alias = "Value")]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeSessionsReq {
    state: Option<String>,
    filters: Option<Vec<SessionFilterReq>>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

async fn describe_sessions(state: &AppState, req: &ReadRequest) -> ApiResult {
    let r: DescribeSessionsReq = parse_body(&req.body)?;
    let mut f = SessionFilter::default();
    match r.state.as_deref() {
        Some("Active") => f.statuses = ACTIVE_STATES.iter().map(|s| s.to_string()).collect(),
        Some("History") => f.statuses = FINAL_STATES.iter().map(|s| s.to_string()).collect(),
        Some(s) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{s}' at 'state' failed to satisfy constraint: Member must satisfy enum value set: [Active, History]"
            )))
        }
        None => return Err(ApiError::validation("1 validation error detected: Value null at 'state' failed to satisfy constraint: Member must not be null")),
    }
    let max = max_results(r.max_results, 200, 200)?;
    let filters = r.filters.unwrap_or_default();
    if filters.len() > 6 {
        return Err(ApiError::validation("At most 6 filters are allowed."));
    }
    for flt in filters {
        let key = flt.key.unwrap_or_default();
        let value = flt.value.unwrap_or_default();
        if value.is_empty() {
            return Err(ApiError::validation("Filter value must not be empty."));
        }
        match key.as_str() {
            "Target" => f.target = Some(value),
            "Owner" => f.owner = Some(value),
            "Status" => f.status = Some(value),
            "SessionId" => f.session_id = Some(value),
            "InvokedAfter" => {
                f.invoked_after_ms = Some(
                    parse_time(&Value::String(value))
                        .ok_or_else(|| ApiError::validation("InvokedAfter is not a valid date."))?,
                )
            }
            "InvokedBefore" => {
                f.invoked_before_ms =
                    Some(parse_time(&Value::String(value)).ok_or_else(|| {
                        ApiError::validation("InvokedBefore is not a valid date.")
                    })?)
            }
            "AccessType" => {}
            _ => {
                return Err(ApiError::new(
                    "InvalidFilterKey",
                    format!("Filter key {key} is not valid."),
                ))
            }
        }
    }
    let list = state.store.list_sessions(f).await?;
    let (page, next) = paginate(list, r.next_token.as_deref(), max)?;
    let sessions: Vec<Value> = page
        .iter()
        .map(|s| {
            let mut v = json!({
                "SessionId": s.session_id,
                "Target": s.target,
                "Status": s.status,
                "StartDate": ms_to_json(s.start_ms),
                "DocumentName": s.document_name,
                "Owner": s.owner,
                "Details": s.details,
                "OutputUrl": state.recordings.output_url(&s.session_id).map(|u| json!({"S3OutputUrl": u})).unwrap_or_else(|| json!({})),
                "AccessType": "Standard",
            });
            if !s.reason.is_empty() {
                v["Reason"] = json!(s.reason);
            }
            if let Some(e) = s.end_ms {
                v["EndDate"] = ms_to_json(e);
            }
            v
        })
        .collect();
    let mut out = json!({"Sessions": sessions});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsReq {
    resource_type: Option<String>,
    resource_id: Option<String>,
    tags: Option<Vec<Tag>>,
    tag_keys: Option<Vec<String>>,
}

/// Only `ManagedInstance` resources carry tags here; returns the instance id.
fn tag_resource(r: &TagsReq) -> Result<String, ApiError> {
    match r.resource_type.as_deref() {
        Some("ManagedInstance") => {}
        Some(t) => {
            return Err(ApiError::new(
                "InvalidResourceType",
                format!("Resource type {t} is not supported; use ManagedInstance."),
            ))
        }
        None => return Err(ApiError::validation("ResourceType is required.")),
    }
    r.resource_id
        .clone()
        .ok_or_else(|| ApiError::validation("ResourceId is required."))
}

fn invalid_resource(id: &str) -> ApiError {
    ApiError::new(
        "InvalidResourceId",
        format!("Resource {id} is not a managed instance."),
    )
}

async fn add_tags(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
    let r: TagsReq = parse_body(&req.body)?;
    let id = tag_resource(&r)?;
    authorize_instance(state, req, principal, "ssm:AddTagsToResource", &id).await?;
    let tags = r.tags.unwrap_or_default();
    for t in &tags {
        check_len("Key", &t.key, 1, 128)?;
        check_len("Value", &t.value, 0, 256)?;
    }
    if !state.store.add_instance_tags(&id, tags).await? {
        return Err(invalid_resource(&id));
    }
    ok(json!({}))
}

async fn remove_tags(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
    let r: TagsReq = parse_body(&req.body)?;
    let id = tag_resource(&r)?;
    authorize_instance(state, req, principal, "ssm:RemoveTagsFromResource", &id).await?;
    if !state
        .store
        .remove_instance_tags(&id, r.tag_keys.unwrap_or_default())
        .await?
    {
        return Err(invalid_resource(&id));
    }
    ok(json!({}))
}

async fn list_tags(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
    let r: TagsReq = parse_body(&req.body)?;
    let id = tag_resource(&r)?;
    authorize_instance(state, req, principal, "ssm:ListTagsForResource", &id).await?;
    if state.store.get_instance(&id).await?.is_none() {
        return Err(invalid_resource(&id));
    }
    ok(json!({"TagList": state.store.instance_tags(&id).await?}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterReq {
    activation_id: Option<String>,
    activation_code: Option<String>,
    #[serde(default)]
    computer_name: String,
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
    #[serde(default)]
    platform_name: String,
    #[serde(default)]
    platform_version: String,
    #[serde(default)]
    agent_version: String,
    #[serde(default)]
    platform_type: String,
}

/// `POST /airlock/v1/register` (unsigned; the activation code authenticates).
pub async fn register(state: &AppState, req: &ReadRequest) -> ApiResult {
    let r: RegisterReq = parse_body(&req.body)?;
    let id = r
        .activation_id
        .ok_or_else(|| ApiError::validation("ActivationId is required."))?;
    let code = r
        .activation_code
        .ok_or_else(|| ApiError::validation("ActivationCode is required."))?;
    check_len("ComputerName", &r.computer_name, 0, 255)?;
    let instance_id = format!("mi-{}", hex17());
    let now = now_ms();
    let inst = Instance {
        instance_id: instance_id.clone(),
        activation_id: id.clone(),
        iam_role: String::new(),
        computer_name: r.computer_name,
        ip_address: r.ip_address,
        platform_type: if r.platform_type.is_empty() {
            "Linux".into()
        } else {
            platform_type(&r.platform_type)
        },
        platform_name: r.platform_name,
        platform_version: r.platform_version,
        agent_version: r.agent_version,
        registration_ms: now,
        last_ping_ms: now,
        ping_status: "ConnectionLost".into(),
    };
    let key = new_access_key(&format!("instance/{instance_id}"));
    let (key_id, secret) = (key.access_key_id.clone(), key.secret.clone());
    match state
        .store
        .register_instance(&sha256_hex(code.as_bytes()), now, inst, key)
        .await?
    {
        RegisterOutcome::Registered => {}
        RegisterOutcome::UnknownActivation => {
            return Err(ApiError::new(
                "InvalidActivationId",
                format!("Activation ID {id} does not exist."),
            ))
        }
        RegisterOutcome::InvalidActivation => {
            return Err(ApiError::new(
                "InvalidActivation",
                "Activation code is wrong, expired, or the registration limit is reached.",
            ))
        }
    }
    tracing::info!(instance_id = %instance_id, activation_id = %id, "instance registered");
    ok(
        json!({"InstanceId": instance_id, "AccessKeyId": key_id, "SecretAccessKey": secret, "Region": state.config.aws.region}),
    )
}

fn xml_token_response(root: &str, token: &str) -> Response<Body> {
    let body = format!("<{root}><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>{token}</TokenValue></{root}>");
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

fn agent_principal(p: &Principal) -> Result<&str, ApiError> {
    p.instance_id().ok_or_else(|| {
        ApiError::access_denied(
            "<AccessDeniedException>Only instances may open channels.</AccessDeniedException>",
        )
    })
}

/// `POST /v1/control-channel/<instanceId>` (agent key, service ssmmessages).
pub async fn create_control_channel(
    state: &AppState,
    req: &ReadRequest,
    instance_id: &str,
) -> ApiResult {
    let p = authenticate(state, &req.sigv4(), &["ssmmessages"]).await?;
    if agent_principal(&p)? != instance_id {
        return Err(ApiError::access_denied(
            "<AccessDeniedException>Instance id does not match the caller.</AccessDeniedException>",
        ));
    }
    let _: airlock_proto::messages::CreateChannelRequest = parse_body(&req.body)?;
    authorize(
        state,
        req,
        &p,
        "ssmmessages:CreateControlChannel",
        &[],
        airlock_iam::Context::new(),
    )
    .await?;
    if state.store.get_instance(instance_id).await?.is_none() {
        return Err(ApiError::new(
            "InvalidInstanceId",
            "Instance is not registered.",
        ));
    }
    let (token, _) = state.hub.issue_token(
        TokenKind::Control,
        instance_id,
        state.config.limits.token_ttl_secs,
    );
    Ok(xml_token_response("CreateControlChannelResponse", &token))
}

/// `POST /v1/data-channel/<sessionId>` (agent key, service ssmmessages).
pub async fn create_data_channel(
    state: &AppState,
    req: &ReadRequest,
    session_id: &str,
) -> ApiResult {
    let p = authenticate(state, &req.sigv4(), &["ssmmessages"]).await?;
    let instance_id = agent_principal(&p)?;
    let _: airlock_proto::messages::CreateChannelRequest = parse_body(&req.body)?;
    authorize(
        state,
        req,
        &p,
        "ssmmessages:CreateDataChannel",
        &[],
        airlock_iam::Context::new(),
    )
    .await?;
    let s = state
        .store
        .get_session(session_id)
        .await?
        .ok_or_else(|| ApiError::new("DoesNotExistException", "Session does not exist."))?;
    if s.target != instance_id {
        return Err(ApiError::access_denied(
            "<AccessDeniedException>Session is for another target.</AccessDeniedException>",
        ));
    }
    if FINAL_STATES.contains(&s.status.as_str()) || state.hub.relay(session_id).is_none() {
        return Err(ApiError::new(
            "SessionTerminated",
            "Session is already terminated",
        ));
    }
    let (token, hash) = state.hub.issue_token(
        TokenKind::AgentData,
        session_id,
        state.config.limits.token_ttl_secs,
    );
    state
        .store
        .set_session_tokens(session_id, None, Some(&hash))
        .await?;
    Ok(xml_token_response("CreateDataChannelResponse", &token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_token_round_trip() {
        assert_eq!(decode_next_token(&encode_next_token(42)), Some(42));
        assert_eq!(decode_next_token("garbage!"), None);
    }

    #[test]
    fn paginate_pages() {
        let (p, n) = paginate((0..5).collect::<Vec<_>>(), None, 2).unwrap();
        assert_eq!(p, vec![0, 1]);
        let (p, n) = paginate((0..5).collect::<Vec<_>>(), n.as_deref(), 2).unwrap();
        assert_eq!(p, vec![2, 3]);
        let (p, n) = paginate((0..5).collect::<Vec<_>>(), n.as_deref(), 2).unwrap();
        assert_eq!(p, vec![4]);
        assert!(n.is_none());
    }
}
