//! Bearer tokens on a listener group (`otlp.auth` or `admin.auth`).
//!
//! In: every request's `authorization` header. A request passes when it carries exactly one
//! `authorization: Bearer <token>` whose token is one of [`Tokens`], compared in constant time
//! (`subtle`), and reaches the service untouched. Any other request is answered here and never
//! reaches the service, so nothing is staged or produced (an HTTP body is read and dropped
//! first, up to 1 MiB): gRPC `UNAUTHENTICATED`; HTTP 401 with
//! `WWW-Authenticate: Bearer` (OTLP/HTTP: a `google.rpc.Status` body in the request's content
//! type; admin: `{"error": …}`). Each refusal is counted by reason ([`Reason`]); no token is
//! ever logged, counted or echoed.
//!
//! Tokens come from `tokens_file` (one a line; looked at again at most once a second and read
//! again when it changed; a replacement that cannot be read, holds no token or a line that is
//! not a token keeps the previous tokens and logs an error naming the line) and from the
//! environment variable named by `tokens_env` (read at start-up, separated by commas or
//! whitespace). Every token loaded, at start-up or from a changed file, is registered with
//! [`crate::secrets::register`], so no log line or error of this process shows it, whichever
//! library prints it.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use futures::future::{BoxFuture, Either, ready};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prost::Message;
use subtle::{Choice, ConstantTimeEq};

use crate::{
    config::AuthConfig,
    refusals::{Listener, Reason, Refusals},
};

/// How often the tokens file's metadata is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// A token set that could not be loaded at start-up; names the key, never a token.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct AuthError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Whether `token` is an RFC 6750 `b64token`: what a bearer token may hold.
fn is_token(token: &[u8]) -> bool {
    let body = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body > 0 && token[..body].iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The tokens of a file: one a line, blank lines and `#` comments skipped.
fn parse_file(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !is_token(line.as_bytes()) {
            return Err(format!(
                "line {} is not a bearer token (letters, digits, - . _ ~ + / and trailing =)",
                n + 1
            ));
        }
        tokens.push(line.as_bytes().to_vec());
    }
    if tokens.is_empty() {
        return Err("holds no token".into());
    }
    Ok(tokens)
}

/// Hides `tokens` in every log line and error of this process from now on.
fn register(tokens: &[Vec<u8>]) {
    // Tokens are ASCII (`is_token`).
    crate::secrets::register(tokens.iter().map(|t| String::from_utf8_lossy(t).into_owned()));
}

