//! The client's half of KMS session encryption (spec §4): GenerateDataKey
//! with the client's own credentials for the KMSEncryption action, the
//! answer to the agent's challenge, and seal/open of payloads.
//!
//! Beyond the stock plugin, this client binds the data key to the agent's
//! random challenge (`ChallengeAcknowledgement`, so a replayed key blob is
//! useless in another handshake), and, with an Airlock agent, encrypts port
//! sessions too (the `kms_port` capability).

use std::sync::{Arc, Mutex, OnceLock};

use airlock_proto::crypto::{
    client_answer_challenge, should_encrypt, Direction, NonceSource, Opener, Sealer, SessionKeys,
};
use airlock_proto::handshake::{
    ActionStatus, EncChallenge, HandshakeRequest, HandshakeResponse, ACTION_AIRLOCK_CAPABILITIES,
    ACTION_KMS_ENCRYPTION,
};
use airlock_proto::{FrameBuf, PayloadType, Role};
use airlock_transport::api::{ApiClient, CallError};
use aws_lc_rs::rand::SystemRandom;
use base64::Engine;
use bytes::Bytes;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The Airlock capability under which port sessions are encrypted.
pub const CAP_KMS_PORT: &str = "kms_port";

fn rng() -> &'static SystemRandom {
    static RNG: OnceLock<SystemRandom> = OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
}

/// What the client needs to ask KMS for a session's data key.
#[derive(Clone)]
pub struct KmsEnv {
    pub api: Option<ApiClient>,
    pub session_id: String,
    pub target: Option<String>,
}

/// The client's seal/open state. Cloneable; clones share the sealer.
#[derive(Clone)]
pub struct ClientCrypto {
    sealer: Arc<Mutex<Sealer<'static>>>,
    opener: Arc<Opener>,
}

/// Two handles are equal when they share one sealer.
impl PartialEq for ClientCrypto {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.sealer, &other.sealer)
    }
}

impl std::fmt::Debug for ClientCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCrypto(..)")
    }
}

impl ClientCrypto {
    pub fn new(keys: &SessionKeys) -> Self {
        ClientCrypto {
            sealer: Arc::new(Mutex::new(keys.sealer(NonceSource::Random(rng())))),
            opener: Arc::new(keys.opener()),
        }
    }

    /// Seals `payload` when its type is encrypted client→agent.
    pub fn seal(&self, payload_type: PayloadType, payload: Bytes) -> Result<Bytes, String> {
        if !should_encrypt(Direction::ClientToAgent, payload_type) {
            return Ok(payload);
        }
        let mut s = self.sealer.lock().map_err(|_| "sealer lock poisoned")?;
        s.seal(&payload).map(Bytes::from).map_err(|e| e.to_string())
    }

    /// Seals an Output payload built in place (see
    /// `airlock_transport::batch::batch_buffer`).
    pub fn seal_output_in_place(&self, buf: &mut FrameBuf) -> Result<(), String> {
        let mut s = self.sealer.lock().map_err(|_| "sealer lock poisoned")?;
        s.seal_in_place(buf).map_err(|e| e.to_string())
    }

    /// Opens `payload` when its type is encrypted agent→client.
    pub fn open(&self, payload_type: PayloadType, payload: Bytes) -> Result<Bytes, String> {
        if !should_encrypt(Direction::AgentToClient, payload_type) {
            return Ok(payload);
        }
        self.opener
            .open_bytes(payload)
            .map_err(|e| format!("a payload from the agent failed to decrypt: {e}"))
    }

