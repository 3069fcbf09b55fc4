//! The system under test: an `appender` process in embedded mode, in its own temp dir on free
//! 127.0.0.1 ports, configured only through `TELEMETRY_LAKE_*` variables.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use telemetry_lake_admin_proto::v1::{
    AppenderStats, FlushRequest, FlushResponse, StatsRequest, StatsResponse, admin_client::AdminClient,
    stats_response::Service,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Channel;

/// The addresses an appender listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub admin_grpc: SocketAddr,
    pub admin_http: SocketAddr,
}

impl Ports {
    /// Four ports the kernel hands out now (released again, so the appender can take them).
    pub fn free() -> anyhow::Result<Self> {
        let listeners = (0..4)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot find free ports")?;
        let addr = |i: usize| listeners[i].local_addr();
        Ok(Self { otlp_grpc: addr(0)?, otlp_http: addr(1)?, admin_grpc: addr(2)?, admin_http: addr(3)? })
    }
}

/// A running appender; killed on drop if [`Appender::stop`] was not called.
pub struct Appender {
    child: Child,
    pub ports: Ports,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Appender {
    /// Starts `binary` with its staging file, catalog and warehouse under `dir`; `extra` are more
    /// `TELEMETRY_LAKE_*` settings (they win over the defaults here).
    pub fn start(binary: &Path, dir: &Path, extra: &[(String, String)]) -> anyhow::Result<Self> {
        let ports = Ports::free()?;
        let log = dir.join("appender.log");
        let stderr = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        for (key, _) in
            std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("TELEMETRY_LAKE_"))
        {
            command.env_remove(key);
        }
        for (key, value) in settings(dir, &ports).into_iter().chain(extra.iter().cloned()) {
            command.env(key, value);
        }
        if let Some(lib) = std::env::var_os("DUCKDB_LIB_DIR") {
            let mut paths = vec![PathBuf::from(lib)];
            paths.extend(std::env::var_os("LD_LIBRARY_PATH").iter().flat_map(std::env::split_paths));
            command.env("LD_LIBRARY_PATH", std::env::join_paths(paths)?);
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self { child, ports, dir: dir.to_path_buf(), log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /readyz` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("appender exited during start-up ({status}); see {}", self.log.display());
            }
            if http_status(self.ports.admin_http, "/readyz").await.ok() == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("appender not ready after {timeout:?}; see {}", self.log.display())
    }

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let endpoint = format!("http://{}", self.ports.admin_grpc);
        AdminClient::connect(endpoint).await.context("cannot connect to the admin gRPC port")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid this process spawned and still owns (not yet reaped).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("cannot signal the appender: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("appender still running {timeout:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn settings(dir: &Path, ports: &Ports) -> Vec<(String, String)> {
    let dir = dir.display();
    [
        ("OTLP__GRPC_ENDPOINT", ports.otlp_grpc.to_string()),
        ("OTLP__HTTP_ENDPOINT", ports.otlp_http.to_string()),
        ("ADMIN__GRPC_ENDPOINT", ports.admin_grpc.to_string()),
        ("ADMIN__HTTP_ENDPOINT", ports.admin_http.to_string()),
        ("STAGING__PATH", format!("{dir}/staging.duckdb")),
        ("ICEBERG__CATALOG_URI", format!("sqlite://{dir}/catalog.db")),
        ("ICEBERG__WAREHOUSE", format!("{dir}/warehouse")),
        ("LOG__FORMAT", "json".to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (format!("TELEMETRY_LAKE_{key}"), value))
    .collect()
}

/// Status code of a plain HTTP/1.1 GET.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..read]);
    let code = line.split_whitespace().nth(1).context("no HTTP status line")?;
    Ok(code.parse()?)
}

/// `Stats`, as one call.
pub async fn stats(admin: &mut AdminClient<Channel>) -> anyhow::Result<StatsResponse> {
    Ok(admin.stats(StatsRequest {}).await?.into_inner())
}

/// The appender's own section of `stats` (zeros when the answer has none).
pub fn totals(stats: &StatsResponse) -> AppenderStats {
    match &stats.service {
        Some(Service::Appender(totals)) => totals.clone(),
        _ => AppenderStats::default(),
    }
}

/// `Flush`, as one call.
pub async fn flush(admin: &mut AdminClient<Channel>) -> anyhow::Result<FlushResponse> {
    Ok(admin.flush(FlushRequest {}).await?.into_inner())
}

/// What the appender's log says about its flushes (`"message":"flushed"` JSON lines).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FlushLog {
    pub flushes: u64,
    pub records: u64,
    pub seconds_total: f64,
    pub seconds_max: f64,
    pub triggers: Vec<String>,
}

impl FlushLog {
    /// The flushes logged in `log`, but the first `skip` of them.
    pub fn read(log: &Path, skip: u64) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut out = Self::default();
        let flushed = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|value| value["message"] == "flushed");
        for value in flushed.skip(usize::try_from(skip).unwrap_or(usize::MAX)) {
            let seconds = value["seconds"].as_f64().unwrap_or_default();
            out.flushes += 1;
            out.records += value["records"].as_u64().unwrap_or_default();
            out.seconds_total += seconds;
            out.seconds_max = out.seconds_max.max(seconds);
            out.triggers.push(value["trigger"].as_str().unwrap_or("?").to_string());
        }
        out
    }

    /// Records a second of flushing commits.
    pub fn records_per_second(&self) -> f64 {
        if self.seconds_total > 0.0 { self.records as f64 / self.seconds_total } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_log_sums_flushed_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(
            &log,
            concat!(
                r#"{"message":"flushed","records":10,"seconds":0.5,"trigger":"interval"}"#,
                "\n",
                r#"{"message":"staging opened"}"#,
                "\nnot json\n",
                r#"{"message":"flushed","records":30,"seconds":1.5,"trigger":"admin"}"#,
                "\n"
            ),
        )
        .unwrap();
        let read = FlushLog::read(&log, 0);
        assert_eq!((read.flushes, read.records), (2, 40));
        assert_eq!(FlushLog::read(&log, 1).triggers, ["admin"]);
        assert_eq!(read.seconds_max, 1.5);
        assert_eq!(read.records_per_second(), 20.0);
        assert_eq!(read.triggers, ["interval", "admin"]);
    }

    #[test]
    fn settings_point_everything_into_the_dir() {
        let ports = Ports::free().unwrap();
        let all = settings(Path::new("/t"), &ports);
        assert!(all.iter().all(|(k, _)| k.starts_with("TELEMETRY_LAKE_")));
        assert!(
            all.iter()
                .any(|(k, v)| k == "TELEMETRY_LAKE_ICEBERG__CATALOG_URI" && v == "sqlite:///t/catalog.db")
        );
    }
}
