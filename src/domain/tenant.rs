//! Who a request belongs to, and whom inside that tenant it is for.
//!
//! A tenant comes from the API key that submitted the request (the keys
//! file's third column); a group is named by the request itself, for a
//! tenant to share fairly between its own customers. Both are kept as
//! text in the store, where the empty string stands for "none": requests
//! without a tenant are one tenant of their own, and so are requests
//! without a group inside their tenant.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A tenant's name: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `.`, `_`
/// and `-`, safe in a log line, a metric label and a TOML key as it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantName(Arc<str>);

/// What a request may name as its group: 1 to 128 characters, none of them
/// a control character.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "a tenant is 1 to {} characters of A-Z, a-z, 0-9, `.`, `_` and `-`",
        TenantName::MAX_LEN
    )]
    Tenant,
    #[error(
        "a group is 1 to {} characters, none of them a control character",
        GroupName::MAX_LEN
    )]
    Group,
}

impl TenantName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: &str) -> Result<Self, NameError> {
        text.parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl GroupName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: &str) -> Result<Self, NameError> {
        text.parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        valid.then(|| Self(Arc::from(s))).ok_or(NameError::Tenant)
    }
}

impl FromStr for GroupName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let length = s.chars().count();
        let valid = (1..=Self::MAX_LEN).contains(&length) && !s.chars().any(char::is_control);
        valid.then(|| Self(Arc::from(s))).ok_or(NameError::Group)
    }
}

/// The store's text for an optional name: the empty string for none.
pub fn stored_name<T: AsRef<str>>(name: Option<&T>) -> &str {
    name.map_or("", AsRef::as_ref)
}

/// Reads back what [`stored_name`] wrote.
pub fn name_from_store<T: FromStr>(text: &str) -> Result<Option<T>, T::Err> {
    if text.is_empty() {
        Ok(None)
    } else {
        text.parse().map(Some)
    }
}

macro_rules! text_name {
    ($name:ident) => {
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

text_name!(TenantName);

// Ordered, compared and hashed as its text (the derives go through the
// `Arc<str>`), so a map by tenant can be looked up with a `&str`.
impl std::borrow::Borrow<str> for TenantName {
    fn borrow(&self) -> &str {
        &self.0
    }
}
text_name!(GroupName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_label_safe() {
        for good in ["acme", "Acme-Corp.eu", "a", "9_lives"] {
            assert_eq!(TenantName::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(65);
        for bad in ["", "a b", "a/b", "é", "a\n", too_long.as_str()] {
            assert_eq!(TenantName::parse(bad), Err(NameError::Tenant), "{bad:?}");
        }
    }

    #[test]
    fn groups_are_up_to_128_characters_without_controls() {
        let longest = "é".repeat(128);
        for good in ["customer 42", "ü", longest.as_str()] {
            assert_eq!(GroupName::parse(good).unwrap().as_str(), good);
        }
        let too_long = "é".repeat(129);
        for bad in ["", "a\tb", "\u{7f}", too_long.as_str()] {
            assert_eq!(GroupName::parse(bad), Err(NameError::Group), "{bad:?}");
        }
    }

    #[test]
    fn none_is_stored_as_the_empty_string() {
        let acme = TenantName::parse("acme").unwrap();
        assert_eq!(stored_name(Some(&acme)), "acme");
        assert_eq!(stored_name::<TenantName>(None), "");
        assert_eq!(name_from_store::<TenantName>("").unwrap(), None);
        assert_eq!(name_from_store::<TenantName>("acme").unwrap(), Some(acme));
        assert!(name_from_store::<TenantName>("a b").is_err());
    }
}
