//! Signed callbacks, as the Standard Webhooks specification defines them: a
//! receiver checks that a callback comes from this Sluice and was not replayed
//! long after.
//!
//! Each delivery carries `webhook-id` (the ingestion id: one callback per
//! request, the same in every retry, so a receiver can drop duplicates),
//! `webhook-timestamp` (Unix seconds at this attempt) and `webhook-signature`:
//! `v1,` and the base64 HMAC-SHA256 of `<id>.<timestamp>.<body>`, keyed with
//! the secret's bytes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix Standard Webhooks secrets are written with.
const PREFIX: &str = "whsec_";
/// The key sizes the specification allows.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The key callbacks are signed with, from `--callback-secret-file`.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// Never says what the file holds: it is a secret, even when malformed.
    #[error(
        "{0} must hold `whsec_` and the base64 of 24 to 64 random bytes (the `whsec_` \
         may be left out), e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`"
    )]
    Format(String),
}

impl SigningKey {
    /// Reads the secret file: `whsec_<base64>` or the base64 alone, blank
    /// space around it ignored. The key is the decoded bytes, as every
    /// Standard Webhooks library takes it.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| SecretError::Read(shown.clone(), e))?;
        Self::parse(&text).ok_or(SecretError::Format(shown))
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        let key = BASE64.decode(encoded).ok()?;
        KEY_BYTES.contains(&key.len()).then_some(Self(key))
    }

    /// The `webhook-signature` value of one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_example_signs_the_same() {
        // The example of the Standard Webhooks specification's README.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_prefix_is_optional_and_blank_space_ignored() {
        let with = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let without = SigningKey::parse("  MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(with.0, without.0);
        assert_eq!(with.0.len(), 24);
    }

    #[test]
    fn secrets_that_are_not_base64_or_too_short_are_refused() {
        for bad in [
            "",
            "whsec_",
            "correct horse battery staple",
            "whsec_c2hvcnQ=",
        ] {
            assert!(SigningKey::parse(bad).is_none(), "{bad:?}");
        }
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "not-base64-hunter2!").unwrap();
        let message = SigningKey::load(&path).unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }
}
