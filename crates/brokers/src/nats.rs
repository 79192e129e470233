//! NATS URLs: `nats://[user:password@]host[:port]` or `tls://…`; a token is written as the
//! password with no user name (`nats://:TOKEN@host`).

use async_nats::ConnectOptions;

/// How the client proves who it is.
#[derive(Debug, PartialEq)]
pub enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
}

impl Auth {
    /// `options` carrying these credentials.
    pub fn apply(self, options: ConnectOptions) -> ConnectOptions {
        match self {
            Auth::None => options,
            Auth::UserPassword(u, p) => options.user_and_password(u, p),
            Auth::Token(t) => options.token(t),
        }
    }
}

/// The server address without credentials, and the credentials the URL carried.
pub fn split_url(url: &str) -> Result<(String, Auth), String> {
    let u = url::Url::parse(url).map_err(|e| format!("nats URL: {e}"))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(u.username());
    let auth = match u.password().map(decode) {
        Some(p) if user.is_empty() => Auth::Token(p),
        Some(p) => Auth::UserPassword(user, p),
        None if user.is_empty() => Auth::None,
        None => return Err("the URL has a user but no password".into()),
    };
    let host = u.host_str().ok_or("the URL has no host")?;
    let port = u.port().unwrap_or(4222);
    Ok((format!("{}://{host}:{port}", u.scheme()), auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        assert_eq!(
            split_url("nats://app:s%2Fcret@127.0.0.1:4223").unwrap(),
            (
                "nats://127.0.0.1:4223".into(),
                Auth::UserPassword("app".into(), "s/cret".into())
            )
        );
        assert_eq!(
            split_url("tls://:tok3n@nats.example").unwrap(),
            (
                "tls://nats.example:4222".into(),
                Auth::Token("tok3n".into())
            )
        );
        assert_eq!(
            split_url("nats://127.0.0.1").unwrap(),
            ("nats://127.0.0.1:4222".into(), Auth::None)
        );
        assert!(split_url("nats://app@127.0.0.1").is_err());
    }
}
