package charttest

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chartutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

func daemonSet(t *testing.T, o *objects) *appsv1.DaemonSet {
	t.Helper()
	return o.get(t, "DaemonSet", fullname).(*appsv1.DaemonSet)
}

func configMap(t *testing.T, o *objects) *corev1.ConfigMap {
	t.Helper()
	return o.get(t, "ConfigMap", fullname+"-config").(*corev1.ConfigMap)
}

func value(t *testing.T, vals chartutil.Values, p string) any {
	t.Helper()
	v, err := vals.PathValue(p)
	if err != nil {
		t.Fatalf("values: %s: %v", p, err)
	}
	return v
}

func num(t *testing.T, vals chartutil.Values, p string) int64 {
	t.Helper()
	switch v := value(t, vals, p).(type) {
	case float64:
		return int64(v)
	case int64:
		return v
	case int:
		return int64(v)
	default:
		t.Fatalf("values: %s is %T, not a number", p, v)
		return 0
	}
}

func str(t *testing.T, vals chartutil.Values, p string) string {
	t.Helper()
	s, ok := value(t, vals, p).(string)
	if !ok {
		t.Fatalf("values: %s is not a string", p)
	}
	return s
}

func strs(t *testing.T, vals chartutil.Values, p string) []string {
	t.Helper()
	var out []string
	l, _ := value(t, vals, p).([]any)
	for _, v := range l {
		out = append(out, fmt.Sprint(v))
	}
	return out
}

func boolean(t *testing.T, vals chartutil.Values, p string) bool {
	t.Helper()
	b, ok := value(t, vals, p).(bool)
	if !ok {
		t.Fatalf("values: %s is not a boolean", p)
	}
	return b
}

// selects reports whether every label of sel is in labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func namedPort(c *corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}

func checkDaemonSet(t *testing.T, o *objects, vals chartutil.Values) {
	ds := daemonSet(t, o)
	pod := &ds.Spec.Template.Spec
	if !selects(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("DaemonSet selector %v does not select its pods %v", ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	}
	if !pod.HostNetwork {
		t.Error("concentratord must run in the host's network namespace")
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q: a hostNetwork pod needs ClusterFirstWithHostNet to resolve the etcd members", pod.DNSPolicy)
	}
	if pod.HostPID || pod.HostIPC {
		t.Error("hostPID/hostIPC set")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("concentratord needs no Kubernetes API token")
	}
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
		t.Errorf("update strategy %+v: want RollingUpdate without surge (pods share the host's ports)", ds.Spec.UpdateStrategy)
	}
	grace := pod.TerminationGracePeriodSeconds
	if grace == nil || *grace != num(t, vals, "concentrator.terminationGracePeriodSeconds") || *grace < 30 {
		t.Errorf("terminationGracePeriodSeconds %v: want concentrator.terminationGracePeriodSeconds (>= 30s to drain)", grace)
	}
	c := container(t, pod, "concentratord")
	if !pinned(c.Image) {
		t.Errorf("image %q is not pinned", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("concentratord has no securityContext.capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	// NET_ADMIN: xfrm, nftables, TUN. NET_RAW: raw sockets of the data
	// planes. NET_BIND_SERVICE: UDP 500.
	if want := []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}; !slices.Equal(add, want) {
		t.Errorf("capabilities.add %v, want exactly %v", add, want)
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged must be false")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if ps := pod.SecurityContext; ps == nil || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile must be RuntimeDefault")
	}

	// Ports and probes.
	for name, want := range map[string]struct {
		port  int64
		proto corev1.Protocol
	}{
		"ike":     {num(t, vals, "concentrator.config.ike.port"), corev1.ProtocolUDP},
		"natt":    {num(t, vals, "concentrator.config.ike.natt_port"), corev1.ProtocolUDP},
		"metrics": {num(t, vals, "metrics.port"), corev1.ProtocolTCP},
	} {
		p := namedPort(c, name)
		if p == nil || int64(p.ContainerPort) != want.port || p.Protocol != want.proto {
			t.Errorf("port %s: %+v, want %d/%s", name, p, want.port, want.proto)
		}
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", pr.name, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path || g.Port.String() != "metrics" {
			t.Errorf("%s probe: GET %s on port %s, want %s on the metrics port", pr.name, g.Path, g.Port.String(), pr.path)
		}
		wantHost := str(t, vals, "metrics.bindAddress")
		if wantHost == "" {
			wantHost = "127.0.0.1"
		}
		if g.Host != wantHost {
			t.Errorf("%s probe: host %q, want %q (the node's loopback: hostNetwork)", pr.name, g.Host, wantHost)
		}
	}

	// Drain before SIGTERM.
	if boolean(t, vals, "concentrator.drain.enabled") {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil {
			t.Fatal("no preStop drain")
		}
		if got, want := c.Lifecycle.PreStop.Exec.Command, strs(t, vals, "concentrator.drain.command"); !slices.Equal(got, want) {
			t.Errorf("preStop %v, want %v", got, want)
		}
	}

	// The configuration file and its checksum.
	cm := configMap(t, o)
	if len(c.Args) != 2 || c.Args[0] != "--config" {
		t.Fatalf("args %v: want --config FILE", c.Args)
	}
	mount, vol := mountOf(t, c, pod, c.Args[1])
	if vol.ConfigMap == nil || vol.ConfigMap.Name != cm.Name {
		t.Fatalf("--config %s is not on the ConfigMap %s", c.Args[1], cm.Name)
	}
	if key := strings.TrimPrefix(c.Args[1], mount.MountPath+"/"); cm.Data[key] == "" {
		t.Errorf("--config %s: ConfigMap has no key %q", c.Args[1], key)
	}
	raw, ok := o.raw["ikefleet/templates/configmap.yaml"]
	if !ok {
		t.Fatal("no templates/configmap.yaml rendered")
	}
	if got, want := ds.Spec.Template.Annotations["checksum/config"], sha256hex(raw); got != want {
		t.Errorf("checksum/config %q, want sha256 of the rendered ConfigMap %q", got, want)
	}

	// Host paths: only the TUN device, only for the user-space data plane.
	mode := str(t, vals, "concentrator.config.dataplane.mode")
	var tun bool
	for _, v := range pod.Volumes {
		if v.HostPath == nil {
			continue
		}
		if v.HostPath.Path != "/dev/net/tun" || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathCharDev {
			t.Errorf("hostPath volume %s: %+v; only the TUN device may come from the host", v.Name, v.HostPath)
		}
		tun = true
	}
	if wantTUN := mode == "userspace" || mode == "auto"; tun != wantTUN {
		t.Errorf("dataplane.mode %s: /dev/net/tun mounted = %v, want %v", mode, tun, wantTUN)
	}
	for _, m := range c.VolumeMounts {
		if findVolume(pod, m.Name) == nil {
			t.Errorf("volumeMount %s has no volume", m.Name)
		}
	}
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "" {
			t.Errorf("volume %s names no Secret", v.Name)
		}
	}
}

