//! HTTP basic authentication (RFC 7617) against the broker's configured users.

use std::net::SocketAddr;

use base64::Engine;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use rosetta_core::{AuthFailure, Directory};

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `Authorization: Basic` header, or one that does not decode to `user:password`.
    Missing,
    Refused(AuthFailure),
}

/// The authenticated user's name, or why there is none. The same loopback rule as for client
/// connections applies, so `guest` works only from the broker's own host.
pub(crate) fn authenticate(
    users: &Directory,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, Denied> {
    let (user, password) = credentials(headers).ok_or(Denied::Missing)?;
    users
        .check(&user, &password, peer.ip())
        .map_err(Denied::Refused)?;
    Ok(user)
}

fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    // RFC 7617 section 2: the scheme name is case-insensitive.
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    // The user name cannot contain a colon; the password can (RFC 7617 section 2).
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use rosetta_core::auth::Permissions;
    use rosetta_core::{User, Users};

    fn users() -> Directory {
        let users = Users::new(vec![User {
            name: "admin".into(),
            password: "pa:ss".into(),
            loopback_only: false,
        }]);
        Directory::new(users, Permissions::default())
    }

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_str(value).expect("header value"),
        );
        map
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    fn remote() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 9], 5000))
    }

    #[test]
    fn a_password_may_contain_a_colon() {
        assert_eq!(
            authenticate(&users(), &headers(&basic("admin:pa:ss")), remote()),
            Ok("admin".into())
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let value = basic("admin:pa:ss").replacen("Basic", "bAsIc", 1);
        assert_eq!(
            authenticate(&users(), &headers(&value), remote()),
            Ok("admin".into())
        );
    }

    #[test]
    fn missing_or_malformed_credentials_are_told_apart_from_wrong_ones() {
        assert_eq!(
            authenticate(&users(), &HeaderMap::new(), remote()),
            Err(Denied::Missing)
        );
        assert_eq!(
            authenticate(&users(), &headers("Bearer abc"), remote()),
            Err(Denied::Missing)
        );
        assert_eq!(
            authenticate(&users(), &headers("Basic !!!"), remote()),
            Err(Denied::Missing)
        );
        assert_eq!(
            authenticate(&users(), &headers(&basic("admin:nope")), remote()),
            Err(Denied::Refused(AuthFailure::BadCredentials))
        );
    }
}
