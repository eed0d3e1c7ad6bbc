//! Secrets kept out of logs and error messages: a URL is shown with its
//! password and credential-like query parameters replaced by `***`.

/// Query parameters whose values are secrets (libpq's `password`,
/// `sslpassword`, and the like).
const SECRET_PARAMS: [&str; 4] = ["password", "token", "secret", "key"];

const HIDDEN: &str = "***";

/// `url` with its password, and the values of query parameters that look like
/// credentials, replaced by `***`; unchanged when it holds none.
///
/// Read as text rather than parsed: a password with an unescaped `@` or `/`
/// makes a URL parser place the host inside the password, and the rest of the
/// secret would be shown. Everything before the last `@` is the user-info.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut shown = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => shown.push_str(&format!("{user}:{HIDDEN}@{host}")),
            None => shown.push_str(before_query),
        },
        None => shown.push_str(before_query),
    }
    if let Some(query) = query {
        shown.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}={HIDDEN}"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push_str(&pairs.join("&"));
    }
    shown
}

fn is_secret(param: &str) -> bool {
    let param = param.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|secret| param.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            redacted_url("postgres://sluice:s3cret@db.internal:5432/sluice"),
            "postgres://sluice:***@db.internal:5432/sluice"
        );
        assert_eq!(
            redacted_url("postgres://db/sluice?user=me&password=s3cret&sslmode=require"),
            "postgres://db/sluice?user=me&password=***&sslmode=require"
        );
        assert_eq!(
            redacted_url("https://api.example/items/{id}?api_key=abc&x=1"),
            "https://api.example/items/{id}?api_key=***&x=1"
        );
    }

    #[test]
    fn urls_without_secrets_are_left_alone() {
        for url in [
            "sqlite://sluice.db",
            "sqlite:///var/lib/sluice/s.db?mode=rwc",
            "postgres://postgres@127.0.0.1:5432/sluice",
            "http://127.0.0.1:9000/items/{id}",
        ] {
            assert_eq!(redacted_url(url), url);
        }
    }

    #[test]
    fn a_password_with_unescaped_delimiters_is_hidden_whole() {
        assert_eq!(
            redacted_url("postgres://me:p@ss/w@rd@db:5432/x?password=q"),
            "postgres://me:***@db:5432/x?password=***"
        );
    }
}
