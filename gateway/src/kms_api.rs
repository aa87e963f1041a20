//! The KMS JSON 1.1 API (`X-Amz-Target: TrentService.*`, SigV4 service
//! `kms`) on the gateway's port, over the `airlock-kms` key ring and the
//! SQLite tables of [`crate::kms_store`].
//!
//! Every action is authorized through [`crate::authz::authorize`] with the
//! key ARN as resource (for Decrypt and ReEncrypt: the key recovered from
//! the ciphertext) and the `kms:EncryptionContext:<k>` /
//! `kms:EncryptionContextKeys` condition keys. Plaintexts and data keys are
//! only ever base64-encoded into the response body; nothing here logs them.

use std::path::Path;
use std::sync::Arc;

use airlock_iam::Context;
use airlock_kms::{
    alias_arn, blob_key_id, parse_key_ref, validate_alias_name, DataKeySpec, EncryptionContext,
    KeyRef, KeyRing, KeyState, KmsError, RootKey,
};
use aws_lc_rs::rand::SystemRandom;
use base64::Engine;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{authenticate, Principal};
use crate::error::ApiError;
use crate::kms_store::{AliasRow, Change, KeyRow, KmsStore};
use crate::server::{json_response, AppState, Body, ReadRequest};
use crate::store::StoreError;
use crate::util::now_ms;

type ApiResult = Result<Response<Body>, ApiError>;

const ALGORITHM: &str = "SYMMETRIC_DEFAULT";
const DEFAULT_ROTATION_DAYS: i64 = 365;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The gateway's key service: key ring (root key, region, account) plus
/// storage.
pub struct Kms {
    ring: KeyRing,
    store: KmsStore,
    rng: SystemRandom,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms").finish_non_exhaustive()
    }
}

impl Kms {
    pub fn open(db: &Path, root: RootKey, region: &str, account: &str) -> Result<Self, StoreError> {
        Ok(Kms {
            ring: KeyRing::new(root, region, account),
            store: KmsStore::open(db)?,
            rng: SystemRandom::new(),
        })
    }
}

impl Kms {
    /// Creates a key named by `alias` (`alias/...`) unless the alias exists. Used at startup for keys the
    /// gateway's own features default to.
    pub async fn ensure_alias_key(&self, alias: &str, description: &str) -> Result<(), ApiError> {
        if self.store.get_alias(alias).await?.is_some() {
            return Ok(());
        }
        let key = self
            .ring
            .create_key(&self.rng, description, now_secs())
            .map_err(kerr)?;
        let key_id = key.key_id();
        self.store
            .insert_key(KeyRow {
                key,
                rotation_period_days: DEFAULT_ROTATION_DAYS,
            })
            .await?;
        let now = now_secs();
        // Losing a race with another gateway on the same DB is fine: the
        // alias then names its key and ours stays unused.
        self.store
            .insert_alias(AliasRow {
                name: alias.to_string(),
                key_id,
                created: now,
                updated: now,
            })
            .await?;
        Ok(())
    }
}

fn kerr(e: KmsError) -> ApiError {
    ApiError {
        code: e.code().to_string(),
        message: e.to_string(),
        status: if e.is_server_error() { 500 } else { 400 },
    }
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

fn ok(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            "SerializationException",
            format!("Invalid request body: {e}"),
        )
    })
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(field)
        ))
    })
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn blob(field: &str, b64: &str, min: usize, max: usize) -> Result<Vec<u8>, ApiError> {
    // Bound before decoding: base64 is 4/3 of the bytes.
    if b64.len() > max.saturating_mul(4) / 3 + 4 {
        return Err(len_error(field, min, max));
    }
    let raw = B64.decode(b64).map_err(|_| {
        ApiError::new(
            "SerializationException",
            format!("{field} is not valid base64."),
        )
    })?;
    if raw.len() < min || raw.len() > max {
        return Err(len_error(field, min, max));
    }
    Ok(raw)
}

fn len_error(field: &str, min: usize, max: usize) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value at '{}' failed to satisfy constraint: Member must have length between {min} and {max}",
        lower_first(field)
    ))
}

fn check_algorithm(a: Option<&str>) -> Result<(), ApiError> {
    match a {
        None | Some(ALGORITHM) => Ok(()),
        Some(other) => Err(ApiError::new(
            "InvalidKeyUsageException",
            format!("Encryption algorithm {other} is not supported by symmetric keys."),
        )),
    }
}