type Fingerprint = Option<(SystemTime, u64, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

struct FileState {
    seen: Fingerprint,
    looked: Instant,
    tokens: Arc<Vec<Vec<u8>>>,
}

/// The valid tokens of one listener group.
pub struct Tokens {
    /// `otlp.auth` or `admin.auth`, for messages.
    key: &'static str,
    file: Option<PathBuf>,
    from_env: Vec<Vec<u8>>,
    file_state: Mutex<FileState>,
    recheck: Duration,
}

impl Tokens {
    /// Reads the tokens of `config`; fails when none can be had.
    pub fn load(key: &'static str, config: &AuthConfig) -> Result<Self, AuthError> {
        Self::load_with(key, config, RECHECK)
    }

    fn load_with(key: &'static str, config: &AuthConfig, recheck: Duration) -> Result<Self, AuthError> {
        let mut from_env = Vec::new();
        if let Some(name) = &config.tokens_env {
            let err = |reason: &str| AuthError {
                key: format!("{key}.tokens_env"),
                value: format!("{name:?}"),
                reason: reason.into(),
            };
            let value = std::env::var(name).map_err(|_| err("the environment variable is not set"))?;
            for token in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
                if !is_token(token.as_bytes()) {
                    return Err(err(
                        "holds something that is not a bearer token (letters, digits, - . _ ~ + / and \
                         trailing =, separated by commas or whitespace)",
                    ));
                }
                from_env.push(token.as_bytes().to_vec());
            }
            if from_env.is_empty() {
                return Err(err("holds no token"));
            }
            register(&from_env);
        }
        let mut file_tokens = Vec::new();
        let seen = match &config.tokens_file {
            None => None,
            Some(path) => {
                let err = |reason: String| AuthError {
                    key: format!("{key}.tokens_file"),
                    value: format!("{:?}", path.display().to_string()),
                    reason,
                };
                let seen = fingerprint(path);
                let text = fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
                file_tokens = parse_file(&text).map_err(err)?;
                register(&file_tokens);
                seen
            }
        };
        if config.tokens_file.is_none() && config.tokens_env.is_none() {
            return Err(AuthError {
                key: key.into(),
                value: "{}".into(),
                reason: "set tokens_file or tokens_env (or leave the section out for no tokens)".into(),
            });
        }
        Ok(Self {
            key,
            file: config.tokens_file.clone(),
            from_env,
            file_state: Mutex::new(FileState { seen, looked: Instant::now(), tokens: Arc::new(file_tokens) }),
            recheck,
        })
    }

    /// The file's tokens, read again first if it changed.
    fn file_tokens(&self) -> Arc<Vec<Vec<u8>>> {
        let mut state = self.file_state.lock().expect("tokens lock");
        if let Some(path) = &self.file
            && state.looked.elapsed() >= self.recheck
        {
            state.looked = Instant::now();
            let now = fingerprint(path);
            if now != state.seen {
                state.seen = now;
                let loaded = fs::read_to_string(path)
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|t| parse_file(&t));
                match loaded {
                    Ok(tokens) => {
                        register(&tokens);
                        tracing::info!(
                            key = self.key,
                            count = tokens.len(),
                            "auth: tokens file changed, reloaded"
                        );
                        state.tokens = Arc::new(tokens);
                    }
                    Err(reason) => tracing::error!(
                        key = self.key, file = %path.display(), %reason,
                        "auth: tokens file changed but cannot be used, keeping the previous tokens"
                    ),
                }
            }
        }
        Arc::clone(&state.tokens)
    }

    /// Whether `given` is one of the tokens; every token is compared, in constant time.
    fn contains(&self, given: &[u8]) -> bool {
        let file = self.file_tokens();
        let mut found = Choice::from(0);
        for token in file.iter().chain(&self.from_env) {
            found |= token.as_slice().ct_eq(given);
        }
        found.into()
    }

    /// Checks a request's headers: `Ok` when it carries one valid bearer token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Reason> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(Reason::MissingToken)?;
        if values.next().is_some() {
            return Err(Reason::MalformedHeader);
        }
        let (scheme, token) = value
            .as_bytes()
            .split_at(value.as_bytes().iter().position(|&b| b == b' ').ok_or(Reason::MalformedHeader)?);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Reason::MalformedHeader);
        }
        let token = token.trim_ascii();
        if !is_token(token) {
            return Err(Reason::MalformedHeader);
        }
        if self.contains(token) { Ok(()) } else { Err(Reason::WrongToken) }
    }
}

/// What the client is told, for each reason.
fn message(reason: Reason) -> &'static str {
    match reason {
        Reason::MissingToken => "missing bearer token: send the header `authorization: Bearer <token>`",
        Reason::WrongToken => "invalid bearer token",
        _ => "malformed authorization header: expected one `authorization: Bearer <token>`",
    }
}

/// A refusal in the protocol of the port: answered by [`RequireToken`].
pub trait RefusalBody: Sized {
    /// Whether the request body is read (up to 1 MiB, 2 s) before the refusal is sent.
    const DRAIN: bool;
    fn refusal(listener: Listener, reason: Reason, request: &HeaderMap) -> http::Response<Self>;
}

/// At most this much of a refused HTTP request's body is read and dropped before the answer,
/// for at most [`DRAIN_TIME`]: answered while its body is unread, an HTTP/2 request gets a
/// `RST_STREAM` that some clients report instead of the 401 (curl: "Stream error in the HTTP/2
/// framing layer", one time in five), and an HTTP/1.1 connection is closed under a client
/// still writing.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

pub(crate) async fn drain<B: http_body::Body>(body: B) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while read <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, bytes::Buf::remaining),
                _ => break,
            }
        }
    })
    .await;
}

/// gRPC: `UNAUTHENTICATED`, trailers only.
impl RefusalBody for tonic::body::Body {
    // gRPC clients take a trailers-only answer to a request still being sent.
    const DRAIN: bool = false;

    fn refusal(_: Listener, reason: Reason, _: &HeaderMap) -> http::Response<Self> {
        tonic::Status::unauthenticated(message(reason)).into_http()
    }
}

