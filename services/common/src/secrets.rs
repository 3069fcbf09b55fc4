//! Secrets never printed: [`Redactor`] replaces every known secret with `***` in any text on its
//! way to an error or `Stats`, and [`redacted_stderr`] does the same to every log line (the
//! tracing subscriber writes through it), whatever library logged it and at whatever level, and
//! [`redact_panics`] to panic reports.
//!
//! Secrets are the values of secret-looking keys anywhere in the configuration ([`is_secret_key`]:
//! `*secret*`, `*password*`, `*token*`, `*access-key*`, `*credential*`, `*authorization*`,
//! `*private*`, `*key`, `*key.pem`, but not a key naming a file, path or location), whether
//! written there or brought in by `${env:…}` / `${file:…}` (see `crate::expand`), passwords in
//! URIs (`scheme://user:password@host`, secret-looking query parameters), and the S3 keys of
//! the standard AWS environment variables. Configuration loading [`register`]s them for the
//! whole process; other code that learns a secret at run time (a token file) registers it too.
//! A configuration that fails to load registers nothing, so before its error is printed
//! [`register_unloaded_config`] registers what its file and variables hold under secret-looking
//! keys, whatever their type (a password written as a bare number shows in the type error).
//! Each is also hidden in its JSON- and Rust-escaped forms, as JSON logs and `Debug` print it.

use std::io::{self, Write};
use std::path::Path;
use std::sync::RwLock;

use figment::{
    Figment,
    providers::{Env, Format, Toml},
    value::{Dict, Value},
};

use crate::settings::IcebergSettings;

/// The secrets of this process, longest first (see [`register`]).
static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Environment variables holding secrets that libraries read themselves: opendal's S3 client
/// takes credentials from them when `iceberg.properties` has none.
pub const SECRET_ENV_VARS: &[&str] = &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Hides each of `secrets` (empty ones are ignored) in every [`Redactor`] and log line of this
/// process from now on.
pub fn register(secrets: impl IntoIterator<Item = String>) {
    let new: Vec<String> = secrets.into_iter().flat_map(|s| variants(&s)).collect();
    if new.is_empty() {
        return;
    }
    let mut registered = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    registered.extend(new);
    normalize(&mut registered);
}

/// Registers the values of [`SECRET_ENV_VARS`] that are set.
pub fn register_environment() {
    register(SECRET_ENV_VARS.iter().filter_map(|name| std::env::var(name).ok()));
}

/// Registers the secrets of a configuration that could not be loaded, so its error can be shown:
/// every value under a secret-looking key in `file` and in the `TELEMETRY_LAKE_*` variables, as
/// text and as a number or list of them (figment's type errors quote a number), and URI
/// passwords. A file that is not valid TOML is read line by line: on each `key = value` line
/// naming a secret-looking key anywhere, the text after the first `=` (a parse error quotes
/// the line). Values holding a `${…}` reference are left alone: errors about one name it.
pub fn register_unloaded_config(file: Option<&Path>) {
    let mut found = Vec::new();
    if let Some(file) = file {
        match Figment::from(Toml::file_exact(file)).extract::<Dict>() {
            Ok(dict) => collect_values("", &Value::from(dict), false, &mut found),
            Err(_) => {
                found.extend(std::fs::read_to_string(file).map(|t| line_secrets(&t)).unwrap_or_default())
            }
        }
    }
    let env = Env::prefixed(crate::config::ENV_PREFIX).ignore(&["CONFIG"]).split("__").lowercase(true);
    if let Ok(dict) = Figment::from(env).extract::<Dict>() {
        collect_values("", &Value::from(dict), false, &mut found);
    }
    for (name, value) in std::env::vars() {
        if let Some(key) = name.strip_prefix(crate::config::ENV_PREFIX)
            && is_secret_key(key)
        {
            found.push(value.trim().to_string());
            found.push(value);
        }
    }
    // A reference is where a secret is, not one: errors about it name it.
    found.retain(|value| !value.contains("${"));
    register(found);
}

/// Every scalar but a boolean under a secret-looking key, as figment's errors print it.
fn collect_values(name: &str, value: &Value, secret_parent: bool, found: &mut Vec<String>) {
    let secret = secret_parent || (!name.is_empty() && is_secret_key(name));
    match value {
        Value::String(_, text) => {
            if secret {
                found.push(text.clone());
            }
            found.extend(uri_secrets(text));
        }
        Value::Char(_, c) if secret => found.push(c.to_string()),
        Value::Num(_, num) if secret => {
            let text = num.to_u128().map(|n| n.to_string()).or_else(|| num.to_i128().map(|n| n.to_string()));
            found.extend(text.or_else(|| num.to_f64().map(|n| n.to_string())));
        }
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                collect_values(k, v, secret, found);
            }
        }
        Value::Array(_, items) => {
            for item in items {
                collect_values(name, item, secret, found);
            }
        }
        _ => {}
    }
}

