//! `${env:NAME}` and `${file:/path}` in configuration values, as in the OpenTelemetry
//! Collector's configuration (its confmap `env` and `file` providers), so a secret can live in an
//! environment variable or a file (a Kubernetes Secret mounted as one) instead of the config.
//!
//! In: the merged configuration (defaults < TOML file < `TELEMETRY_LAKE_*` variables), before it
//! is turned into [`crate::config::Config`]. Out: the same configuration with every reference in
//! every string value replaced, and every secret in it registered with
//! [`crate::secrets::register`], so no log line, error or stats output shows it.
//!
//! - `${env:NAME}` is the variable's value; `${env:NAME:-default}` gives `default` when it is
//!   unset or empty. An unset variable without a default is an error.
//! - `${file:PATH}` is the file's content, with trailing line breaks trimmed (`echo` and
//!   `kubectl create secret --from-file` leave one). A missing or unreadable file is an error.
//! - `$$` is a literal `$` (`$${env:X}` is the text `${env:X}`); a `$` before anything else stays.
//! - References may sit inside text (`"Bearer ${file:/run/token}"`); what they bring in is not
//!   expanded again. Any other `${...}` is an error, so a typo never passes as a literal.
//!
//! Errors name the key and the reference, never a value. Every string of a secret-looking key
//! (see [`crate::secrets::is_secret_key`]) is registered as a secret, whether it came from a
//! reference or was written in the config, and so is the password of any `scheme://user:pass@…`.

use std::path::Path;

use figment::{
    Figment,
    providers::Serialized,
    value::{Dict, Value},
};

use crate::{config::ConfigError, secrets};

/// Expands the references in every string of `figment`, registers the secrets it holds, and
/// returns it with the expanded values merged over the originals.
pub fn resolve(figment: Figment) -> Result<Figment, ConfigError> {
    let merged: Dict = figment.extract().map_err(Box::new)?;
    let env = |name: &str| std::env::var(name).ok();
    let changes = expand_dict("", &merged, &env)?;
    let figment = if changes.is_empty() { figment } else { figment.merge(Serialized::defaults(changes)) };
    let resolved: Dict = figment.extract().map_err(Box::new)?;
    let mut found = Vec::new();
    collect_secrets("", &Value::from(resolved), false, &mut found);
    secrets::register(found);
    secrets::register_environment();
    Ok(figment)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

/// The changed values of `dict` (nested dicts hold only their changed keys).
fn expand_dict(prefix: &str, dict: &Dict, env: &dyn Fn(&str) -> Option<String>) -> Result<Dict, ConfigError> {
    let mut changes = Dict::new();
    for (key, value) in dict {
        if let Some(expanded) = expand_value(&join(prefix, key), value, env)? {
            changes.insert(key.clone(), expanded);
        }
    }
    Ok(changes)
}

/// `value` with its references expanded, or `None` when it holds none.
fn expand_value(
    key: &str,
    value: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Value>, ConfigError> {
    match value {
        Value::String(_, text) => Ok(expand(key, text, env)?.map(Value::from)),
        Value::Dict(_, dict) => {
            let changes = expand_dict(key, dict, env)?;
            Ok((!changes.is_empty()).then(|| Value::from(changes)))
        }
        Value::Array(_, items) => {
            let mut changed = false;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match expand_value(&format!("{key}[{i}]"), item, env)? {
                    Some(expanded) => {
                        changed = true;
                        out.push(expanded);
                    }
                    None => out.push(item.clone()),
                }
            }
            Ok(changed.then(|| Value::from(out)))
        }
        _ => Ok(None),
    }
}

fn refused(key: &str, reference: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), value: format!("{reference:?}"), reason: reason.into() }
}

/// `text` with its references expanded, or `None` when it has no `$` to expand. `key` names the
/// value in errors.
pub fn expand(
    key: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(refused(
                    key,
                    &rest[at..],
                    "has a ${ without its closing }: write ${env:NAME} or ${file:/path}, or $$ for a literal $",
                ));
            };
            let reference = &rest[at..at + end + 3];
            out.push_str(&resolve_reference(key, reference, &inner[..end], env)?);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The value of one reference, `body` being what stands between `${` and `}`.