/// HTTP: 401 with `WWW-Authenticate: Bearer`; the body as the port answers errors.
impl RefusalBody for axum::body::Body {
    const DRAIN: bool = true;

    fn refusal(listener: Listener, reason: Reason, request: &HeaderMap) -> http::Response<Self> {
        let message = message(reason);
        let protobuf = request
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-protobuf"));
        let (content_type, body) = if listener == Listener::OtlpHttp && protobuf {
            let status = tonic_types::Status {
                code: tonic::Code::Unauthenticated as i32,
                message: message.into(),
                details: Vec::new(),
            };
            ("application/x-protobuf", axum::body::Body::from(status.encode_to_vec()))
        } else if listener == Listener::OtlpHttp {
            let json = serde_json::json!({ "code": tonic::Code::Unauthenticated as i32, "message": message });
            ("application/json", axum::body::Body::from(json.to_string()))
        } else {
            ("application/json", axum::body::Body::from(serde_json::json!({ "error": message }).to_string()))
        };
        let challenge = match reason {
            Reason::MissingToken => r#"Bearer realm="telemetry-lake""#,
            Reason::WrongToken => r#"Bearer realm="telemetry-lake", error="invalid_token""#,
            _ => r#"Bearer realm="telemetry-lake", error="invalid_request""#,
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// The token check of one port, shared by its connections.
#[derive(Clone)]
pub struct Guard {
    pub tokens: Arc<Tokens>,
    pub refusals: Arc<Refusals>,
    pub listener: Listener,
}

/// A tower layer requiring a token on every request (tonic `Server::layer`, axum
/// `Router::layer`); without a guard it passes everything through.
#[derive(Clone)]
pub struct RequireTokenLayer {
    guard: Option<Guard>,
}

impl RequireTokenLayer {
    pub fn new(guard: Option<Guard>) -> Self {
        Self { guard }
    }
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken { inner, guard: self.guard.clone() }
    }
}

#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    guard: Option<Guard>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequireToken<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    R: RefusalBody + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(guard) = &self.guard
            && let Err(reason) = guard.tokens.check(request.headers())
        {
            guard.refusals.count(guard.listener, reason);
            tracing::debug!(listener = guard.listener.as_str(), reason = reason.as_str(), "request refused");
            let refusal = R::refusal(guard.listener, reason, request.headers());
            if !R::DRAIN {
                return Either::Left(Box::pin(ready(Ok(refusal))));
            }
            return Either::Left(Box::pin(async move {
                drain(request.into_body()).await;
                Ok(refusal)
            }));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        map
    }

    fn file_tokens(dir: &Path, text: &str) -> Tokens {
        let path = dir.join("tokens");
        fs::write(&path, text).unwrap();
        let config = AuthConfig { tokens_file: Some(path), tokens_env: None };
        Tokens::load_with("otlp.auth", &config, Duration::ZERO).unwrap()
    }

    #[test]
    fn only_one_well_formed_known_bearer_token_passes() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = file_tokens(dir.path(), "# ingest clients\nalpha-1\n\n  beta/2==  \n");
        assert_eq!(tokens.check(&headers(&["Bearer alpha-1"])), Ok(()));
        assert_eq!(tokens.check(&headers(&["bearer beta/2=="])), Ok(()), "the scheme is case-insensitive");
        assert_eq!(tokens.check(&headers(&[])), Err(Reason::MissingToken));
        assert_eq!(tokens.check(&headers(&["Bearer alpha-2"])), Err(Reason::WrongToken));
        assert_eq!(tokens.check(&headers(&["Bearer alpha-"])), Err(Reason::WrongToken), "a prefix is wrong");
        assert_eq!(tokens.check(&headers(&["Bearer alpha-1x"])), Err(Reason::WrongToken));
        assert_eq!(tokens.check(&headers(&["Bearer # ingest clients"])), Err(Reason::MalformedHeader));
        for garbage in
            ["alpha-1", "Basic YWxwaGEtMQ==", "Bearer", "Bearer ", "Bearer a b", "Bearer x\ty", "Bearer ==="]
        {
            assert_eq!(tokens.check(&headers(&[garbage])), Err(Reason::MalformedHeader), "{garbage:?}");
        }
        let non_ascii = {
            let mut map = HeaderMap::new();
            map.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xffalpha-1").unwrap());
            map
        };
        assert_eq!(tokens.check(&non_ascii), Err(Reason::MalformedHeader));
        assert_eq!(
            tokens.check(&headers(&["Bearer alpha-1", "Bearer alpha-1"])),
            Err(Reason::MalformedHeader),
            "two headers are refused rather than one picked"
        );
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = file_tokens(dir.path(), "first\n");
        let path = dir.path().join("tokens");
        assert_eq!(tokens.check(&headers(&["Bearer first"])), Ok(()));

        fs::write(path.with_extension("new"), "second\n").unwrap();
        fs::rename(path.with_extension("new"), &path).unwrap();
        assert_eq!(tokens.check(&headers(&["Bearer second"])), Ok(()), "the new token is valid");
        assert_eq!(tokens.check(&headers(&["Bearer first"])), Err(Reason::WrongToken), "the old one is not");

        for broken in ["", "# nothing\n", "third\nnot a token\n"] {
            fs::write(path.with_extension("new"), broken).unwrap();
            fs::rename(path.with_extension("new"), &path).unwrap();
            assert_eq!(tokens.check(&headers(&["Bearer second"])), Ok(()), "{broken:?} keeps the tokens");
            assert_eq!(tokens.check(&headers(&["Bearer third"])), Err(Reason::WrongToken));
        }
        fs::remove_file(&path).unwrap();
        assert_eq!(tokens.check(&headers(&["Bearer second"])), Ok(()), "a deleted file keeps the tokens");
    }