func findVolume(pod *corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// mountOf returns the mount and volume a file path lies on.
func mountOf(t *testing.T, c *corev1.Container, pod *corev1.PodSpec, file string) (*corev1.VolumeMount, *corev1.Volume) {
	t.Helper()
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if strings.HasPrefix(file, m.MountPath+"/") {
			v := findVolume(pod, m.Name)
			if v == nil {
				t.Fatalf("%s: mount %s has no volume", file, m.Name)
			}
			return m, v
		}
	}
	t.Fatalf("%s is on no volume of container %s", file, c.Name)
	return nil, nil
}

// walkStrings calls f with the dotted path and value of every string in v.
func walkStrings(v any, p string, f func(p, s string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			walkStrings(x, strings.TrimPrefix(p+"."+k, "."), f)
		}
	case []any:
		for i, x := range v {
			walkStrings(x, fmt.Sprintf("%s[%d]", p, i), f)
		}
	case string:
		f(p, v)
	}
}

// Every file concentratord.yaml names is a key of a mounted Secret, and
// every mounted Secret is used by the configuration.
func checkConfigFiles(t *testing.T, o *objects) {
	ds := daemonSet(t, o)
	pod := &ds.Spec.Template.Spec
	c := container(t, pod, "concentratord")
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(configMap(t, o).Data["concentratord.yaml"]), &cfg); err != nil {
		t.Fatalf("concentratord.yaml: %v", err)
	}
	used := map[string]bool{}
	n := 0
	walkStrings(cfg, "", func(p, s string) {
		if !strings.HasPrefix(s, "/") {
			return
		}
		n++
		m, v := mountOf(t, c, pod, s)
		used[m.Name] = true
		rel := strings.TrimPrefix(s, m.MountPath+"/")
		switch {
		case v.Secret != nil:
			var paths []string
			for _, it := range v.Secret.Items {
				paths = append(paths, it.Path)
			}
			if !slices.Contains(paths, rel) {
				t.Errorf("%s = %s: Secret volume %s (%s) projects %v, not %s", p, s, v.Name, v.Secret.SecretName, paths, rel)
			}
		default:
			t.Errorf("%s = %s: on volume %s, which is not a Secret", p, s, v.Name)
		}
		if path.Clean(s) != s || strings.Contains(rel, "/") {
			t.Errorf("%s = %s: not a plain file on its volume", p, s)
		}
	})
	if n < 5 {
		t.Errorf("concentratord.yaml names only %d files; want at least the cluster key and the admin and etcd TLS files", n)
	}
	for _, m := range c.VolumeMounts {
		v := findVolume(pod, m.Name)
		if v != nil && v.Secret != nil && !used[m.Name] {
			t.Errorf("Secret volume %s is mounted but concentratord.yaml names none of its files", m.Name)
		}
	}
}

