{{/* Names, labels and the services' config file. */}}

{{- define "telemetry-lake.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* All labels of one component's objects: include with (list $ "ingester"). */}}
{{- define "telemetry-lake.labels" -}}
{{- $root := index . 0 -}}
{{ include "telemetry-lake.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
app.kubernetes.io/part-of: telemetry-lake
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "ingester"). */}}
{{- define "telemetry-lake.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{- define "telemetry-lake.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "telemetry-lake.kafkaName" -}}
{{- printf "%s-kafka" (include "telemetry-lake.fullname" .) -}}
{{- end -}}

{{/* The headless Service that gives every Kafka pod its own DNS name. */}}
{{- define "telemetry-lake.kafkaHeadless" -}}
{{- printf "%s-kafka-headless" (include "telemetry-lake.fullname" .) -}}
{{- end -}}

{{/* POD.HEADLESS.NAMESPACE.svc.DOMAIN of Kafka pod number . (with $ as root): include with (list $ 0). */}}
{{- define "telemetry-lake.kafkaPodHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "telemetry-lake.kafkaName" $root) (index . 1) (include "telemetry-lake.kafkaHeadless" $root) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{/* Bootstrap servers: every Kafka pod by its own address, or the external cluster. */}}
{{- define "telemetry-lake.brokers" -}}
{{- if .Values.kafka.enabled -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.kafka.replicas) -}}
{{- $hosts = append $hosts (printf "%s:9092" (include "telemetry-lake.kafkaPodHost" (list $ $i))) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- required "kafka.externalBrokers is required when kafka.enabled is false" .Values.kafka.externalBrokers -}}
{{- end -}}
{{- end -}}

{{- define "telemetry-lake.stagingDir" -}}/var/lib/telemetry-lake{{- end -}}
{{- define "telemetry-lake.configDir" -}}/etc/telemetry-lake{{- end -}}

{{/* One TOML value: strings as JSON strings (valid TOML basic strings), whole numbers
     without the ".0" that YAML's float64 would print, booleans as is. */}}
{{- define "telemetry-lake.tomlValue" -}}
{{- if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else -}}
{{- toString . | toJson -}}
{{- end -}}
{{- end -}}

{{/* The services' config: .Values.config plus what the chart decides itself. */}}
{{- define "telemetry-lake.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if and .Values.kafka.enabled (gt (int $config.kafka.replication_factor) (int .Values.kafka.replicas)) -}}
{{- fail (printf "config.kafka.replication_factor (%d) is larger than kafka.replicas (%d)" (int $config.kafka.replication_factor) (int .Values.kafka.replicas)) -}}
{{- end -}}
{{- $_ := set $config "otlp" (merge (dict "grpc_endpoint" (printf "0.0.0.0:%d" (int .Values.ports.otlpGrpc)) "http_endpoint" (printf "0.0.0.0:%d" (int .Values.ports.otlpHttp))) $config.otlp) -}}
{{- $admin := merge (dict "grpc_endpoint" (printf "0.0.0.0:%d" (int .Values.ports.adminGrpc)) "http_endpoint" (printf "0.0.0.0:%d" (int .Values.ports.adminHttp))) (default dict $config.admin) -}}
{{- if include "telemetry-lake.healthPort" . -}}
{{- $_ := set $admin "health_endpoint" (printf "0.0.0.0:%d" (int .Values.ports.health)) -}}
{{- end -}}
{{- $_ := set $config "admin" $admin -}}
{{- $_ := set $config.kafka "brokers" (include "telemetry-lake.brokers" .) -}}
{{- $_ := set $config.staging "path" (printf "%s/staging.duckdb" (include "telemetry-lake.stagingDir" .)) -}}
{{- range $section := keys $config | sortAlpha }}
{{- $keys := get $config $section }}
[{{ $section }}]
{{- range $key := keys $keys | sortAlpha }}
{{- $value := get $keys $key }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ include "telemetry-lake.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $keys | sortAlpha }}
{{- $table := get $keys $key }}
{{- if kindIs "map" $table }}
[{{ $section }}.{{ $key }}]
{{- range $name := keys $table | sortAlpha }}
{{ toJson $name }} = {{ get $table $name | toString | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
{{- end -}}

{{- define "telemetry-lake.objectStoreSecret" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret -}}
{{- else if or .Values.objectStore.accessKeyId .Values.objectStore.secretAccessKey -}}
{{- printf "%s-object-store" (include "telemetry-lake.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security: the images' non-root user `lake` (uid 10001). */}}
{{- define "telemetry-lake.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "telemetry-lake.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Container ports, probes and the config mount, the same for both services. */}}
{{- define "telemetry-lake.servicePorts" -}}
- name: otlp-grpc
  containerPort: {{ .Values.ports.otlpGrpc }}
  protocol: TCP
- name: otlp-http
  containerPort: {{ .Values.ports.otlpHttp }}
  protocol: TCP
- name: admin-grpc
  containerPort: {{ .Values.ports.adminGrpc }}
  protocol: TCP
- name: admin-http
  containerPort: {{ .Values.ports.adminHttp }}
  protocol: TCP
{{- if include "telemetry-lake.healthPort" . }}
- name: health
  containerPort: {{ .Values.ports.health }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* "true" when the admin ports need TLS or a token, which Kubernetes' gRPC probes cannot give:
     then admin.health_endpoint (ports.health) serves them in plain text. */}}
{{- define "telemetry-lake.healthPort" -}}
{{- $admin := default dict .Values.config.admin -}}
{{- if or $admin.tls $admin.auth -}}true{{- end -}}
{{- end -}}

{{/* The port the probes ask: the plain-text health port when there is one, else admin gRPC. */}}
{{- define "telemetry-lake.probePort" -}}
{{- if include "telemetry-lake.healthPort" . -}}{{ .Values.ports.health }}{{- else -}}{{ .Values.ports.adminGrpc }}{{- end -}}
{{- end -}}

{{/* Kubernetes' native gRPC probes on the admin port (grpc.health.v1), or on the health port
     when the admin ports want TLS or a token. Readiness asks for the
     server ("" service): NOT_SERVING while Kafka, the catalog or storage is down and during
     shutdown. Liveness and start-up ask for "telemetry_lake.liveness", which stays SERVING while
     the process runs: a dependency outage takes a pod out of the Service, it does not restart it. */}}
{{- define "telemetry-lake.probes" -}}
startupProbe:
  grpc:
    port: {{ include "telemetry-lake.probePort" . }}
    service: telemetry_lake.liveness
  periodSeconds: 2
  failureThreshold: 90
livenessProbe:
  grpc:
    port: {{ include "telemetry-lake.probePort" . }}
    service: telemetry_lake.liveness
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  grpc:
    port: {{ include "telemetry-lake.probePort" . }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{- define "telemetry-lake.podAnnotations" -}}
{{- $root := index . 0 -}}
checksum/config: {{ include "telemetry-lake.config" $root | sha256sum }}
{{- if $root.Values.prometheusScrape }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $root.Values.ports.adminHttp | quote }}
prometheus.io/path: /metrics
{{- if (default dict $root.Values.config.admin).tls }}
prometheus.io/scheme: https
{{- end }}
{{- end }}
{{- with index . 1 }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Kafka's server.properties, less node.id and advertised.listeners (set per pod at start). */}}
{{- define "telemetry-lake.kafkaProperties" -}}
{{- $replicas := int .Values.kafka.replicas -}}
{{- $voters := list -}}
{{- range $i := until $replicas -}}
{{- $voters = append $voters (printf "%d@%s:9093" $i (include "telemetry-lake.kafkaPodHost" (list $ $i))) -}}
{{- end -}}
process.roles=broker,controller
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.voters={{ join "," $voters }}
log.dirs=/var/lib/kafka/data
auto.create.topics.enable=false
default.replication.factor={{ min 3 $replicas }}
min.insync.replicas={{ min 2 $replicas }}
offsets.topic.replication.factor={{ min 3 $replicas }}
transaction.state.log.replication.factor={{ min 3 $replicas }}
transaction.state.log.min.isr={{ min 2 $replicas }}
share.coordinator.state.topic.replication.factor={{ min 3 $replicas }}
share.coordinator.state.topic.min.isr={{ min 2 $replicas }}
group.initial.rebalance.delay.ms=3000
{{- end -}}

{{/* Secrets (secrets.files, secrets.env) reach the pods as files and environment variables,
     never through config.toml (a ConfigMap): the config refers to them as ${file:...} and
     ${env:...}, which the services expand at start-up. */}}
{{- define "telemetry-lake.secretDir" -}}/var/run/secrets/telemetry-lake{{- end -}}

{{/* Whether secrets entry . (with its optional services list) is for service $service:
     include with (list $entry "appender"); yields "true" or "". */}}
{{- define "telemetry-lake.secretFor" -}}
{{- if has (index . 1) (default (list "ingester" "appender") (index . 0).services) -}}true{{- end -}}
{{- end -}}

{{/* Environment variables from Secret keys for one service: include with (list $ "appender"). */}}
{{- define "telemetry-lake.secretEnv" -}}
{{- $service := index . 1 -}}
{{- range (index . 0).Values.secrets.env }}
{{- if include "telemetry-lake.secretFor" (list . $service) }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Mounts of secrets.files for one service: include with (list $ "appender"). */}}
{{- define "telemetry-lake.secretVolumeMounts" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- range $i, $s := $root.Values.secrets.files }}
{{- if include "telemetry-lake.secretFor" (list $s $service) }}
- name: secret-{{ $i }}
  mountPath: {{ include "telemetry-lake.secretDir" $root }}/{{ $s.secretName }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of secrets.files for one service: include with (list $ "appender"). */}}
{{- define "telemetry-lake.secretVolumes" -}}
{{- $service := index . 1 -}}
{{- range $i, $s := (index . 0).Values.secrets.files }}
{{- if include "telemetry-lake.secretFor" (list $s $service) }}
- name: secret-{{ $i }}
  secret:
    secretName: {{ $s.secretName }}
    defaultMode: 288  # 0440: the pod's user and group (fsGroup) only
{{- end }}
{{- end }}
{{- end -}}

{{/* Refuses a secret written out in config: a secret-looking key (as the services'
     secrets::is_secret_key decides) or a URI with a password, whose value is not a ${env:...}
     or ${file:...} reference. The message names the key, never the value. */}}
{{- define "telemetry-lake.checkNoPlainSecrets" -}}
{{- range $section, $keys := .Values.config }}
{{- if kindIs "map" $keys }}
{{- range $key, $value := $keys }}
{{- if kindIs "map" $value }}
{{- range $name, $v := $value }}
{{- include "telemetry-lake.checkSecret" (list (printf "config.%s.%s.%s" $section $key $name) $name $v) }}
{{- end }}
{{- else }}
{{- include "telemetry-lake.checkSecret" (list (printf "config.%s.%s" $section $key) $key $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "telemetry-lake.checkSecret" -}}
{{- $path := index . 0 -}}
{{- $key := lower (index . 1) -}}
{{- $value := toString (index . 2) -}}
{{- $secretKey := and (regexMatch "(secret|password|token|access-key|credential|authorization|private|key$|key\\.pem$)" $key) (not (regexMatch "(file|path|location|dir)$" $key)) -}}
{{- $uriPassword := regexMatch "://[^/@]*:[^/@]*@" $value -}}
{{- if and (or $secretKey $uriPassword) (ne $value "") (not (regexMatch "\\$\\{(env|file):" $value)) -}}
{{- fail (printf "%s holds a secret written out, and config.toml is a ConfigMap: keep it in a Kubernetes Secret (secrets.files or secrets.env) and write \"${file:/var/run/secrets/telemetry-lake/SECRET/KEY}\" or \"${env:NAME}\" instead" $path) -}}
{{- end -}}
{{- end -}}
