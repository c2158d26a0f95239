//! The proxy's own OAuth token endpoint, `POST /v1/oauth/token` on the
//! proxy listener — the path and shape of Schwab's, so a client library that
//! refreshes its tokens talks to the proxy and never to Schwab.
//!
//! * Client authentication: HTTP Basic `client_id:client_secret`
//!   (percent-encoded, RFC 6749 §2.3.1), where the client id is the caller
//!   id and the secret is one of the caller's API keys.
//! * `grant_type=client_credentials` starts a session; a caller with a TOTP
//!   secret must add `otp=<6 digits>`, and its session then carries
//!   `context.mfa == true`.
//! * `grant_type=refresh_token&refresh_token=…` rotates the pair; a spent
//!   refresh token presented again revokes its session.
//!
//! Answers: `{"access_token","token_type":"Bearer","expires_in","refresh_token","scope"}`,
//! or an RFC 6749 §5.2 error; `Cache-Control: no-store` either way. Nothing
//! here is forwarded upstream.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{BoxError, ProxyBody, full};
use super::{Proxy, RequestCtx};
use crate::credentials::sessions::{Issued, RefreshError};
use crate::reject::Reject;

pub const TOKEN_PATH: &str = "/v1/oauth/token";
const MAX_FORM_BYTES: usize = 4096;

/// An OAuth error: status, `error`, `error_description`.
struct OAuthError(StatusCode, &'static str, &'static str);

/// Client authentication failed (whatever the reason: nothing to learn).
const INVALID_CLIENT: OAuthError = OAuthError(
    StatusCode::UNAUTHORIZED,
    "invalid_client",
    "client authentication failed",
);

impl Proxy {
    /// Handles the token endpoint. `ctx` gets the caller and session for
    /// the request log, and a rejection code when the grant failed.
    pub(super) async fn token_endpoint<B>(
        &self,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        body: B,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (grant, result) = match self.grant(ctx, parts, body).await {
            Ok((grant, issued)) => (grant, Ok(issued)),
            Err((grant, e)) => (grant, Err(e)),
        };
        let outcome = match &result {
            Ok(_) => "issued",
            Err(OAuthError(_, code, _)) => code,
        };
        self.metrics
            .token_grants
            .with_label_values(&[grant, outcome])
            .inc();
        match result {
            Ok(issued) => {
                ctx.session_id = Some(issued.session_id.clone());
                success(&issued)
            }
            Err(e) => {
                ctx.rejected = Some(Reject::TokenGrant(e.1));
                error(e)
            }
        }
    }

    async fn grant<B>(
        &self,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<(&'static str, Issued), (&'static str, OAuthError)>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let unknown = "unknown";
        let bad = |g, d| (g, OAuthError(StatusCode::BAD_REQUEST, "invalid_request", d));
        if parts.method != http::Method::POST {
            return Err((
                unknown,
                OAuthError(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "invalid_request",
                    "use POST",
                ),
            ));
        }
        if parts.uri.query().is_some() {
            return Err(bad(unknown, "parameters go in the form body, not the URL"));
        }
        let form_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(bad(
                unknown,
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let bytes = super::body::read(
            body,
            &parts.headers,
            MAX_FORM_BYTES,
            self.limits.body_read_timeout.0,
        )
        .await
        .map_err(|_| bad(unknown, "the form could not be read (at most 4096 bytes)"))?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| bad(unknown, "the form is not UTF-8"))?;
        let form = crate::sim::Query::parse(text);
        // RFC 6749 §3.2: parameters must not repeat (counted raw, empty
        // values included).
        let mut names: Vec<&str> = text
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('=').next().unwrap_or(""))
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        if names.len() != all {
            return Err(bad(unknown, "a parameter appears more than once"));
        }
        let grant: &'static str = match form.get("grant_type") {
            Some("client_credentials") => "client_credentials",
            Some("refresh_token") => "refresh_token",
            Some(_) => {
                return Err((
                    unknown,
                    OAuthError(
                        StatusCode::BAD_REQUEST,
                        "unsupported_grant_type",
                        "grant_type must be client_credentials or refresh_token",
                    ),
                ));
            }
            None => return Err(bad(unknown, "grant_type is missing")),
        };