    #[test]
    fn tokens_from_the_environment_and_start_up_errors() {
        // A name no other test sets, outside TELEMETRY_LAKE_ (which config tests read as keys).
        let name = "LAKE_AUTH_TEST_TOKENS_8d1f";
        // SAFETY: only this test uses this variable.
        unsafe { std::env::set_var(name, "env-one, env-two\nenv-three") };
        let config = AuthConfig { tokens_file: None, tokens_env: Some(name.into()) };
        let tokens = Tokens::load("admin.auth", &config).unwrap();
        for token in ["env-one", "env-two", "env-three"] {
            assert_eq!(tokens.check(&headers(&[&format!("Bearer {token}")])), Ok(()));
        }
        assert_eq!(tokens.check(&headers(&["Bearer env-four"])), Err(Reason::WrongToken));

        let unset = AuthConfig { tokens_file: None, tokens_env: Some("LAKE_AUTH_TEST_UNSET_7c2a".into()) };
        let err = Tokens::load("admin.auth", &unset).err().unwrap().to_string();
        assert!(err.starts_with("admin.auth.tokens_env = ") && err.contains("not set"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "good\nsecret value with spaces\n").unwrap();
        let bad = AuthConfig { tokens_file: Some(path), tokens_env: None };
        let err = Tokens::load("otlp.auth", &bad).err().unwrap().to_string();
        assert!(err.contains("line 2 is not a bearer token"), "{err}");
        assert!(!err.contains("secret value"), "the error shows no token: {err}");

        let err = Tokens::load("otlp.auth", &AuthConfig::default()).err().unwrap().to_string();
        assert!(err.contains("set tokens_file or tokens_env"), "{err}");
    }

    #[test]
    fn every_loaded_token_is_hidden_in_log_lines_and_errors() {
        use std::io::Write;

        let name = "LAKE_AUTH_TEST_REDACT_5e0b";
        // SAFETY: only this test uses this variable.
        unsafe { std::env::set_var(name, "env-Redact-Tok1, env-Redact-Tok2") };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "file-Redact-Tok3\n").unwrap();
        let config = AuthConfig { tokens_file: Some(path.clone()), tokens_env: Some(name.into()) };
        let tokens = Tokens::load_with("otlp.auth", &config, Duration::ZERO).unwrap();
        // A token that only arrives with a rotated file.
        fs::write(path.with_extension("new"), "file-Redact-Tok4\n").unwrap();
        fs::rename(path.with_extension("new"), &path).unwrap();
        assert_eq!(tokens.check(&headers(&["Bearer file-Redact-Tok4"])), Ok(()));

        // What the tracing subscriber writes for a library that logs the header.
        let mut out = crate::secrets::RedactedWriter(Vec::new());
        out.write_all(
            b"authorization: Bearer env-Redact-Tok1 / env-Redact-Tok2 / file-Redact-Tok3 / file-Redact-Tok4\n",
        )
        .unwrap();
        assert_eq!(String::from_utf8(out.0).unwrap(), "authorization: Bearer *** / *** / *** / ***\n");
        assert_eq!(
            crate::secrets::Redactor::default().redact("error: token file-Redact-Tok4 refused"),
            "error: token *** refused"
        );
    }

