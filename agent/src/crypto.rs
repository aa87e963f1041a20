//! The agent's half of KMS session encryption (spec §4): the KMSEncryption
//! handshake action, Decrypt of the client's data key with the agent's own
//! credentials, the challenge round trip, and the per-payload seal/open
//! that the shell and port pumps call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_proto::crypto::{
    agent_challenge, agent_verify_challenge, should_encrypt, Challenge, Direction, NonceSource,
    Opener, Sealer, SessionKeys,
};
use airlock_proto::handshake::{
    EncChallenge, HandshakeResponse, RequestedClientAction, ACTION_AIRLOCK_CAPABILITIES,
    ACTION_KMS_ENCRYPTION,
};
use airlock_proto::messages::StartSessionTask;
use airlock_proto::reliable::Event;
use airlock_proto::{FrameBuf, PayloadType, Role};
use airlock_transport::api::CallError;
use airlock_transport::datachannel::{ChannelEvent, DataChannel};
use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use bytes::Bytes;

use crate::agent::Agent;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(15);
/// What HandshakeComplete tells the user (the stock agent's wording).
pub const CUSTOMER_MESSAGE: &str = "This session is encrypted using AWS KMS.";
/// Airlock capability: both ends encrypt port sessions; the KMS parameters
/// travel inside the capability action so a stock plugin (which leaves
/// unknown actions alone) keeps the stock unencrypted port behaviour.
pub const CAP_KMS_PORT: &str = "kms_port";

/// What the session preferences ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsSettings {
    pub key_id: String,
    /// Refuse sessions (port ones too) whose client does not complete the
    /// handshake.
    pub require: bool,
}

/// `inputs.kmsKeyId` (non-empty) of the task's document.
pub fn settings(task: &StartSessionTask) -> Option<KmsSettings> {
    let inputs = &task.document_content.inputs;
    let key_id = inputs.get("kmsKeyId").and_then(|v| v.as_str())?.trim();
    if key_id.is_empty() {
        return None;
    }
    let require = match inputs.get("requireEncryption") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    };
    Some(KmsSettings {
        key_id: key_id.to_string(),
        require,
    })
}

/// The random challenge of the KMSEncryption action (16 bytes, base64). The
/// client may bind its data key to it (`ChallengeAcknowledgement`).
pub fn random_challenge() -> Result<String> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow!("random source failed"))?;
    Ok(B64.encode(b))
}

pub fn kms_action(key_arn: &str, challenge: &str) -> RequestedClientAction {
    RequestedClientAction {
        action_type: ACTION_KMS_ENCRYPTION.into(),
        action_parameters: serde_json::json!({"KMSKeyId": key_arn, "Challenge": challenge}),
    }
}

/// The KMS parameters added to the capability action of a port session.
pub fn port_capability_params(caps: &mut serde_json::Value, key_id: &str, challenge: &str) {
    if let Some(o) = caps.as_object_mut() {
        if let Some(f) = o.get_mut("Features").and_then(|f| f.as_array_mut()) {
            f.push(CAP_KMS_PORT.into());
        }
        o.insert("KMSKeyId".into(), key_id.into());
        o.insert("Challenge".into(), challenge.into());
    }
}

/// The KMSEncryption result of a shell handshake, or the port capability's
/// result (same fields), if the client processed it successfully.
/// Err carries the client's error text.
pub fn kms_result(
    resp: &HandshakeResponse,
    port: bool,
) -> Option<Result<serde_json::Value, String>> {
    let want = if port {
        ACTION_AIRLOCK_CAPABILITIES
    } else {
        ACTION_KMS_ENCRYPTION
    };
    let a = resp
        .processed_client_actions
        .iter()
        .find(|a| a.action_type == want)?;
    if port {
        let has = a.action_status == 1
            && a.action_result
                .get("Features")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.iter().any(|x| x == CAP_KMS_PORT));
        if !has {
            return None;
        }
    } else if a.action_status != 1 {
        let why = if a.error.is_empty() {
            format!("action status {}", a.action_status)
        } else {
            a.error.clone()
        };
        return Some(Err(why));
    }
    Some(Ok(a.action_result.clone()))
}

