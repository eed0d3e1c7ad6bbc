use std::fmt;

/// Where a request's completion callback goes: an absolute `http://` or
/// `https://` URL of at most [`CallbackUrl::MAX_LEN`] bytes, without a user
/// name or password (credentials in a URL end up in logs and status answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallbackUrlError {
    #[error("must be at most 2048 bytes long")]
    TooLong,
    #[error("must be an absolute http:// or https:// URL")]
    NotHttp,
    #[error("must not contain a user name or password")]
    UserInfo,
}

impl CallbackUrl {
    /// The longest URL accepted, in bytes, as sent and once normalized.
    pub const MAX_LEN: usize = 2048;

    pub fn parse(raw: &str) -> Result<Self, CallbackUrlError> {
        // Checked before parsing, so that a huge string costs no parse.
        if raw.len() > Self::MAX_LEN {
            return Err(CallbackUrlError::TooLong);
        }
        let url = reqwest::Url::parse(raw).map_err(|_| CallbackUrlError::NotHttp)?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(CallbackUrlError::NotHttp);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CallbackUrlError::UserInfo);
        }
        // Normalizing percent-encodes what needs it, which can lengthen it.
        let normalized = String::from(url);
        if normalized.len() > Self::MAX_LEN {
            return Err(CallbackUrlError::TooLong);
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_absolute_http_urls_normalized() {
        let url = CallbackUrl::parse("HTTPS://Example.org:443/hooks/a b?x=1").unwrap();
        assert_eq!(url.as_str(), "https://example.org/hooks/a%20b?x=1");
        assert!(CallbackUrl::parse("http://10.0.0.5:9000/").is_ok());
    }

    #[test]
    fn refuses_other_schemes_and_relative_urls() {
        for raw in [
            "ftp://example.org/",
            "/hooks",
            "example.org/hooks",
            "",
            "file:///etc/passwd",
            "mailto:a@example.org",
        ] {
            assert_eq!(
                CallbackUrl::parse(raw),
                Err(CallbackUrlError::NotHttp),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_user_info() {
        for raw in [
            "https://user@example.org/",
            "https://user:secret@example.org/",
            "http://:secret@example.org/",
        ] {
            assert_eq!(
                CallbackUrl::parse(raw),
                Err(CallbackUrlError::UserInfo),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_urls_longer_than_2048_bytes_as_sent_or_normalized() {
        let base = "https://example.org/";
        let exact = format!("{base}{}", "a".repeat(CallbackUrl::MAX_LEN - base.len()));
        assert!(CallbackUrl::parse(&exact).is_ok());
        let over = format!("{exact}a");
        assert_eq!(CallbackUrl::parse(&over), Err(CallbackUrlError::TooLong));
        // 700 spaces are 2100 bytes once percent-encoded.
        let grows = format!("{base}{}x", " ".repeat(700));
        assert_eq!(CallbackUrl::parse(&grows), Err(CallbackUrlError::TooLong));
    }
}