    /// The layer in front of the real receivers: refused requests never reach the exporter.
    #[tokio::test]
    async fn the_layer_refuses_before_the_receivers_and_counts() {
        use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
        use prometheus_client::registry::Registry;
        use tower::ServiceExt;

        use crate::{
            config::OtlpConfig,
            otlp::{ReceiverMetrics, test_support::*},
        };

        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(file_tokens(dir.path(), "sesame\n"));
        let refusals = Arc::new(Refusals::unregistered());
        let guard = |listener| {
            RequireTokenLayer::new(Some(Guard {
                tokens: Arc::clone(&tokens),
                refusals: Arc::clone(&refusals),
                listener,
            }))
        };
        let exporter = MockExporter::ok();
        let metrics = ReceiverMetrics::register(&mut Registry::default());

        // gRPC: UNAUTHENTICATED without the token, served with it.
        let service = crate::otlp::grpc::service::<crate::otlp::Logs, _>(
            Arc::clone(&exporter),
            &OtlpConfig::default(),
            Arc::clone(&metrics),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(guard(Listener::OtlpGrpc))
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = LogsServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let status = client.export(request(2)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("missing bearer token"), "{status:?}");
        let mut wrong = tonic::Request::new(request(2));
        wrong.metadata_mut().insert("authorization", "Bearer sesam".parse().unwrap());
        let status = client.export(wrong).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (tonic::Code::Unauthenticated, "invalid bearer token"));
        assert!(exporter.received().is_empty(), "nothing refused reaches the exporter");
        let mut right = tonic::Request::new(request(2));
        right.metadata_mut().insert("authorization", "Bearer sesame".parse().unwrap());
        client.export(right).await.expect("the right token is served");
        assert_eq!(exporter.received().len(), 1);
        assert_eq!(refusals.get(Listener::OtlpGrpc, Reason::MissingToken), 1);
        assert_eq!(refusals.get(Listener::OtlpGrpc, Reason::WrongToken), 1);

        // OTLP/HTTP: 401 with a google.rpc.Status in the request's content type.
        let router = crate::otlp::http::router::<crate::otlp::Logs, _>(
            Arc::clone(&exporter),
            &OtlpConfig::default(),
            metrics,
        )
        .layer(guard(Listener::OtlpHttp));
        let post = |auth: Option<&str>, content_type: &str| {
            let mut builder = http::Request::post("/v1/logs").header(header::CONTENT_TYPE, content_type);
            if let Some(auth) = auth {
                builder = builder.header(header::AUTHORIZATION, auth);
            }
            builder.body(axum::body::Body::from(request(1).encode_to_vec())).unwrap()
        };
        let response =
            router.clone().oneshot(post(Some("Basic c2VzYW1l"), "application/x-protobuf")).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let status = tonic_types::Status::decode(body).unwrap();
        assert_eq!(status.code, tonic::Code::Unauthenticated as i32);
        assert!(status.message.contains("malformed authorization header"), "{status:?}");
        let response = router.clone().oneshot(post(None, "application/json")).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], 16, "{json}");
        assert_eq!(exporter.received().len(), 1, "still nothing more exported");
        // The refused request's body is read before the answer (see DRAIN_LIMIT).
        let read_to_end = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&read_to_end);
        let chunks = futures::StreamExt::chain(
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(request(1).encode_to_vec()))]),
            futures::stream::once(async move {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(bytes::Bytes::new())
            }),
        );
        let streamed = http::Request::post("/v1/logs")
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(axum::body::Body::from_stream(chunks))
            .unwrap();
        assert_eq!(router.clone().oneshot(streamed).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        assert!(read_to_end.load(std::sync::atomic::Ordering::SeqCst), "the body was drained before the 401");
        let response = router.oneshot(post(Some("Bearer sesame"), "application/x-protobuf")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(exporter.received().len(), 2);
        assert_eq!(refusals.get(Listener::OtlpHttp, Reason::MalformedHeader), 1);
        assert_eq!(refusals.get(Listener::OtlpHttp, Reason::MissingToken), 2);
    }
}