func checkPDB(t *testing.T, o *objects, vals chartutil.Values) {
	ds := daemonSet(t, o)
	if !boolean(t, vals, "concentrator.podDisruptionBudget.enabled") {
		if o.has("PodDisruptionBudget", fullname) {
			t.Error("PodDisruptionBudget rendered though disabled")
		}
		return
	}
	pdb := o.get(t, "PodDisruptionBudget", fullname).(*policyv1.PodDisruptionBudget)
	if !selects(pdb.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the concentrator pods %v", pdb.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	}
	if pdb.Spec.MaxUnavailable == nil || int64(pdb.Spec.MaxUnavailable.IntValue()) != num(t, vals, "concentrator.podDisruptionBudget.maxUnavailable") {
		t.Errorf("PodDisruptionBudget maxUnavailable %v", pdb.Spec.MaxUnavailable)
	}
}

func checkMetrics(t *testing.T, o *objects, vals chartutil.Values) {
	ds := daemonSet(t, o)
	var cfg struct {
		Metrics struct {
			Listen string `json:"listen"`
		} `json:"metrics"`
	}
	if err := yaml.Unmarshal([]byte(configMap(t, o).Data["concentratord.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s:%d", str(t, vals, "metrics.bindAddress"), num(t, vals, "metrics.port")); cfg.Metrics.Listen != want {
		t.Errorf("metrics.listen %q, want %q (the probes' port)", cfg.Metrics.Listen, want)
	}
	sm := boolean(t, vals, "metrics.serviceMonitor.enabled")
	svcOn := boolean(t, vals, "metrics.service.enabled") || sm
	if !svcOn {
		if o.has("Service", fullname+"-metrics") {
			t.Error("metrics Service rendered though disabled")
		}
		return
	}
	svc := o.get(t, "Service", fullname+"-metrics").(*corev1.Service)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("metrics Service clusterIP %q, want None (one endpoint per node)", svc.Spec.ClusterIP)
	}
	if !selects(svc.Spec.Selector, ds.Spec.Template.Labels) {
		t.Errorf("metrics Service selector %v does not select the concentrator pods", svc.Spec.Selector)
	}
	var portOK bool
	for _, p := range svc.Spec.Ports {
		if p.Name == "metrics" && int64(p.Port) == num(t, vals, "metrics.port") && p.TargetPort.String() == "metrics" {
			portOK = true
		}
	}
	if !portOK {
		t.Errorf("metrics Service ports %+v: want metrics -> the pods' metrics port", svc.Spec.Ports)
	}
	if !sm {
		if o.has("ServiceMonitor", fullname) {
			t.Error("ServiceMonitor rendered though disabled")
		}
		return
	}
	mon := o.get(t, "ServiceMonitor", fullname).(*monitoringv1.ServiceMonitor)
	if !selects(mon.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select Service labels %v", mon.Spec.Selector.MatchLabels, svc.Labels)
	}
	if len(mon.Spec.Endpoints) != 1 || mon.Spec.Endpoints[0].Port != "metrics" || mon.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v: want port metrics, path /metrics", mon.Spec.Endpoints)
	}
	labels, err := vals.Table("metrics.serviceMonitor.labels")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range labels {
		if mon.Labels[k] != v {
			t.Errorf("ServiceMonitor lacks label %s=%v", k, v)
		}
	}
}

// etcdVersion is the etcd client version of the main module.
func etcdVersion(t *testing.T) string {
	t.Helper()
	for _, l := range strings.Split(string(readFile(t, "../../go.mod")), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "go.etcd.io/etcd/client/v3" {
			return f[1]
		}
	}
	t.Fatal("go.etcd.io/etcd/client/v3 not in ../../go.mod")
	return ""
}

func minor(v string) string {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

func checkEtcd(t *testing.T, o *objects, vals chartutil.Values) {
	var cfg struct {
		StateStore struct {
			Mode      string   `json:"mode"`
			Endpoints []string `json:"endpoints"`
			CAFile    string   `json:"ca_file"`
			CertFile  string   `json:"cert_file"`
			KeyFile   string   `json:"key_file"`
		} `json:"statestore"`
	}
	if err := yaml.Unmarshal([]byte(configMap(t, o).Data["concentratord.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	st := cfg.StateStore
	tls := boolean(t, vals, "etcd.tls.enabled")
	if st.Mode != "external" {
		t.Errorf("statestore.mode %q: every node must share one etcd (external)", st.Mode)
	}
	if tls != (st.CAFile != "" && st.CertFile != "" && st.KeyFile != "") {
		t.Errorf("etcd.tls.enabled %v but statestore ca/cert/key files %q %q %q", tls, st.CAFile, st.CertFile, st.KeyFile)
	}
	name := fullname + "-etcd"
	if str(t, vals, "etcd.mode") == "external" {
		if o.has("StatefulSet", name) || o.has("Service", name) {
			t.Error("bundled etcd rendered with etcd.mode external")
		}
		if want := strs(t, vals, "etcd.endpoints"); !slices.Equal(st.Endpoints, want) {
			t.Errorf("statestore.endpoints %v, want etcd.endpoints %v", st.Endpoints, want)
		}
		return
	}
	sts := o.get(t, "StatefulSet", name).(*appsv1.StatefulSet)
	svc := o.get(t, "Service", name).(*corev1.Service)
	n := num(t, vals, "etcd.bundled.replicas")
	if sts.Spec.Replicas == nil || int64(*sts.Spec.Replicas) != n {
		t.Errorf("etcd replicas %v, want %d", sts.Spec.Replicas, n)
	}
	if sts.Spec.ServiceName != svc.Name || svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses {
		t.Error("etcd members need a headless Service that publishes not-ready members (peer discovery)")
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Error("etcd members must start in parallel: an ordered start waits for a quorum that cannot form")
	}
	if !selects(sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels) || !selects(svc.Spec.Selector, sts.Spec.Template.Labels) {
		t.Error("etcd selectors do not select the members")
	}
	c := container(t, &sts.Spec.Template.Spec, "etcd")
	if !pinned(c.Image) {
		t.Errorf("etcd image %q is not pinned", c.Image)
	}
	if tag := c.Image[strings.LastIndex(c.Image, ":")+1:]; minor(tag) != minor(etcdVersion(t)) {
		t.Errorf("etcd image %s: want the %s line, which concentratord's etcd client (%s) is built for", c.Image, minor(etcdVersion(t)), etcdVersion(t))
	}
	args := map[string]string{}
	for _, a := range c.Args {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	var members, clients []string
	for i := range n {
		host := fmt.Sprintf("%s-%d.%s.%s.svc.%s", name, i, svc.Name, namespace, str(t, vals, "clusterDomain"))
		members = append(members, fmt.Sprintf("%s-%d=%s://%s:2380", name, i, scheme, host))
		clients = append(clients, fmt.Sprintf("%s://%s:2379", scheme, host))
	}
	if got := args["--initial-cluster"]; got != strings.Join(members, ",") {
		t.Errorf("--initial-cluster %q, want %q", got, strings.Join(members, ","))
	}
	if !slices.Equal(st.Endpoints, clients) {
		t.Errorf("statestore.endpoints %v, want the members %v", st.Endpoints, clients)
	}
	for _, k := range []string{"--client-cert-auth", "--peer-client-cert-auth"} {
		if (args[k] == "true") != tls {
			t.Errorf("%s=%q with etcd.tls.enabled %v", k, args[k], tls)
		}
	}
	if args["--listen-metrics-urls"] != "http://0.0.0.0:2381" {
		t.Errorf("--listen-metrics-urls %q: the probes use port 2381", args["--listen-metrics-urls"])
	}
	if p := namedPort(c, "metrics"); p == nil || p.ContainerPort != 2381 {
		t.Error("etcd metrics port is not 2381")
	}
	for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.String() != "metrics" {
			t.Error("etcd probes must use the plain-HTTP metrics listener (the client port demands client certificates)")
		}
	}
	if ps := sts.Spec.Template.Spec.SecurityContext; ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.FSGroup == nil {
		t.Error("etcd must run as non-root with an fsGroup for its volume")
	}
	if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Error("etcd must drop every capability")
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Error("etcd needs one volume claim per member")
	}
	if n > 1 {
		pdb := o.get(t, "PodDisruptionBudget", name).(*policyv1.PodDisruptionBudget)
		if pdb.Spec.MinAvailable == nil || int64(pdb.Spec.MinAvailable.IntValue()) != n/2+1 {
			t.Errorf("etcd PodDisruptionBudget minAvailable %v, want the quorum %d", pdb.Spec.MinAvailable, n/2+1)
		}
	}
}
