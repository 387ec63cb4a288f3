{{/* Names and labels. */}}
{{- define "ikefleet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ikefleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ikefleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ikefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "concentrator"). */}}
{{- define "ikefleet.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ikefleet.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ikefleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ikefleet.etcdName" -}}
{{- printf "%s-etcd" (include "ikefleet.fullname" .) -}}
{{- end -}}

{{- define "ikefleet.etcdScheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* DNS name of bundled etcd member i: include with (list $ i). */}}
{{- define "ikefleet.etcdMember" -}}
{{- $root := index . 0 -}}
{{- $n := include "ikefleet.etcdName" $root -}}
{{- printf "%s-%d.%s.%s.svc.%s" $n (index . 1) $n $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{- define "ikefleet.etcdEndpoints" -}}
{{- $eps := list -}}
{{- if eq .Values.etcd.mode "bundled" -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $eps = append $eps (printf "%s://%s:2379" (include "ikefleet.etcdScheme" $) (include "ikefleet.etcdMember" (list $ $i))) -}}
{{- end -}}
{{- else -}}
{{- $eps = .Values.etcd.endpoints -}}
{{- end -}}
{{- toJson $eps -}}
{{- end -}}

{{/* Where the pod mounts what. */}}
{{- define "ikefleet.paths" -}}
config: /etc/ikefleet/config
identity: /etc/ikefleet/identity
ca: /etc/ikefleet/ca
crl: /etc/ikefleet/crl
psk: /etc/ikefleet/psk
radius: /etc/ikefleet/radius
etcdTLS: /etc/ikefleet/etcd-tls
clusterKey: /etc/ikefleet/cluster-key
adminTLS: /etc/ikefleet/admin-tls
{{- end -}}

{{/*
Checks of values that the schema cannot express; each failure names the value.
*/}}
{{- define "ikefleet.validate" -}}
{{- $c := .Values.concentrator -}}
{{- $_ := required "concentrator.identity.id is required: the local IKE identity (FQDN, user@fqdn, IP or DN)" $c.identity.id -}}
{{- $_ := required "concentrator.config.children.local_ts is required: at least one subnet behind the concentrators" (default nil ($c.config.children).local_ts) -}}
{{- if and $c.auth.caSecret (not $c.identity.certSecret) (not $c.auth.psks) -}}
{{- fail "concentrator.auth.caSecret is set but concentrator.identity.certSecret is empty: the concentrator has no certificate to authenticate itself with" -}}
{{- end -}}
{{- if and $c.auth.psks (not $c.auth.pskSecret) -}}
{{- fail "concentrator.auth.pskSecret is required when concentrator.auth.psks is set" -}}
{{- end -}}
{{- if and $c.auth.crlKeys (not $c.auth.crlSecret) -}}
{{- fail "concentrator.auth.crlSecret is required when concentrator.auth.crlKeys is set" -}}
{{- end -}}
{{- if and $c.auth.eap.radius.servers (not $c.auth.eap.radius.secretName) -}}
{{- fail "concentrator.auth.eap.radius.secretName is required when concentrator.auth.eap.radius.servers is set: the Secret holding the RADIUS shared secrets" -}}
{{- end -}}
{{- if and $c.auth.eap.radius.servers (not $c.identity.certSecret) -}}
{{- fail "concentrator.auth.eap.radius.servers is set but concentrator.identity.certSecret is empty: with EAP the concentrator authenticates itself by certificate" -}}
{{- end -}}
{{- if and (or $c.auth.eap.identities $c.auth.eap.maxRounds) (not $c.auth.eap.radius.servers) -}}
{{- fail "concentrator.auth.eap.identities and maxRounds need concentrator.auth.eap.radius.servers: EAP is passed through to RADIUS" -}}
{{- end -}}
{{- if and $c.auth.caSecret (not $c.auth.caKeys) -}}
{{- fail "concentrator.auth.caKeys must name at least one key of concentrator.auth.caSecret" -}}
{{- end -}}
{{- $_ := required "clusterKey.secretName is required: a Secret with the 32-byte cluster key in hex (openssl rand -hex 32)" .Values.clusterKey.secretName -}}
{{- $_ := required "admin.tlsSecret is required: a Secret with ca.crt, tls.crt and tls.key for the admin API (mTLS)" .Values.admin.tlsSecret -}}
{{- if and (hasPrefix "127." (toString .Values.metrics.bindAddress)) (or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled) -}}
{{- fail (printf "metrics.bindAddress %s is loopback: Prometheus cannot scrape it through the metrics Service; use \"\" (every address) or the node's address, or disable metrics.service and metrics.serviceMonitor" .Values.metrics.bindAddress) -}}
{{- end -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- $_ := required "etcd.endpoints is required with etcd.mode external: the etcd cluster's client URLs" (default nil .Values.etcd.endpoints) -}}
{{- end -}}
{{- if and (eq .Values.etcd.mode "bundled") .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints must be empty with etcd.mode bundled (the chart names the members)" -}}
{{- end -}}
{{- if .Values.etcd.tls.enabled -}}
{{- $_ := required "etcd.tls.clientSecret is required with etcd.tls.enabled: concentratord's etcd client certificate (ca.crt, tls.crt, tls.key)" .Values.etcd.tls.clientSecret -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (eq .Values.etcd.mode "bundled") -}}
{{- $_ := required "etcd.bundled.serverSecret is required with etcd.tls.enabled: the members' server and peer certificate (ca.crt, tls.crt, tls.key)" .Values.etcd.bundled.serverSecret -}}
{{- end -}}
{{- range $i, $ep := .Values.etcd.endpoints -}}
{{- if and $.Values.etcd.tls.enabled (not (hasPrefix "https://" $ep)) -}}
{{- fail (printf "etcd.endpoints[%d]: %q is not https:// but etcd.tls.enabled is set" $i $ep) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
concentratord.yaml: the config sections from values as they are, plus what
the chart manages (identity, auth, statestore, metrics, admin).
*/}}
{{- define "ikefleet.config" -}}
{{- include "ikefleet.validate" . -}}
{{- $c := .Values.concentrator -}}
{{- $p := include "ikefleet.paths" . | fromYaml -}}
{{- $cfg := deepCopy $c.config -}}
{{- $identity := dict "id" $c.identity.id "send_cert" $c.identity.sendCert -}}
{{- if $c.identity.certSecret -}}
{{- $_ := set $identity "cert" (printf "%s/tls.crt" $p.identity) -}}
{{- $_ := set $identity "key" (printf "%s/tls.key" $p.identity) -}}
{{- end -}}
{{- $_ := set $cfg "identity" $identity -}}
{{- $auth := dict -}}
{{- if $c.auth.caSecret -}}
{{- $cas := list -}}
{{- range $c.auth.caKeys -}}{{- $cas = append $cas (printf "%s/%s" $p.ca .) -}}{{- end -}}
{{- $_ := set $auth "cas" $cas -}}
{{- end -}}
{{- if $c.auth.crlSecret -}}
{{- $crls := list -}}
{{- range $c.auth.crlKeys -}}{{- $crls = append $crls (printf "%s/%s" $p.crl .) -}}{{- end -}}
{{- $_ := set $auth "crls" $crls -}}
{{- end -}}
{{- if $c.auth.psks -}}
{{- $psks := list -}}
{{- range $c.auth.psks -}}{{- $psks = append $psks (dict "id" .id "secret_file" (printf "%s/%s" $p.psk .key)) -}}{{- end -}}
{{- $_ := set $auth "psks" $psks -}}
{{- end -}}
{{- if $c.auth.credentialStore -}}
{{- $_ := set $auth "credential_store" true -}}
{{- end -}}
{{- $e := $c.auth.eap -}}
{{- if $e.radius.servers -}}
{{- $servers := list -}}
{{- range $e.radius.servers -}}{{- $servers = append $servers (dict "address" .address "secret_file" (printf "%s/%s" $p.radius .secretKey)) -}}{{- end -}}
{{- $radius := dict "servers" $servers -}}
{{- if $e.radius.timeout -}}{{- $_ := set $radius "timeout" $e.radius.timeout -}}{{- end -}}
{{- if $e.radius.retries -}}{{- $_ := set $radius "retries" $e.radius.retries -}}{{- end -}}
{{- if $e.radius.nasIdentifier -}}{{- $_ := set $radius "nas_identifier" $e.radius.nasIdentifier -}}{{- end -}}
{{- if $e.radius.maxPending -}}{{- $_ := set $radius "max_pending" $e.radius.maxPending -}}{{- end -}}
{{- $eap := dict "radius" $radius -}}
{{- if $e.identities -}}{{- $_ := set $eap "identities" $e.identities -}}{{- end -}}
{{- if $e.maxRounds -}}{{- $_ := set $eap "max_rounds" $e.maxRounds -}}{{- end -}}
{{- $_ := set $auth "eap" $eap -}}
{{- end -}}
{{- if $c.auth.revocation -}}
{{- $_ := set $auth "revocation" (deepCopy $c.auth.revocation) -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- $store := dict "mode" "external" "endpoints" (include "ikefleet.etcdEndpoints" . | fromJsonArray) "cluster_key_file" (printf "%s/cluster.key" $p.clusterKey) "lease_ttl" .Values.etcd.leaseTTL "queue_new" .Values.etcd.queueNew "commit_delay" .Values.etcd.commitDelay -}}
{{- if .Values.etcd.tls.enabled -}}
{{- $_ := set $store "ca_file" (printf "%s/ca.crt" $p.etcdTLS) -}}
{{- $_ := set $store "cert_file" (printf "%s/tls.crt" $p.etcdTLS) -}}
{{- $_ := set $store "key_file" (printf "%s/tls.key" $p.etcdTLS) -}}
{{- end -}}
{{- $_ := set $cfg "statestore" $store -}}
{{- $_ := set $cfg "metrics" (dict "listen" (printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port))) -}}
{{- $_ := set $cfg "admin" (dict "listen" .Values.admin.listen "ca_file" (printf "%s/ca.crt" $p.adminTLS) "cert_file" (printf "%s/tls.crt" $p.adminTLS) "key_file" (printf "%s/tls.key" $p.adminTLS)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "ikefleet.probeHost" -}}
{{- default "127.0.0.1" .Values.metrics.bindAddress -}}
{{- end -}}