    /// The EncChallengeResponse payload for an EncChallengeRequest payload.
    pub fn answer_challenge(&self, request: &[u8]) -> Result<Bytes, String> {
        let req: EncChallenge = serde_json::from_slice(request)
            .map_err(|e| format!("malformed encryption challenge: {e}"))?;
        let raw = B64
            .decode(req.challenge.as_bytes())
            .map_err(|_| "encryption challenge is not base64".to_string())?;
        let mut s = self.sealer.lock().map_err(|_| "sealer lock poisoned")?;
        let answer = client_answer_challenge(&self.opener, &mut s, &raw)
            .map_err(|e| format!("encryption challenge failed: {e}"))?;
        let body = serde_json::to_vec(&EncChallenge {
            challenge: B64.encode(answer),
        })
        .map_err(|e| e.to_string())?;
        Ok(Bytes::from(body))
    }
}

/// Outcome of the KMS part of a handshake.
pub enum KmsOutcome {
    /// The agent asked for no encryption.
    NotRequested,
    /// Keys agreed on; the response says so.
    Ready(ClientCrypto),
    /// Could not set up encryption; the response says so and the user
    /// should see this message.
    Failed(String),
}

/// Calls GenerateDataKey for the KMSEncryption action (or, when `port`,
/// for the KMS parameters of Airlock's capability action) and writes the
/// result into `response`'s matching processed action.
pub async fn process(
    req: &HandshakeRequest,
    response: &mut HandshakeResponse,
    env: &KmsEnv,
    port: bool,
) -> KmsOutcome {
    let wanted = if port {
        ACTION_AIRLOCK_CAPABILITIES
    } else {
        ACTION_KMS_ENCRYPTION
    };
    let Some(action) = req
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == wanted)
    else {
        return KmsOutcome::NotRequested;
    };
    let params = &action.action_parameters;
    let key_id = params.get("KMSKeyId").and_then(|v| v.as_str());
    let challenge = params.get("Challenge").and_then(|v| v.as_str());
    let (Some(key_id), Some(challenge)) = (key_id, challenge) else {
        return KmsOutcome::NotRequested;
    };
    let Some(slot) = response
        .processed_client_actions
        .iter_mut()
        .find(|a| a.action_type == wanted)
    else {
        return KmsOutcome::NotRequested;
    };
    match generate(env, key_id, challenge).await {
        Ok((blob, crypto)) => {
            let kms = serde_json::json!({
                "KMSCipherTextKey": blob,
                "KMSCipherTextHash": null,
                "ChallengeAcknowledgement": true,
            });
            if port {
                if let Some(o) = slot.action_result.as_object_mut() {
                    if let Some(f) = o.get_mut("Features").and_then(|f| f.as_array_mut()) {
                        f.push(CAP_KMS_PORT.into());
                    }
                    for (k, v) in kms.as_object().into_iter().flatten() {
                        o.insert(k.clone(), v.clone());
                    }
                }
            } else {
                slot.action_status = ActionStatus::Success as i32;
                slot.action_result = kms;
                slot.error = String::new();
            }
            KmsOutcome::Ready(crypto)
        }
        Err(msg) => {
            if !port {
                slot.action_status = ActionStatus::Failed as i32;
                slot.action_result = serde_json::Value::Null;
                slot.error = msg.clone();
            }
            KmsOutcome::Failed(msg)
        }
    }
}