/// Decrypts the client's data key with the agent's credentials and the
/// context the client used; `aws:ssm:RandomChallenge` joins it when the
/// client acknowledged the challenge.
pub async fn decrypt_data_key(
    agent: &Agent,
    task: &StartSessionTask,
    key_id: &str,
    challenge: &str,
    result: &serde_json::Value,
) -> Result<SessionKeys> {
    let blob = result
        .get("KMSCipherTextKey")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 8192)
        .context("the client sent no KMSCipherTextKey")?;
    let mut ctx = serde_json::json!({
        "aws:ssm:SessionId": task.session_id,
        "aws:ssm:TargetId": agent.reg.instance_id,
    });
    if result.get("ChallengeAcknowledgement") == Some(&serde_json::Value::Bool(true)) {
        ctx["aws:ssm:RandomChallenge"] = challenge.into();
    }
    let body = serde_json::json!({
        "KeyId": key_id,
        "CiphertextBlob": blob,
        "EncryptionContext": ctx,
    });
    let out = agent
        .call_api()
        .await
        .call_json("kms", "TrentService", "Decrypt", &body)
        .await
        .map_err(|e| match e {
            CallError::Api(api) => {
                anyhow!("kms:Decrypt with the agent's credentials failed: {api}")
            }
            other => anyhow!("kms:Decrypt failed: {other}"),
        })?;
    let plain = out
        .get("Plaintext")
        .and_then(|v| v.as_str())
        .and_then(|s| B64.decode(s).ok())
        .context("Decrypt answered without a Plaintext")?;
    let plain = zeroize::Zeroizing::new(plain);
    SessionKeys::from_slice(&plain, Role::Agent).map_err(|e| anyhow!("data key: {e}"))
}

/// The agent's seal/open state once the challenge succeeded. Cloneable: the
/// sealer (and its nonce counter) is shared, so every clone draws fresh
/// nonces from the one counter.
#[derive(Clone)]
pub struct AgentCrypto {
    sealer: Arc<Mutex<Sealer<'static>>>,
    opener: Arc<Opener>,
}

impl std::fmt::Debug for AgentCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCrypto(..)")
    }
}

impl AgentCrypto {
    /// Seals `payload` when its type is encrypted agent→client.
    pub fn seal(&self, payload_type: PayloadType, payload: Bytes) -> Result<Bytes> {
        if !should_encrypt(Direction::AgentToClient, payload_type) {
            return Ok(payload);
        }
        let mut s = self
            .sealer
            .lock()
            .map_err(|_| anyhow!("sealer lock poisoned"))?;
        Ok(Bytes::from(s.seal(&payload)?))
    }

    /// Seals an Output payload built in place (see
    /// `airlock_transport::batch::batch_buffer`).
    pub fn seal_output_in_place(&self, buf: &mut FrameBuf) -> Result<()> {
        let mut s = self
            .sealer
            .lock()
            .map_err(|_| anyhow!("sealer lock poisoned"))?;
        Ok(s.seal_in_place(buf)?)
    }

    /// Opens `payload` when its type is encrypted client→agent.
    pub fn open(&self, payload_type: PayloadType, payload: Bytes) -> Result<Bytes> {
        if !should_encrypt(Direction::ClientToAgent, payload_type) {
            return Ok(payload);
        }
        self.opener
            .open_bytes(payload)
            .map_err(|e| anyhow!("client payload failed to decrypt ({e}); ending the session"))
    }
}

/// What arrived while the challenge was in flight and belongs to the
/// session (opened input, the latest terminal size).
#[derive(Default)]
pub struct Early {
    pub input: Vec<Bytes>,
    pub size: Option<Bytes>,
}