fn resolve_reference(
    key: &str,
    reference: &str,
    body: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    match body.split_once(':') {
        Some(("env", spec)) => {
            let (name, default) = match spec.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (spec, None),
            };
            if !valid_env_name(name) {
                return Err(refused(
                    key,
                    reference,
                    format!("{name:?} is not an environment variable name (letters, digits and _)"),
                ));
            }
            match (env(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(value), _) => Ok(value),
                (None, Some(default)) => Ok(default.to_string()),
                (None, None) => {
                    Err(refused(key, reference, format!("environment variable {name} is not set")))
                }
            }
        }
        Some(("file", path)) => {
            if path.is_empty() {
                return Err(refused(key, reference, "names no file: write ${file:/path/to/file}"));
            }
            let content = std::fs::read(Path::new(path))
                .map_err(|e| refused(key, reference, format!("cannot read file {path}: {e}")))?;
            let content = String::from_utf8(content)
                .map_err(|_| refused(key, reference, format!("file {path} is not UTF-8 text")))?;
            Ok(content.trim_end_matches(['\n', '\r']).to_string())
        }
        Some((scheme, _)) => Err(refused(
            key,
            reference,
            format!(
                "unknown source {scheme:?}: write ${{env:NAME}} or ${{file:/path}}, or $$ for a literal $"
            ),
        )),
        None => Err(refused(
            key,
            reference,
            format!("names no source: write ${{env:{body}}} or ${{file:/path}}, or $$ for a literal $"),
        )),
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every string under a secret-looking key (`secret_parent`: an ancestor's key was one, e.g. a
/// list of tokens), and the passwords of URIs anywhere. `name` is the key as written, which may
/// hold dots itself (`"s3.secret-access-key"`, `"ssl.key.pem"`).
fn collect_secrets(name: &str, value: &Value, secret_parent: bool, found: &mut Vec<String>) {
    let is_secret = secret_parent || (!name.is_empty() && secrets::is_secret_key(name));
    match value {
        Value::String(_, text) => {
            if is_secret {
                found.push(text.clone());
                // `credential = "client_id:client_secret"`: the secret travels alone too.
                if let Some((_, secret)) = text.split_once(':').filter(|_| name.contains("credential")) {
                    found.push(secret.to_string());
                }
            }
            found.extend(secrets::uri_secrets(text));
        }
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                collect_secrets(k, v, is_secret, found);
            }
        }
        Value::Array(_, items) => {
            for item in items {
                collect_secrets(name, item, is_secret, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
// figment's Jail returns its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("tok-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand("k", text, &env).expect(text).unwrap_or_else(|| text.to_string())
    }

    fn err(text: &str) -> String {
        expand("some.key", text, &env).expect_err(text).to_string()
    }

    #[test]
    fn env_references_expand_anywhere_in_a_value() {
        assert_eq!(ok("${env:TOKEN}"), "tok-123");
        assert_eq!(ok("Bearer ${env:TOKEN}!"), "Bearer tok-123!");
        assert_eq!(ok("${env:TOKEN}${env:TOKEN}"), "tok-123tok-123");
        assert_eq!(ok("${env:MISSING:-fallback}"), "fallback");
        assert_eq!(ok("${env:EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("${env:TOKEN:-fallback}"), "tok-123");
        assert_eq!(ok("${env:EMPTY}"), "", "set but empty is a value");
        assert_eq!(expand("k", "no references", &env).unwrap(), None);
    }

    #[test]
    fn dollars_escape_and_stray_dollars_stay() {
        assert_eq!(ok("pa$$word"), "pa$word");
        assert_eq!(ok("$${env:TOKEN}"), "${env:TOKEN}");
        assert_eq!(ok("$$$${env:TOKEN}"), "$${env:TOKEN}");
        assert_eq!(ok("cost $5 and $"), "cost $5 and $");
        assert_eq!(ok("$$${env:TOKEN}"), "$tok-123");
    }

    #[test]
    fn what_is_brought_in_is_not_expanded_again() {
        let env = |name: &str| (name == "NESTED").then(|| "${env:TOKEN} $$".to_string());
        assert_eq!(expand("k", "${env:NESTED}", &env).unwrap().unwrap(), "${env:TOKEN} $$");
    }

    #[test]
    fn files_are_read_with_their_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t value\n\n").unwrap();
        assert_eq!(ok(&format!("${{file:{}}}", path.display())), "s3cr3t value");
        std::fs::write(&path, "line one\nline two\r\n").unwrap();
        assert_eq!(ok(&format!("x=${{file:{}}};", path.display())), "x=line one\nline two;");
    }

    #[test]
    fn errors_name_the_key_and_the_reference_never_a_value() {
        let e = err("user:${env:NOT_SET_ANYWHERE}");
        assert!(e.contains("some.key") && e.contains("${env:NOT_SET_ANYWHERE}"), "{e}");
        assert!(e.contains("environment variable NOT_SET_ANYWHERE is not set"), "{e}");
        assert!(!e.contains("user:"), "the literal text around a reference is not shown: {e}");

        let e = err("${file:/no/such/dir/secret}");
        assert!(e.contains("some.key") && e.contains("cannot read file /no/such/dir/secret"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let e = err(&format!("${{file:{}}}", dir.path().display()));
        assert!(e.contains("cannot read file"), "a directory is not a file: {e}");

        for (text, expected) in [
            ("${TOKEN}", "names no source: write ${env:TOKEN}"),
            ("${vault:x}", "unknown source \"vault\""),
            ("${env:TOKEN", "without its closing }"),
            ("${env:BAD-NAME}", "is not an environment variable name"),
            ("${file:}", "names no file"),
        ] {
            let e = err(text);
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains("tok-123"), "{e}");
        }
    }

    #[test]
    fn config_values_expand_and_secrets_are_registered() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            jail.create_file("client-secret", "oauth-Client-S3cret\n")?;
            jail.set_env("LAKE_TEST_S3_KEY", "s3-Env-Secret-Key");
            jail.set_env("LAKE_TEST_PARTITIONS", "6");
            jail.set_env("LAKE_TEST_REGION", "eu-north-1");
            jail.create_file(
                "lake.toml",
                &format!(
                    r#"
                    [kafka]
                    partitions = "${{env:LAKE_TEST_PARTITIONS}}"
                    [kafka.producer]
                    "sasl.password" = "literal-Sasl-Pass"
                    [iceberg]
                    catalog_uri = "postgres://lake:pg-Literal-Pass@db/catalog"
                    [iceberg.properties]
                    "s3.secret-access-key" = "${{env:LAKE_TEST_S3_KEY}}"
                    "s3.region" = "${{env:LAKE_TEST_REGION}}"
                    credential = "client-id:${{file:{}/client-secret}}"
                    "#,
                    dir.display()
                ),
            )?;
            jail.set_env("TELEMETRY_LAKE_FLUSH__INTERVAL", "${env:LAKE_TEST_INTERVAL:-7s}");
            let c = crate::config::Config::load(Some(Path::new("lake.toml"))).expect("valid config");
            let get = |k: &str| c.iceberg.properties.get(k).map(String::as_str);
            assert_eq!(get("s3.secret-access-key"), Some("s3-Env-Secret-Key"));
            assert_eq!(get("credential"), Some("client-id:oauth-Client-S3cret"));
            assert_eq!(get("s3.region"), Some("eu-north-1"));
            assert_eq!(c.kafka.partitions, 6, "a whole-value reference fills a number");
            assert_eq!(c.flush.interval, std::time::Duration::from_secs(7), "environment layer too");

            let shown = secrets::Redactor::default().redact(
                "s3-Env-Secret-Key client-id:oauth-Client-S3cret literal-Sasl-Pass pg-Literal-Pass eu-north-1",
            );
            for secret in ["s3-Env-Secret-Key", "oauth-Client-S3cret", "literal-Sasl-Pass", "pg-Literal-Pass"]
            {
                assert!(!shown.contains(secret), "{secret} is not registered: {shown}");
            }
            assert!(shown.contains("eu-north-1"), "a region is no secret: {shown}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_variable_stops_loading_naming_key_and_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "lake.toml",
                "[iceberg.properties]\ntoken = \"${env:LAKE_TEST_UNSET_TOKEN}\"\n",
            )?;
            let e = crate::config::Config::load(Some(Path::new("lake.toml"))).unwrap_err().to_string();
            assert!(
                e.contains("iceberg.properties.token") && e.contains("LAKE_TEST_UNSET_TOKEN is not set"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn secret_looking_keys_are_found_at_any_depth() {
        let mut found = Vec::new();
        let config: Dict =
            figment::Figment::from(figment::providers::Serialized::defaults(serde_json::json!({
                "iceberg": {"properties": {"s3.secret-access-key": "A", "s3.region": "B", "token": "C",
                                       "credential": "id:I"}},
                "kafka": {"consumer": {"sasl.password": "D", "sasl.username": "E", "ssl.key.pem": "H",
                                       "ssl.key.location": "/k.pem"}},
                "otlp": {"auth": {"tokens_file": "/run/tokens", "tokens": ["F", "G"]}},
            })))
            .extract()
            .unwrap();
        collect_secrets("", &Value::from(config), false, &mut found);
        found.sort();
        assert_eq!(
            found,
            ["A", "C", "D", "F", "G", "H", "I", "id:I"],
            "paths of files holding secrets are no secrets"
        );
    }
}
