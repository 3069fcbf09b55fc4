//! Counts of connections and requests the listeners refused for security reasons, by listener
//! and [`Reason`]: a missing or wrong bearer token, a garbage `authorization` header, a failed
//! TLS handshake, an untrusted client certificate, the wrong protocol for the port.
//!
//! Out: `listener_refusals_total{listener, reason}` on `/metrics` and `Stats.refusals` (only
//! the non-zero counts). Nothing here ever sees or keeps a token.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use telemetry_lake_admin_proto::v1::Refusal;

/// The ports that refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    OtlpGrpc,
    OtlpHttp,
    AdminGrpc,
    AdminHttp,
    /// `admin.health_endpoint`, plain text only.
    Health,
}

impl Listener {
    pub const ALL: [Listener; 5] =
        [Listener::OtlpGrpc, Listener::OtlpHttp, Listener::AdminGrpc, Listener::AdminHttp, Listener::Health];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp_grpc",
            Listener::OtlpHttp => "otlp_http",
            Listener::AdminGrpc => "admin_grpc",
            Listener::AdminHttp => "admin_http",
            Listener::Health => "health",
        }
    }

    /// The config key of its address, for messages.
    pub fn endpoint_key(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp.grpc_endpoint",
            Listener::OtlpHttp => "otlp.http_endpoint",
            Listener::AdminGrpc => "admin.grpc_endpoint",
            Listener::AdminHttp => "admin.http_endpoint",
            Listener::Health => "admin.health_endpoint",
        }
    }

    /// Whether it speaks gRPC (else HTTP/1.1 or HTTP/2 requests of any kind).
    pub fn is_grpc(self) -> bool {
        matches!(self, Listener::OtlpGrpc | Listener::AdminGrpc)
    }
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `authorization` header on a port that requires a token.
    MissingToken,
    /// A well-formed `Bearer` token that is not one of the configured tokens.
    WrongToken,
    /// An `authorization` header that is not `Bearer <token>` (another scheme, no token,
    /// characters a token cannot hold, or the header sent twice).
    MalformedHeader,
    /// Plain text (HTTP/1 or HTTP/2 without TLS) sent to a TLS port.
    PlaintextToTlsPort,
    /// A TLS handshake sent to a plain-text port.
    TlsToPlaintextPort,
    /// A TLS handshake that failed for another reason: no common version or cipher suite, the
    /// client refused our certificate, a timeout.
    TlsHandshake,
    /// A client certificate that does not chain to `client_ca_file`, has expired or is not
    /// valid for client authentication.
    UntrustedClientCertificate,
    /// No client certificate on a port with `client_ca_file`.
    MissingClientCertificate,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::MissingToken,
        Reason::WrongToken,
        Reason::MalformedHeader,
        Reason::PlaintextToTlsPort,
        Reason::TlsToPlaintextPort,
        Reason::TlsHandshake,
        Reason::UntrustedClientCertificate,
        Reason::MissingClientCertificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::WrongToken => "wrong_token",
            Reason::MalformedHeader => "malformed_header",
            Reason::PlaintextToTlsPort => "plaintext_to_tls_port",
            Reason::TlsToPlaintextPort => "tls_to_plaintext_port",
            Reason::TlsHandshake => "tls_handshake",
            Reason::UntrustedClientCertificate => "untrusted_client_certificate",
            Reason::MissingClientCertificate => "missing_client_certificate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Labels {
    listener: &'static str,
    reason: &'static str,
}

/// The refusal counters of one service, shared by its listeners and its admin plane.
pub struct Refusals {
    counts: [[AtomicU64; Reason::ALL.len()]; Listener::ALL.len()],
    family: Family<Labels, Counter>,
}

impl Refusals {
    /// Counters registered as `listener_refusals_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let refusals = Arc::new(Self::unregistered());
        registry.register(
            "listener_refusals",
            "Connections and requests refused by TLS and bearer-token checks, by listener and reason",
            refusals.family.clone(),
        );
        refusals
    }

    /// Counters that no `/metrics` shows (tests, tools).
    pub fn unregistered() -> Self {
        Self { counts: Default::default(), family: Family::default() }
    }

    pub fn count(&self, listener: Listener, reason: Reason) {
        self.counts[listener as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
        self.family.get_or_create(&Labels { listener: listener.as_str(), reason: reason.as_str() }).inc();
    }

    pub fn get(&self, listener: Listener, reason: Reason) -> u64 {
        self.counts[listener as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// The non-zero counts, for `Stats.refusals`.
    pub fn to_proto(&self) -> Vec<Refusal> {
        let mut out = Vec::new();
        for listener in Listener::ALL {
            for reason in Reason::ALL {
                let count = self.get(listener, reason);
                if count > 0 {
                    out.push(Refusal {
                        listener: listener.as_str().into(),
                        reason: reason.as_str().into(),
                        count,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_listener_and_reason_on_metrics_and_stats() {
        let mut registry = Registry::default();
        let refusals = Refusals::register(&mut registry);
        refusals.count(Listener::OtlpGrpc, Reason::WrongToken);
        refusals.count(Listener::OtlpGrpc, Reason::WrongToken);
        refusals.count(Listener::AdminHttp, Reason::PlaintextToTlsPort);
        let stats = refusals.to_proto();
        assert_eq!(stats.len(), 2, "{stats:?}");
        assert_eq!(
            (stats[0].listener.as_str(), stats[0].reason.as_str(), stats[0].count),
            ("otlp_grpc", "wrong_token", 2)
        );
        assert_eq!(
            (stats[1].listener.as_str(), stats[1].reason.as_str(), stats[1].count),
            ("admin_http", "plaintext_to_tls_port", 1)
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"listener_refusals_total{listener="otlp_grpc",reason="wrong_token"} 2"#),
            "{text}"
        );
    }
}