async fn generate(
    env: &KmsEnv,
    key_id: &str,
    challenge: &str,
) -> Result<(String, ClientCrypto), String> {
    let api = env.api.as_ref().ok_or_else(|| {
        "this session is encrypted with KMS, but no AWS credentials were found to call kms:GenerateDataKey".to_string()
    })?;
    let target = env.target.as_deref().ok_or_else(|| {
        "this session is encrypted with KMS, which needs the target id (not given in legacy plugin mode)".to_string()
    })?;
    let body = serde_json::json!({
        "KeyId": key_id,
        "NumberOfBytes": airlock_proto::crypto::DATA_KEY_LEN,
        "EncryptionContext": {
            "aws:ssm:SessionId": env.session_id,
            "aws:ssm:TargetId": target,
            "aws:ssm:RandomChallenge": challenge,
        },
    });
    let out = api
        .call_json("kms", "TrentService", "GenerateDataKey", &body)
        .await
        .map_err(|e| match e {
            CallError::Api(a) => format!("kms:GenerateDataKey on {key_id} failed: {a}"),
            other => format!("kms:GenerateDataKey failed: {other}"),
        })?;
    let blob = out
        .get("CiphertextBlob")
        .and_then(|v| v.as_str())
        .ok_or("GenerateDataKey answered without a CiphertextBlob")?
        .to_string();
    let plain = out
        .get("Plaintext")
        .and_then(|v| v.as_str())
        .and_then(|s| B64.decode(s).ok())
        .ok_or("GenerateDataKey answered without a Plaintext")?;
    let plain = zeroize::Zeroizing::new(plain);
    let keys = SessionKeys::from_slice(&plain, Role::Client).map_err(|e| e.to_string())?;
    Ok((blob, ClientCrypto::new(&keys)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::crypto::{agent_challenge, NonceSource};

    fn keys(role: Role) -> SessionKeys {
        SessionKeys::from_data_key(&[7u8; 64], role).unwrap()
    }

    #[test]
    fn seals_only_input_and_opens_agent_output() {
        let client = ClientCrypto::new(&keys(Role::Client));
        let agent = keys(Role::Agent);
        let sealed = client
            .seal(PayloadType::Output, Bytes::from_static(b"ls\n"))
            .unwrap();
        assert_ne!(&sealed[..], b"ls\n");
        assert_eq!(&agent.opener().open(&sealed).unwrap()[..], b"ls\n");
        // Size payloads stay clear.
        let size = Bytes::from_static(br#"{"cols":80,"rows":24}"#);
        assert_eq!(client.seal(PayloadType::Size, size.clone()).unwrap(), size);

        let mut s = agent.sealer(NonceSource::Counter([0; 12]));
        let out = Bytes::from(s.seal(b"hello").unwrap());
        assert_eq!(
            &client.open(PayloadType::StdErr, out.clone()).unwrap()[..],
            b"hello"
        );
        let mut bad = out.to_vec();
        bad[20] ^= 1;
        assert!(client.open(PayloadType::Output, Bytes::from(bad)).is_err());
    }

    #[test]
    fn answers_the_agent_challenge() {
        let client = ClientCrypto::new(&keys(Role::Client));
        let agent = keys(Role::Agent);
        let rng = SystemRandom::new();
        let mut sealer = agent.sealer(NonceSource::Counter([9; 12]));
        let (challenge, sealed) = agent_challenge(&mut sealer, &rng).unwrap();
        let req = serde_json::to_vec(&EncChallenge {
            challenge: B64.encode(sealed),
        })
        .unwrap();
        let answer: EncChallenge =
            serde_json::from_slice(&client.answer_challenge(&req).unwrap()).unwrap();
        let raw = B64.decode(answer.challenge).unwrap();
        airlock_proto::crypto::agent_verify_challenge(&agent.opener(), &challenge, &raw).unwrap();
        assert!(client.answer_challenge(b"{\"Challenge\":\"!!\"}").is_err());
    }

    #[tokio::test]
    async fn kms_failure_without_credentials_is_reported_in_the_response() {
        let req: HandshakeRequest = serde_json::from_value(serde_json::json!({
            "AgentVersion": "1",
            "RequestedClientActions": [
                {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "alias/k", "Challenge": "Yw=="}}
            ]
        }))
        .unwrap();
        let mut out = crate::handshake::respond(&req);
        let env = KmsEnv {
            api: None,
            session_id: "s".into(),
            target: Some("mi-1".into()),
        };
        match process(&req, &mut out.response, &env, false).await {
            KmsOutcome::Failed(m) => assert!(m.contains("no AWS credentials"), "{m}"),
            _ => panic!("expected a failure"),
        }
        let a = &out.response.processed_client_actions[0];
        assert_eq!(a.action_status, 2);
        assert!(a.error.contains("kms:GenerateDataKey"));
    }
}
