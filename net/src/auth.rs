//! Optional bearer-token authentication (RFC 6750 §2.1).
//!
//! Why this shape: the endpoint can reboot the machine and run code, so an operator who exposes
//! it beyond a private network sets `api_token=...` on the kernel command line. Then every
//! request, `/v1/health` included (a health probe must send the token too: an unauthenticated
//! answer would confirm to anyone that a Hermitage endpoint listens there), must carry
//! `Authorization: Bearer <token>`, or it is answered 401 `unauthorized` with
//! `WWW-Authenticate: Bearer` and nothing else is looked at: no route, no body, so the answer
//! says nothing about what exists. Framing errors (400, 413, 431...) are still answered as
//! such, before authentication: they depend on the bytes only.
//!
//! The comparison takes the same time for every token of a given length: every byte of the
//! expected token is compared whatever the sent one is, with no early exit on the first
//! difference nor on a length mismatch.

use hv::config::ApiToken;

/// The command-line key of the token ([`hv::config`]).
const TOKEN_KEY: &str = "api_token=";

/// A command-line word as it may be logged: `api_token=<redacted>` for the token, the word
/// itself otherwise. Every line that echoes the command line goes through this (the serial
/// console is often captured to files and CI logs).
pub fn redact(word: &str) -> &str {
    if word.starts_with(TOKEN_KEY) {
        "api_token=<redacted>"
    } else {
        word
    }
}

/// The scheme, compared without regard to case (RFC 9110 §11.1).
const SCHEME: &str = "Bearer";

/// Whether `authorization` (the header's value, if sent) carries `token`.
pub fn authorized(token: &ApiToken, authorization: Option<&str>) -> bool {
    let sent = authorization.and_then(bearer).unwrap_or("");
    // Evaluate both so a missing header costs the same as a wrong one.
    let same = ct_eq(token.as_str().as_bytes(), sent.as_bytes());
    same & authorization.is_some()
}

/// The credentials of a `Bearer` authorization value: `Bearer` (any case), one or more
/// spaces, the token (surrounding whitespace is not part of it).
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim_start_matches(' '))
}

/// Equality of `expected` and `given` in time that depends only on `expected.len()`.
pub fn ct_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        // A missing byte compares against 0 xor its expected value, so it always differs.
        let g = given.get(i).copied().unwrap_or(!*e);
        diff |= e ^ g;
    }
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let t = ApiToken::new("abc123").unwrap();
        assert!(authorized(&t, Some("Bearer abc123")));
        assert!(authorized(&t, Some("bearer   abc123 ")));
        assert!(authorized(&t, Some("BEARER abc123")));
        for bad in [
            "Bearer abc12",
            "Bearer abc1234",
            "Bearer ABC123",
            "Bearerabc123",
            "Basic abc123",
            "Bearer",
            "Bearer ",
            "",
            "abc123",
            "Bearer abc123 x",
            "Bé",
        ] {
            assert!(!authorized(&t, Some(bad)), "{bad}");
        }
        assert!(!authorized(&t, None));
    }

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"", b"a"));
        assert!(!ct_eq(b"a", b""));
        assert!(!ct_eq(b"ab", b"a"));
        assert!(!ct_eq(b"a", b"ab"));
        assert!(ct_eq(b"\0\xff", b"\0\xff"));
        assert!(!ct_eq(b"\0", b"\xff"));
    }

    #[test]
    fn redact_hides_only_the_token() {
        assert_eq!(redact("api_token=s3cret"), "api_token=<redacted>");
        assert_eq!(redact("api_token="), "api_token=<redacted>");
        for kept in ["vm=hello", "port=8080", "xapi_token=a", "api_tokens", "--"] {
            assert_eq!(redact(kept), kept);
        }
    }
}