/// The condition keys an encryption context contributes.
fn context_keys(ctx: &EncryptionContext) -> Context {
    let mut c = Context::new();
    for (k, v) in ctx {
        c.insert(&format!("kms:EncryptionContext:{k}"), v.clone());
    }
    c.set(
        "kms:EncryptionContextKeys",
        ctx.keys().cloned().collect::<Vec<_>>(),
    );
    c
}

/// `POST /` with `X-Amz-Target: TrentService.*`.
pub async fn handle(state: &Arc<AppState>, req: &ReadRequest) -> ApiResult {
    let principal = authenticate(state, &req.sigv4(), &["kms"]).await?;
    let target = req.header("x-amz-target").unwrap_or("");
    let op = target.strip_prefix("TrentService.").unwrap_or("");
    let h = Handler {
        state,
        req,
        principal: &principal,
        kms: &state.kms,
    };
    match op {
        "CreateKey" => h.create_key().await,
        "DescribeKey" => h.describe_key().await,
        "ListKeys" => h.list_keys().await,
        "CreateAlias" => h.create_alias().await,
        "ListAliases" => h.list_aliases().await,
        "DeleteAlias" => h.delete_alias().await,
        "Encrypt" => h.encrypt().await,
        "Decrypt" => h.decrypt().await,
        "GenerateDataKey" => h.generate_data_key(true).await,
        "GenerateDataKeyWithoutPlaintext" => h.generate_data_key(false).await,
        "ReEncrypt" => h.re_encrypt().await,
        "EnableKey" => h.set_enabled(true).await,
        "DisableKey" => h.set_enabled(false).await,
        "EnableKeyRotation" => h.set_rotation(true).await,
        "DisableKeyRotation" => h.set_rotation(false).await,
        "GetKeyRotationStatus" => h.get_rotation_status().await,
        "RotateKeyOnDemand" => h.rotate_on_demand().await,
        "ScheduleKeyDeletion" => h.schedule_deletion().await,
        "CancelKeyDeletion" => h.cancel_deletion().await,
        _ => Err(ApiError::new(
            "UnknownOperationException",
            format!("Unknown operation {target:?}."),
        )),
    }
}