/// Sends EncChallengeRequest, waits for the response and verifies it.
/// Returns `Ok(None)` when the session was closed meanwhile.
pub async fn challenge_round_trip(
    dc: &mut DataChannel,
    keys: &SessionKeys,
    link: &crate::session::Link<'_>,
    max_early: usize,
) -> Result<Option<(AgentCrypto, Early)>> {
    let rng = SystemRandom::new();
    let mut sealer = keys.sealer(NonceSource::random_counter(&rng)?);
    let opener = keys.opener();
    let (challenge, sealed): (Challenge, Vec<u8>) = agent_challenge(&mut sealer, &rng)?;
    let req = EncChallenge {
        challenge: B64.encode(sealed),
    };
    dc.send(
        PayloadType::EncChallengeRequest,
        Bytes::from(serde_json::to_vec(&req)?),
    )
    .await?;
    let crypto = AgentCrypto {
        sealer: Arc::new(Mutex::new(sealer)),
        opener: Arc::new(opener),
    };
    let mut early = Early::default();
    let mut early_len = 0usize;
    let deadline = tokio::time::Instant::now() + CHALLENGE_TIMEOUT;
    loop {
        let ev = tokio::select! {
            ev = dc.recv() => ev,
            _ = tokio::time::sleep_until(deadline) => bail!("the client did not answer the encryption challenge within {CHALLENGE_TIMEOUT:?}"),
        };
        match ev {
            None => bail!("data channel stopped during the encryption challenge"),
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::EncChallengeResponse,
                payload,
            })) => {
                let resp: EncChallenge =
                    serde_json::from_slice(&payload).context("malformed EncChallengeResponse")?;
                let raw = B64
                    .decode(resp.challenge.as_bytes())
                    .map_err(|_| anyhow!("EncChallengeResponse is not base64"))?;
                agent_verify_challenge(&crypto.opener, &challenge, &raw)
                    .map_err(|e| anyhow!("encryption challenge failed: {e}"))?;
                return Ok(Some((crypto, early)));
            }
            // The client encrypts its input from its HandshakeResponse on.
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::Output,
                payload,
            })) => {
                let plain = crypto.open(PayloadType::Output, payload)?;
                if early_len + plain.len() <= max_early {
                    early_len += plain.len();
                    early.input.push(plain);
                }
            }
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::Size,
                payload,
            })) => early.size = Some(payload),
            Some(ChannelEvent::Proto(Event::Data { .. })) => {}
            Some(ChannelEvent::Proto(Event::Control(frame))) => {
                if crate::session::is_channel_closed(&frame) {
                    return Ok(None);
                }
            }
            Some(ChannelEvent::Disconnected(_)) => link.reconnect(dc).await?,
        }
    }
}

/// Tells the client in plain text why the session cannot start (before any
/// key exists, so it cannot be sealed) and waits briefly for the ack.
pub async fn report_failure(dc: &DataChannel, message: &str) {
    let text = format!("\r\nEncryption handshake failed: {message}\r\n");
    let _ = dc.send(PayloadType::Output, Bytes::from(text)).await;
    let _ = dc.flush(Duration::from_secs(2)).await;
}