/// The values on the lines of a broken TOML file that set a secret-looking key (also inside an
/// inline table): the text after the first `=`, and without its quotes.
fn line_secrets(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((_, value)) = line.split_once('=') else { continue };
        // The word before each `=` is a key (`a = …`, `"a.b" = …`, `t = { a = …, b = … }`).
        let mut parts: Vec<&str> = line.split('=').collect();
        parts.pop();
        let names_secret = parts.iter().any(|part| {
            let key = part.trim_end().trim_end_matches(['"', '\'']);
            let word = key.rsplit(|c: char| c.is_whitespace() || "{[,\"'".contains(c)).next().unwrap_or("");
            !word.is_empty() && is_secret_key(word)
        });
        if !names_secret {
            continue;
        }
        let value = value.trim();
        found.push(value.to_string());
        if let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'')
            && let Some(inner) = value[1..].split(quote).next()
        {
            found.push(inner.to_string());
        }
    }
    found
}

/// A secret as given and as JSON, Rust's `Debug` and a URL form (an OAuth2 token request's
/// body) escape it, when that differs.
fn variants(secret: &str) -> Vec<String> {
    if secret.is_empty() {
        return Vec::new();
    }
    let mut out = vec![secret.to_string()];
    let form = form_encoded(secret);
    if form != secret {
        out.push(form);
    }
    let json = serde_json::to_string(secret).unwrap_or_default();
    let debug = format!("{secret:?}");
    for quoted in [json, debug] {
        let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default();
        if !inner.is_empty() && inner != secret {
            out.push(inner.to_string());
        }
    }
    out
}

/// `application/x-www-form-urlencoded`, as reqwest's `form` writes it.
fn form_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(byte as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn normalize(secrets: &mut Vec<String>) {
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
}

fn replace_all(text: &mut String, secrets: &[String]) {
    for secret in secrets {
        if text.contains(secret.as_str()) {
            *text = text.replace(secret.as_str(), "***");
        }
    }
}

/// `text` without any registered secret.
pub fn redact_registered(text: &str) -> String {
    let mut text = text.to_string();
    replace_all(&mut text, &REGISTERED.read().unwrap_or_else(|e| e.into_inner()));
    text
}

/// The tracing subscriber's writer: stderr, each log line written without registered secrets.
pub fn redacted_stderr() -> RedactedWriter<io::Stderr> {
    RedactedWriter(io::stderr())
}

/// Writes each buffer (one formatted log event) with the registered secrets replaced by `***`.
pub struct RedactedWriter<W>(pub W);

impl<W: Write> Write for RedactedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
        if registered.is_empty() {
            drop(registered);
            return self.0.write_all(buf).map(|()| buf.len());
        }
        let mut text = String::from_utf8_lossy(buf).into_owned();
        replace_all(&mut text, &registered);
        drop(registered);
        self.0.write_all(text.as_bytes()).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Makes a panic's report (thread, place, message and, with `RUST_BACKTRACE`, the backtrace) go to
/// stderr without registered secrets, as log lines do: a panic message may quote a value that
/// holds one. Installed once by `crate::telemetry::init`; later calls change nothing.
pub fn redact_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let mut report = format!("thread '{}' {info}\n", thread.name().unwrap_or("<unnamed>"));
            let backtrace = std::backtrace::Backtrace::capture();
            if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
                report.push_str(&format!("stack backtrace:\n{backtrace}\n"));
            } else {
                report.push_str("note: run with `RUST_BACKTRACE=1` to display a backtrace\n");
            }
            let _ = redacted_stderr().write_all(report.as_bytes());
        }));
    });
}

/// Replaces secret values (credentials in properties, the catalog URI's password, and every
/// [`register`]ed secret) with `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Hides the secrets of `[iceberg]`: secret-looking properties and the catalog URI's password.
    pub fn for_iceberg(iceberg: &IcebergSettings) -> Self {
        let mut secrets: Vec<String> =
            iceberg.properties.iter().filter(|(k, _)| is_secret_key(k)).map(|(_, v)| v.clone()).collect();
        secrets.extend(uri_secrets(&iceberg.catalog_uri));
        Self::new(secrets)
    }

    /// Hides each of `secrets` (empty ones are ignored).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().flat_map(|s| variants(&s)).collect();
        normalize(&mut secrets);
        Redactor { secrets }
    }

    /// `text` without this redactor's secrets and without any registered one.
    pub fn redact(&self, text: &str) -> String {
        let mut text = redact_registered(text);
        replace_all(&mut text, &self.secrets);
        text
    }
}