struct Handler<'a> {
    state: &'a AppState,
    req: &'a ReadRequest,
    principal: &'a Principal,
    kms: &'a Kms,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyIdReq {
    key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyReq {
    description: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListReq {
    key_id: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AliasReq {
    alias_name: Option<String>,
    target_key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptReq {
    key_id: Option<String>,
    plaintext: Option<String>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptReq {
    key_id: Option<String>,
    ciphertext_blob: Option<String>,
    encryption_context: Option<EncryptionContext>,
    encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyReq {
    key_id: Option<String>,
    encryption_context: Option<EncryptionContext>,
    number_of_bytes: Option<i64>,
    key_spec: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptReq {
    ciphertext_blob: Option<String>,
    source_encryption_context: Option<EncryptionContext>,
    source_key_id: Option<String>,
    destination_key_id: Option<String>,
    destination_encryption_context: Option<EncryptionContext>,
    source_encryption_algorithm: Option<String>,
    destination_encryption_algorithm: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationReq {
    key_id: Option<String>,
    rotation_period_in_days: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeletionReq {
    key_id: Option<String>,
    pending_window_in_days: Option<i64>,
}

fn not_found(id: &Uuid, ring: &KeyRing) -> ApiError {
    kerr(KmsError::NotFound(format!(
        "Key '{}' does not exist",
        ring.key_arn(id)
    )))
}

impl Handler<'_> {
    fn arn(&self, id: &Uuid) -> String {
        self.kms.ring.key_arn(id)
    }

    async fn authorize(
        &self,
        action: &str,
        resources: &[String],
        ctx: Context,
    ) -> Result<(), ApiError> {
        crate::authz::authorize(self.state, self.req, self.principal, action, resources, ctx).await
    }

    /// A `KeyId` parameter (id, key ARN, alias, alias ARN) to a key id.
    async fn resolve(&self, key: &str) -> Result<Uuid, ApiError> {
        let ring = &self.kms.ring;
        match parse_key_ref(key, ring.region(), ring.account()).map_err(kerr)? {
            KeyRef::Id(id) => Ok(id),
            KeyRef::Alias(name) => match self.kms.store.get_alias(&name).await? {
                Some(a) => Ok(a.key_id),
                None => Err(kerr(KmsError::NotFound(format!(
                    "Alias {} is not found.",
                    alias_arn(ring.region(), ring.account(), &name)
                )))),
            },
        }
    }

    /// Loads a key, finishing a due deletion and a due automatic rotation
    /// on the way (the gateway has no scheduler for keys; doing it on access
    /// gives the same observable behaviour).
    async fn load(&self, id: Uuid) -> Result<KeyRow, ApiError> {
        let ring = self.kms.ring.clone();
        let now = now_secs();
        let out = self
            .kms
            .store
            .update_key(id, move |row| {
                if row.key.deletion_due(now) {
                    return (None, Change::Delete);
                }
                let current = row
                    .key
                    .material
                    .iter()
                    .map(|m| m.created)
                    .max()
                    .unwrap_or(row.key.metadata.creation_date);
                let due = row.key.metadata.key_rotation_enabled
                    && row.key.metadata.key_state == KeyState::Enabled
                    && current.saturating_add(row.rotation_period_days.saturating_mul(86_400))
                        <= now;
                if due && ring.rotate(&mut row.key, &SystemRandom::new(), now).is_ok() {
                    return (Some(row.clone()), Change::Save);
                }
                (Some(row.clone()), Change::Unchanged)
            })
            .await?;
        out.flatten().ok_or_else(|| not_found(&id, &self.kms.ring))
    }

    /// Applies `f` to a stored key and persists it when `f` succeeds.
    async fn modify<T: Send + 'static>(
        &self,
        id: Uuid,
        f: impl FnOnce(&mut KeyRow) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let out = self
            .kms
            .store
            .update_key(id, move |row| match f(row) {
                Ok(v) => (Ok(v), Change::Save),
                Err(e) => (Err(e), Change::Unchanged),
            })
            .await?;
        out.ok_or_else(|| not_found(&id, &self.kms.ring))?
            .map_err(kerr)
    }

    async fn create_key(&self) -> ApiResult {
        let r: CreateKeyReq = parse(&self.req.body)?;
        self.authorize("kms:CreateKey", &["*".to_string()], Context::new())
            .await?;
        if let Some(u) = r.key_usage.as_deref().filter(|u| *u != "ENCRYPT_DECRYPT") {
            return Err(ApiError::validation(format!(
                "KeyUsage {u} is not supported: only symmetric ENCRYPT_DECRYPT keys are."
            )));
        }
        for spec in [&r.key_spec, &r.customer_master_key_spec] {
            if let Some(s) = spec.as_deref().filter(|s| *s != "SYMMETRIC_DEFAULT") {
                return Err(ApiError::validation(format!(
                    "KeySpec {s} is not supported: only SYMMETRIC_DEFAULT is."
                )));
            }
        }
        if let Some(o) = r.origin.as_deref().filter(|o| *o != "AWS_KMS") {
            return Err(ApiError::new(
                "UnsupportedOperationException",
                format!("Origin {o} is not supported."),
            ));
        }
        let key = self
            .kms
            .ring
            .create_key(
                &self.kms.rng,
                r.description.as_deref().unwrap_or(""),
                now_secs(),
            )
            .map_err(kerr)?;
        let meta = key.metadata.to_aws_json(self.kms.ring.account());
        self.kms
            .store
            .insert_key(KeyRow {
                key,
                rotation_period_days: DEFAULT_ROTATION_DAYS,
            })
            .await?;
        ok(json!({ "KeyMetadata": meta }))
    }

    async fn describe_key(&self) -> ApiResult {
        let r: KeyIdReq = parse(&self.req.body)?;
        let id = self.resolve(&required(r.key_id, "KeyId")?).await?;
        self.authorize("kms:DescribeKey", &[self.arn(&id)], Context::new())
            .await?;
        let row = self.load(id).await?;
        ok(json!({ "KeyMetadata": row.key.metadata.to_aws_json(self.kms.ring.account()) }))
    }

    async fn list_keys(&self) -> ApiResult {
        let r: ListReq = parse(&self.req.body)?;
        self.authorize("kms:ListKeys", &["*".to_string()], Context::new())
            .await?;
        let ids = self.kms.store.list_key_ids().await?;
        let (page, next) = paginate(&ids, r.limit, r.marker.as_deref())?;
        let keys: Vec<Value> = page
            .iter()
            .map(|id| json!({"KeyId": id.to_string(), "KeyArn": self.arn(id)}))
            .collect();
        let mut out = json!({"Keys": keys, "Truncated": next.is_some()});
        if let Some(m) = next {
            out["NextMarker"] = json!(m);
        }
        ok(out)
    }

    async fn create_alias(&self) -> ApiResult {
        let r: AliasReq = parse(&self.req.body)?;
        let name = required(r.alias_name, "AliasName")?;
        let target = required(r.target_key_id, "TargetKeyId")?;
        validate_alias_name(&name).map_err(kerr)?;
        let ring = &self.kms.ring;
        // An alias must point at a key, never at another alias.
        let id = match parse_key_ref(&target, ring.region(), ring.account()).map_err(kerr)? {
            KeyRef::Id(id) => id,
            KeyRef::Alias(_) => {
                return Err(ApiError::validation(
                    "TargetKeyId must be a key id or key ARN, not an alias.",
                ))
            }
        };
        let aarn = alias_arn(ring.region(), ring.account(), &name);
        self.authorize(
            "kms:CreateAlias",
            &[aarn.clone(), self.arn(&id)],
            Context::new(),
        )
        .await?;
        let row = self.load(id).await?;
        if row.key.metadata.key_state == KeyState::PendingDeletion {
            return Err(kerr(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.arn(&id)
            ))));
        }
        let now = now_secs();
        let inserted = self
            .kms
            .store
            .insert_alias(AliasRow {
                name,
                key_id: id,
                created: now,
                updated: now,
            })
            .await?;
        if !inserted {
            return Err(kerr(KmsError::AlreadyExists(format!(
                "An alias with the name {aarn} already exists"
            ))));
        }
        ok(json!({}))
    }

    async fn list_aliases(&self) -> ApiResult {
        let r: ListReq = parse(&self.req.body)?;
        self.authorize("kms:ListAliases", &["*".to_string()], Context::new())
            .await?;
        let filter = match r.key_id.as_deref() {
            Some(k) => Some(self.resolve(k).await?),
            None => None,
        };
        let all: Vec<AliasRow> = self
            .kms
            .store
            .list_aliases()
            .await?
            .into_iter()
            .filter(|a| filter.is_none_or(|f| a.key_id == f))
            .collect();
        let (page, next) = paginate(&all, r.limit, r.marker.as_deref())?;
        let ring = &self.kms.ring;
        let aliases: Vec<Value> = page
            .iter()
            .map(|a| {
                json!({
                    "AliasName": a.name,
                    "AliasArn": alias_arn(ring.region(), ring.account(), &a.name),
                    "TargetKeyId": a.key_id.to_string(),
                    "CreationDate": a.created,
                    "LastUpdatedDate": a.updated,
                })
            })
            .collect();
        let mut out = json!({"Aliases": aliases, "Truncated": next.is_some()});
        if let Some(m) = next {
            out["NextMarker"] = json!(m);
        }
        ok(out)
    }

    async fn delete_alias(&self) -> ApiResult {
        let r: AliasReq = parse(&self.req.body)?;
        let name = required(r.alias_name, "AliasName")?;
        let ring = &self.kms.ring;
        let aarn = alias_arn(ring.region(), ring.account(), &name);
        let Some(a) = self.kms.store.get_alias(&name).await? else {
            return Err(kerr(KmsError::NotFound(format!(
                "Alias {aarn} is not found."
            ))));
        };
        self.authorize(
            "kms:DeleteAlias",
            &[aarn, self.arn(&a.key_id)],
            Context::new(),
        )
        .await?;
        self.kms.store.delete_alias(&name).await?;
        ok(json!({}))
    }

    async fn encrypt(&self) -> ApiResult {
        let r: EncryptReq = parse(&self.req.body)?;
        let id = self.resolve(&required(r.key_id, "KeyId")?).await?;
        let plain = blob("Plaintext", &required(r.plaintext, "Plaintext")?, 1, 4096)?;
        check_algorithm(r.encryption_algorithm.as_deref())?;
        let ctx = r.encryption_context.unwrap_or_default();
        self.authorize("kms:Encrypt", &[self.arn(&id)], context_keys(&ctx))
            .await?;
        let row = self.load(id).await?;
        let ct = self
            .kms
            .ring
            .encrypt(&row.key, &plain, &ctx, &self.kms.rng)
            .map_err(kerr)?;
        ok(json!({
            "CiphertextBlob": B64.encode(ct),
            "KeyId": self.arn(&id),
            "EncryptionAlgorithm": ALGORITHM,
        }))
    }

    /// Authorizes `action` on the key named inside `ct`, then decrypts.
    async fn open_blob(
        &self,
        action: &str,
        ct: &[u8],
        ctx: &EncryptionContext,
        expected: Option<Uuid>,
    ) -> Result<(Uuid, airlock_kms::Plaintext), ApiError> {
        let id = blob_key_id(ct).map_err(kerr)?;
        if expected.is_some_and(|e| e != id) {
            return Err(kerr(KmsError::IncorrectKey(
                "The key ID in the request does not identify a CMK that can perform this operation."
                    .into(),
            )));
        }
        self.authorize(action, &[self.arn(&id)], context_keys(ctx))
            .await?;
        let row = match self.load(id).await {
            Ok(r) => r,
            Err(e) if e.code == "NotFoundException" => {
                return Err(kerr(KmsError::CiphertextKeyUnknown))
            }
            Err(e) => return Err(e),
        };
        self.kms
            .ring
            .decrypt_with(&row.key, ct, ctx, None)
            .map_err(kerr)
    }

    async fn decrypt(&self) -> ApiResult {
        let r: DecryptReq = parse(&self.req.body)?;
        let ct = blob(
            "CiphertextBlob",
            &required(r.ciphertext_blob, "CiphertextBlob")?,
            1,
            6144,
        )?;
        check_algorithm(r.encryption_algorithm.as_deref())?;
        let expected = match r.key_id.as_deref() {
            Some(k) => Some(self.resolve(k).await?),
            None => None,
        };
        let ctx = r.encryption_context.unwrap_or_default();
        let (id, plain) = self.open_blob("kms:Decrypt", &ct, &ctx, expected).await?;
        ok(json!({
            "KeyId": self.arn(&id),
            "Plaintext": B64.encode(plain.expose()),
            "EncryptionAlgorithm": ALGORITHM,
        }))
    }

    async fn generate_data_key(&self, with_plaintext: bool) -> ApiResult {
        let r: DataKeyReq = parse(&self.req.body)?;
        let id = self.resolve(&required(r.key_id, "KeyId")?).await?;
        let spec =
            DataKeySpec::from_request(r.number_of_bytes, r.key_spec.as_deref()).map_err(kerr)?;
        let ctx = r.encryption_context.unwrap_or_default();
        let action = if with_plaintext {
            "kms:GenerateDataKey"
        } else {
            "kms:GenerateDataKeyWithoutPlaintext"
        };
        self.authorize(action, &[self.arn(&id)], context_keys(&ctx))
            .await?;
        let row = self.load(id).await?;
        let (ct, plain) = self
            .kms
            .ring
            .generate_data_key(&row.key, spec, &ctx, &self.kms.rng)
            .map_err(kerr)?;
        let mut out = json!({
            "CiphertextBlob": B64.encode(ct),
            "KeyId": self.arn(&id),
        });
        if with_plaintext {
            out["Plaintext"] = json!(B64.encode(plain.expose()));
        }
        ok(out)
    }

    async fn re_encrypt(&self) -> ApiResult {
        let r: ReEncryptReq = parse(&self.req.body)?;
        let ct = blob(
            "CiphertextBlob",
            &required(r.ciphertext_blob, "CiphertextBlob")?,
            1,
            6144,
        )?;
        check_algorithm(r.source_encryption_algorithm.as_deref())?;
        check_algorithm(r.destination_encryption_algorithm.as_deref())?;
        let dest = self
            .resolve(&required(r.destination_key_id, "DestinationKeyId")?)
            .await?;
        let expected = match r.source_key_id.as_deref() {
            Some(k) => Some(self.resolve(k).await?),
            None => None,
        };
        let src_ctx = r.source_encryption_context.unwrap_or_default();
        let dst_ctx = r.destination_encryption_context.unwrap_or_default();
        self.authorize(
            "kms:ReEncryptTo",
            &[self.arn(&dest)],
            context_keys(&dst_ctx),
        )
        .await?;
        let (src, plain) = self
            .open_blob("kms:ReEncryptFrom", &ct, &src_ctx, expected)
            .await?;
        let row = self.load(dest).await?;
        // The plaintext may be a data key of any size up to 4096 bytes; the
        // keyring's Encrypt enforces the same bound.
        let out = self
            .kms
            .ring
            .encrypt(&row.key, plain.expose(), &dst_ctx, &self.kms.rng)
            .map_err(kerr)?;
        ok(json!({
            "CiphertextBlob": B64.encode(out),
            "SourceKeyId": self.arn(&src),
            "KeyId": self.arn(&dest),
            "SourceEncryptionAlgorithm": ALGORITHM,
            "DestinationEncryptionAlgorithm": ALGORITHM,
        }))
    }

    async fn key_op(&self, action: &str) -> Result<(Uuid, ReadKey), ApiError> {
        let r: RotationReq = parse(&self.req.body)?;
        let id = self.resolve(&required(r.key_id, "KeyId")?).await?;
        self.authorize(action, &[self.arn(&id)], Context::new())
            .await?;
        Ok((
            id,
            ReadKey {
                rotation_period_in_days: r.rotation_period_in_days,
            },
        ))
    }

    async fn set_enabled(&self, enabled: bool) -> ApiResult {
        let action = if enabled {
            "kms:EnableKey"
        } else {
            "kms:DisableKey"
        };
        let (id, _) = self.key_op(action).await?;
        self.load(id).await?;
        self.modify(id, move |row| {
            if enabled {
                row.key.enable()
            } else {
                row.key.disable()
            }
        })
        .await?;
        ok(json!({}))
    }

    async fn set_rotation(&self, enabled: bool) -> ApiResult {
        let action = if enabled {
            "kms:EnableKeyRotation"
        } else {
            "kms:DisableKeyRotation"
        };
        let (id, extra) = self.key_op(action).await?;
        let period = extra.rotation_period_in_days;
        if let Some(p) = period {
            if !(90..=2560).contains(&p) {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{p}' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between 90 and 2560"
                )));
            }
        }
        self.load(id).await?;
        self.modify(id, move |row| {
            row.key.set_rotation_enabled(enabled)?;
            if let Some(p) = period {
                row.rotation_period_days = p;
            }
            Ok(())
        })
        .await?;
        ok(json!({}))
    }

    async fn get_rotation_status(&self) -> ApiResult {
        let (id, _) = self.key_op("kms:GetKeyRotationStatus").await?;
        let row = self.load(id).await?;
        let enabled = row.key.metadata.key_rotation_enabled;
        let mut out = json!({"KeyRotationEnabled": enabled, "KeyId": self.arn(&id)});
        if enabled {
            out["RotationPeriodInDays"] = json!(row.rotation_period_days);
            let last = row
                .key
                .material
                .iter()
                .map(|m| m.created)
                .max()
                .unwrap_or(row.key.metadata.creation_date);
            out["NextRotationDate"] =
                json!(last.saturating_add(row.rotation_period_days.saturating_mul(86_400)));
        }
        ok(out)
    }

    async fn rotate_on_demand(&self) -> ApiResult {
        let (id, _) = self.key_op("kms:RotateKeyOnDemand").await?;
        self.load(id).await?;
        let ring = self.kms.ring.clone();
        let now = now_secs();
        self.modify(id, move |row| {
            ring.rotate(&mut row.key, &SystemRandom::new(), now)
        })
        .await?;
        ok(json!({"KeyId": self.arn(&id)}))
    }

    async fn schedule_deletion(&self) -> ApiResult {
        let r: DeletionReq = parse(&self.req.body)?;
        let id = self.resolve(&required(r.key_id, "KeyId")?).await?;
        self.authorize("kms:ScheduleKeyDeletion", &[self.arn(&id)], Context::new())
            .await?;
        self.load(id).await?;
        let days = r.pending_window_in_days;
        let now = now_secs();
        let when = self
            .modify(id, move |row| row.key.schedule_deletion(days, now))
            .await?;
        ok(json!({
            "KeyId": self.arn(&id),
            "DeletionDate": when,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days.unwrap_or(30),
        }))
    }

    async fn cancel_deletion(&self) -> ApiResult {
        let (id, _) = self.key_op("kms:CancelKeyDeletion").await?;
        self.load(id).await?;
        self.modify(id, |row| row.key.cancel_deletion()).await?;
        ok(json!({"KeyId": self.arn(&id)}))
    }
}

struct ReadKey {
    rotation_period_in_days: Option<i64>,
}

/// One page of `items`; the marker is the next offset, opaque to callers.
fn paginate<'a, T>(
    items: &'a [T],
    limit: Option<i64>,
    marker: Option<&str>,
) -> Result<(&'a [T], Option<String>), ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
        )));
    }
    let start = match marker {
        None => 0,
        Some(m) => B64
            .decode(m)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| ApiError::new("InvalidMarkerException", "The marker is not valid."))?,
    };
    let start = start.min(items.len());
    let end = start.saturating_add(limit as usize).min(items.len());
    let next = (end < items.len()).then(|| B64.encode(format!("o:{end}")));
    Ok((&items[start..end], next))
}
