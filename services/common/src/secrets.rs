//! Secrets never printed: [`Redactor`] replaces every configured secret with `***` in any text
//! on its way to a log line, an error or `Stats`.
//!
//! Secrets are the values of secret-looking `iceberg.properties` (`*secret*`, `*password*`,
//! `*token*`, `*access-key*`, `*credential*`, `*authorization*`, `*key`) and passwords in URIs
//! (`scheme://user:password@host`, secret-looking query parameters).

use crate::settings::IcebergSettings;

/// Replaces secret values (credentials in properties, the catalog URI's password) with `***`.
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
        let mut secrets: Vec<String> = secrets.into_iter().collect();
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// Whether a property holds a secret: credentials, tokens, an `Authorization` header
/// (`header.authorization`), and keys such as `s3.sse.key` (SSE-C) or `adls.account-key`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("key")
        || ["secret", "password", "token", "access-key", "credential", "authorization"]
            .iter()
            .any(|s| key.contains(s))
}

/// The password in `scheme://user:password@host/…` and secret-looking query parameters.
fn uri_secrets(uri: &str) -> Vec<String> {
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
}