/// Whether a key holds a secret: credentials, tokens, passwords, an `Authorization` header
/// (`header.authorization`), keys such as `s3.sse.key` (SSE-C), `adls.account-key` or
/// `ssl.key.pem`. A key naming where a secret is (`*file`, `*path`, `*location`, `*dir`, `*_env`)
/// is not one: `tokens_file`, `tokens_env`, `ssl.keystore.location`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if ["file", "path", "location", "dir", "_env"].iter().any(|s| key.ends_with(s)) {
        return false;
    }
    key.ends_with("key")
        || key.ends_with("key.pem")
        || ["secret", "password", "token", "access-key", "credential", "authorization", "private"]
            .iter()
            .any(|s| key.contains(s))
}

/// The password in `scheme://user:password@host/…` and secret-looking query parameters.
pub fn uri_secrets(uri: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = uri.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_string());
        }
    }
    if let Some((_, query)) = uri.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && is_secret_key(key)
            {
                secrets.push(value.to_string());
            }
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The child half of the test below: runs only in the process it starts.
    #[test]
    fn panicking_child() {
        let Ok(secret) = std::env::var("TELEMETRY_LAKE_PANIC_SECRET") else { return };
        register([secret.clone()]);
        redact_panics();
        panic!("cannot use the token {secret}");
    }

    #[test]
    fn a_panic_report_shows_no_registered_secret() {
        let secret = "panic-Secret-4711";
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "secrets::tests::panicking_child", "--nocapture", "--test-threads=1"])
            .env("TELEMETRY_LAKE_PANIC_SECRET", secret)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(!child.status.success(), "the child did not panic: {stdout}{stderr}");
        assert!(stderr.contains("cannot use the token ***"), "no redacted panic report: {stderr}");
        assert!(!stderr.contains(secret) && !stdout.contains(secret), "{stdout}{stderr}");
    }

    #[test]
    fn redactor_hides_uri_passwords_and_credentials() {
        let config = crate::config::IcebergConfig {
            catalog_uri: "postgres://lake:pg-Pa55word@db:5432/catalog?sslpassword=ssl-Secret1".into(),
            properties: BTreeMap::from([
                ("s3.secret-access-key".to_string(), "AKsecretVALUE".to_string()),
                ("s3.access-key-id".to_string(), "AKIDVALUE".to_string()),
                ("s3.sse.key".to_string(), "SSEcustomerKEY".to_string()),
                ("header.Authorization".to_string(), "Bearer hdrTOKEN".to_string()),
                ("s3.region".to_string(), "eu-west-1".to_string()),
            ]),
            ..crate::config::IcebergConfig::default()
        };
        let redactor = Redactor::for_iceberg(
            &crate::settings::Settings::from_config(crate::config::Config {
                iceberg: config,
                ..Default::default()
            })
            .unwrap()
            .iceberg,
        );
        let text = "connect postgres://lake:pg-Pa55word@db:5432/catalog?sslpassword=ssl-Secret1 \
                    with AKIDVALUE/AKsecretVALUE in eu-west-1, SSEcustomerKEY, Bearer hdrTOKEN";
        let redacted = redactor.redact(text);
        for secret in
            ["pg-Pa55word", "ssl-Secret1", "AKsecretVALUE", "AKIDVALUE", "SSEcustomerKEY", "hdrTOKEN"]
        {
            assert!(!redacted.contains(secret), "{secret} leaked: {redacted}");
        }
        assert!(
            redacted.contains("postgres://lake:***@db:5432") && redacted.contains("eu-west-1"),
            "{redacted}"
        );
    }

    #[test]
    fn registered_secrets_leave_every_redactor_and_log_line_in_any_escaping() {
        register(["reg-Secret\"quoted\\x".to_string(), "reg-Plain-Token".to_string(), String::new()]);
        let shown = Redactor::default().redact("a reg-Plain-Token b reg-Secret\"quoted\\x c");
        assert_eq!(shown, "a *** b *** c");

        let mut out = RedactedWriter(Vec::new());
        // One log event as the JSON formatter writes it, and as Debug shows the value.
        let line = format!(
            "{{\"token\":{},\"dbg\":{:?},\"plain\":\"reg-Plain-Token\"}}\n",
            serde_json::to_string("reg-Secret\"quoted\\x").unwrap(),
            "reg-Secret\"quoted\\x"
        );
        out.write_all(line.as_bytes()).unwrap();
        let written = String::from_utf8(out.0).unwrap();
        assert_eq!(written, "{\"token\":\"***\",\"dbg\":\"***\",\"plain\":\"***\"}\n");
        // As an OAuth2 token request's form body carries it.
        register(["form/Secret+1 x".to_string()]);
        assert_eq!(
            redact_registered("client_secret=form%2FSecret%2B1+x&scope=catalog"),
            "client_secret=***&scope=catalog"
        );
    }

    #[test]
    fn keys_naming_where_a_secret_is_are_not_secrets() {
        for key in
            ["s3.secret-access-key", "token", "credential", "sasl.password", "ssl.key.pem", "s3.sse.key"]
        {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "tokens_file",
            "tokens_env",
            "key_file",
            "ssl.keystore.location",
            "s3.region",
            "oauth2-server-uri",
            "scope",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }
}
