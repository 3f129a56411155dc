//! Bearer-token guard for the optional TCP listener.
//!
//! The unix socket is protected by its file mode and group; a TCP port has no such
//! owner, so every request on it must carry `Authorization: Bearer <token>` with the
//! token from `control.token_file`. The comparison is constant-time, and the token
//! never appears in logs, errors or `Debug` output.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ControlError;
use super::wire::ErrorBody;

/// The shared secret of the TCP listener.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token file; surrounding whitespace (a trailing newline) is not part
    /// of the token. An empty file is an error: it would let anyone in.
    pub fn read(path: &Path) -> Result<Token, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControlError::TokenRead {
            path: path.to_owned(),
            source,
        })?;
        Token::new(&text).ok_or_else(|| ControlError::TokenEmpty {
            path: path.to_owned(),
        })
    }

    /// A token from its text (trimmed); `None` when nothing is left.
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Token(Arc::from(secret.as_bytes())))
    }

    /// Whether an `Authorization` header carries this token as a bearer token.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, presented)) = value.split_first_chunk::<7>() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(presented.ct_eq(&self.0))
    }
}

/// Wraps a router so that every request needs the bearer token (401 otherwise).
pub fn require_token(router: Router, token: Token) -> Router {
    router.layer(middleware::from_fn_with_state(token, check))
}

async fn check(State(token): State<Token>, request: Request, next: Next) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    let body = ErrorBody {
        error: "missing or wrong bearer token (see control.token_file)".to_owned(),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).expect("valid header")
    }

    #[test]
    fn admits_only_the_exact_bearer_token() {
        let t = Token::new("s3cret\n").expect("non-empty");
        assert!(t.admits(Some(&header("Bearer s3cret"))));
        assert!(t.admits(Some(&header("bearer s3cret"))));
        assert!(!t.admits(Some(&header("Bearer s3cre"))));
        assert!(!t.admits(Some(&header("Bearer s3cret2"))));
        assert!(!t.admits(Some(&header("Basic s3cret"))));
        assert!(!t.admits(Some(&header("Bearer"))));
        assert!(!t.admits(None));
    }

    #[test]
    fn empty_tokens_are_refused_and_never_printed() {
        assert!(Token::new(" \n").is_none());
        let t = Token::new("hunter2").expect("non-empty");
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
