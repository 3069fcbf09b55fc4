"""The integration tests' harness: the processes they run and the small helpers around them.

- `paths`: the checkout, the binaries, libduckdb, `shared/` and its loghub data.
- `wait`: `wait_until`, the one polling loop (instead of fixed sleeps).
- `ports`: free 127.0.0.1 ports, `Ports` (OTLP and admin), port probes.
- `config`: the services' config as TOML or `TELEMETRY_LAKE_*` variables, and child environments.
- `clients`: HTTP and gRPC clients that never use a proxy, the admin protos, Prometheus text.
- `process`: the base classes: `Process` (a child process with a log file) and `ScriptService`
  (a server driven by a `start|wait|stop|kill DIR PORT` script on `lib/service.sh`).
- `lake`: `Appender`, `AppenderFactory`, and the pyiceberg and DuckDB readers of its table.
- `kafka`: `Broker` (Kafka in KRaft mode), Kafka's own client, `Ingester`.
- `catalog`: `ObjectStore` (moto behind a gate), `RestCatalog`, `Postgres`, their readers, `Load`.
- `outages`: `outage`, one dependency taken away under load and brought back, and its checks.
- `collector`: the Go tools (`tool`, `run_tool`), `Collector`, `telemetrygen_logs`.
"""