/// After the HandshakeResponse (None: it never came): when the preferences
/// name a KMS key, derive the session keys and prove them with the challenge.
/// `Ok(None)` = no encryption for this session, `Err` = refuse the session
/// (the client has been told why). `closed` is set when the session was
/// closed during the exchange.
#[allow(clippy::too_many_arguments)]
pub async fn negotiate(
    dc: &mut DataChannel,
    agent: &Agent,
    task: &StartSessionTask,
    settings: &KmsSettings,
    challenge: &str,
    response: Option<&HandshakeResponse>,
    port: bool,
    link: &crate::session::Link<'_>,
    max_early: usize,
) -> Result<Negotiated> {
    let result = match response.and_then(|r| kms_result(r, port)) {
        Some(Ok(r)) => r,
        // A port session with a stock plugin: stock behaviour (no KMS),
        // unless the administrator requires encryption.
        None if port && !settings.require && response.is_some() => return Ok(Negotiated::Plain),
        None if response.is_none() => {
            let msg =
                "the client did not answer the handshake in time; the session requires encryption";
            report_failure(dc, msg).await;
            bail!("{msg}");
        }
        None => {
            let msg = "the client does not support KMS encryption, which this session requires";
            report_failure(dc, msg).await;
            bail!("{msg}");
        }
        Some(Err(client_error)) => {
            let msg = format!("the client could not set up encryption: {client_error}");
            report_failure(dc, &msg).await;
            bail!("{msg}");
        }
    };
    let keys = match decrypt_data_key(agent, task, &settings.key_id, challenge, &result).await {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("{e:#}");
            report_failure(dc, &msg).await;
            return Err(e);
        }
    };
    match challenge_round_trip(dc, &keys, link, max_early).await {
        Ok(Some((crypto, early))) => Ok(Negotiated::Encrypted(crypto, early)),
        Ok(None) => Ok(Negotiated::Closed),
        Err(e) => {
            report_failure(dc, &format!("{e:#}")).await;
            Err(e)
        }
    }
}

pub enum Negotiated {
    Plain,
    Encrypted(AgentCrypto, Early),
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::handshake::ProcessedClientAction;
    use airlock_proto::messages::SessionDocument;

    fn task(inputs: serde_json::Value) -> StartSessionTask {
        StartSessionTask {
            document_name: "SSM-SessionManagerRunShell".into(),
            session_id: "alice-0".into(),
            run_as_user: String::new(),
            session_owner: "arn".into(),
            parameters: Default::default(),
            document_content: SessionDocument {
                schema_version: "1.0".into(),
                description: String::new(),
                session_type: "Standard_Stream".into(),
                inputs,
                parameters: serde_json::Value::Null,
                properties: serde_json::Value::Null,
            },
        }
    }

    fn resp(action_type: &str, status: i32, result: serde_json::Value) -> HandshakeResponse {
        HandshakeResponse {
            client_version: "1".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: action_type.into(),
                action_status: status,
                action_result: result,
                error: "denied".into(),
            }],
            errors: None,
        }
    }

    #[test]
    fn settings_from_preferences() {
        assert_eq!(settings(&task(serde_json::json!({"kmsKeyId": " "}))), None);
        assert_eq!(settings(&task(serde_json::Value::Null)), None);
        assert_eq!(
            settings(&task(
                serde_json::json!({"kmsKeyId": "alias/k", "requireEncryption": "true"})
            )),
            Some(KmsSettings {
                key_id: "alias/k".into(),
                require: true
            })
        );
    }

    #[test]
    fn kms_results() {
        let ok = serde_json::json!({"KMSCipherTextKey": "AAAA"});
        assert_eq!(
            kms_result(&resp(ACTION_KMS_ENCRYPTION, 1, ok.clone()), false),
            Some(Ok(ok.clone()))
        );
        assert_eq!(
            kms_result(
                &resp(ACTION_KMS_ENCRYPTION, 2, serde_json::Value::Null),
                false
            ),
            Some(Err("denied".into()))
        );
        // A stock plugin leaves the capability action at status 0: plain port.
        assert_eq!(
            kms_result(
                &resp(ACTION_AIRLOCK_CAPABILITIES, 0, serde_json::json!(3)),
                true
            ),
            None
        );
        let port = serde_json::json!({"Features": ["kms_port"], "KMSCipherTextKey": "AAAA"});
        assert_eq!(
            kms_result(&resp(ACTION_AIRLOCK_CAPABILITIES, 1, port.clone()), true),
            Some(Ok(port))
        );
    }

    #[test]
    fn port_capability_carries_kms_parameters() {
        let mut caps = serde_json::json!({"Features": [], "MaxPayload": 1024});
        port_capability_params(&mut caps, "alias/k", "Y2hhbA==");
        assert_eq!(caps["Features"], serde_json::json!(["kms_port"]));
        assert_eq!(caps["KMSKeyId"], "alias/k");
        assert_eq!(caps["Challenge"], "Y2hhbA==");
    }
}