        // Client authentication.
        let invalid_client = (grant, INVALID_CLIENT);
        let (id, secret) = basic_credentials(&parts.headers).ok_or(invalid_client)?;
        let identities = self.identities.load();
        let caller = identities
            .authenticate_client(&id, secret.as_bytes())
            .ok_or((grant, INVALID_CLIENT))?;
        ctx.caller = Some(caller.clone());
        // A client certificate on the connection must not name someone else.
        if let Some(cert) = parts.extensions.get::<crate::server::ClientCert>()
            && identities
                .caller_for_cert(cert)
                .is_some_and(|c| c.id != caller.id)
        {
            return Err((grant, INVALID_CLIENT));
        }

        let full_sessions = (
            grant,
            OAuthError(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "too many sessions; try again later",
            ),
        );
        let issued = match grant {
            "client_credentials" => {
                let mfa = match (&caller.totp, form.get("otp")) {
                    (Some(totp), Some(code)) => {
                        use crate::credentials::totp::Verdict;
                        let now = time::OffsetDateTime::now_utc().unix_timestamp();
                        match self.totp_guard.check(&caller.id, totp, code, now) {
                            Verdict::Accepted => true,
                            Verdict::Refused => {
                                return Err((
                                    grant,
                                    OAuthError(
                                        StatusCode::BAD_REQUEST,
                                        "invalid_grant",
                                        "the one-time code (otp) is wrong, expired or already used",
                                    ),
                                ));
                            }
                            Verdict::LockedOut => {
                                return Err((
                                    grant,
                                    OAuthError(
                                        StatusCode::BAD_REQUEST,
                                        "invalid_grant",
                                        "too many wrong one-time codes; this client's second factor \
                                         is locked for a while",
                                    ),
                                ));
                            }
                        }
                    }
                    (Some(_), None) => {
                        return Err((
                            grant,
                            OAuthError(
                                StatusCode::BAD_REQUEST,
                                "invalid_grant",
                                "this client needs a one-time code: add otp=<6 digits>",
                            ),
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(bad(grant, "this client has no second factor configured"));
                    }
                    (None, None) => false,
                };
                self.sessions.start(&caller.id, mfa).ok_or(full_sessions)?
            }
            _ => {
                let token = form
                    .get("refresh_token")
                    .ok_or(bad(grant, "refresh_token is missing"))?;
                match self.sessions.refresh(&caller.id, token) {
                    Ok(i) => i,
                    Err(RefreshError::Full) => return Err(full_sessions),
                    Err(RefreshError::Invalid) => {
                        return Err((
                            grant,
                            OAuthError(
                                StatusCode::BAD_REQUEST,
                                "invalid_grant",
                                "the refresh token is invalid or expired",
                            ),
                        ));
                    }
                    Err(RefreshError::Reused) => {
                        return Err((
                            grant,
                            OAuthError(
                                StatusCode::BAD_REQUEST,
                                "invalid_grant",
                                "the refresh token was already used; its session is revoked",
                            ),
                        ));
                    }
                }
            }
        };
        // A reload may have taken the key away while this grant ran: the
        // new session must not outlive it.
        if self
            .identities
            .load()
            .authenticate_client(&id, secret.as_bytes())
            .is_none()
        {
            self.sessions.revoke(&issued.session_id);
            return Err((grant, INVALID_CLIENT));
        }
        Ok((grant, issued))
    }
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(h: &http::HeaderMap) -> Option<(String, String)> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        crate::sim::Query::parse(&format!("v={s}"))
            .get("v")
            .map(str::to_owned)
    };
    Some((decode(id)?, decode(secret)?))
}

fn no_store(mut r: Response<ProxyBody>) -> Response<ProxyBody> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn success(i: &Issued) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "access_token": i.access_token,
        "token_type": "Bearer",
        "expires_in": i.expires_in.as_secs(),
        "refresh_token": i.refresh_token,
        "scope": "api",
    });
    no_store(Response::new(full(body.to_string())))
}

fn error(e: OAuthError) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": e.1, "error_description": e.2});
    let mut r = no_store(Response::new(full(body.to_string())));
    *r.status_mut() = e.0;
    if e.0 == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    r
}
