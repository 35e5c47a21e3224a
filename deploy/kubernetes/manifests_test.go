package kubernetes_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"tcpd/metrics"
)

var update = flag.Bool("update", false, "rewrite prometheusrule*.yaml from deploy/prometheus")

// repoRoot is the tcpd repository; this module lives in deploy/kubernetes.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cmd/tcpd")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

// rendered is what "kubectl apply -k deploy/kubernetes" would send, each
// object strictly decoded into its upstream type.
type rendered struct {
	namespace   *corev1.Namespace
	priority    *schedulingv1.PriorityClass
	account     *corev1.ServiceAccount
	configMap   *corev1.ConfigMap
	daemonSet   *appsv1.DaemonSet
	podMonitor  *monitoringv1.PodMonitor
	rules       map[string]*monitoringv1.PrometheusRule // by name
	kindsByName []string                                // "Kind/namespace/name"
}

var renderOnce struct {
	sync.Once
	r   *rendered
	err error
}

// render builds the kustomization with kustomize's own library, as
// "kubectl apply -k" does, and decodes every object strictly: a field the
// upstream types do not know is an error, as "kubectl apply
// --validate=strict" would make it.
func render(t *testing.T) *rendered {
	t.Helper()
	renderOnce.Do(func() { renderOnce.r, renderOnce.err = doRender() })
	if renderOnce.err != nil {
		t.Fatal(renderOnce.err)
	}
	return renderOnce.r
}

func doRender() (*rendered, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), ".")
	if err != nil {
		return nil, fmt.Errorf("kustomize build: %w", err)
	}
	r := &rendered{rules: map[string]*monitoringv1.PrometheusRule{}}
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			return nil, err
		}
		kind, name, ns := res.GetKind(), res.GetName(), res.GetNamespace()
		r.kindsByName = append(r.kindsByName, kind+"/"+ns+"/"+name)
		var obj any
		switch kind {
		case "Namespace":
			r.namespace = &corev1.Namespace{}
			obj = r.namespace
		case "PriorityClass":
			r.priority = &schedulingv1.PriorityClass{}
			obj = r.priority
		case "ServiceAccount":
			r.account = &corev1.ServiceAccount{}
			obj = r.account
		case "ConfigMap":
			r.configMap = &corev1.ConfigMap{}
			obj = r.configMap
		case "DaemonSet":
			r.daemonSet = &appsv1.DaemonSet{}
			obj = r.daemonSet
		case "PodMonitor":
			r.podMonitor = &monitoringv1.PodMonitor{}
			obj = r.podMonitor
		case "PrometheusRule":
			pr := &monitoringv1.PrometheusRule{}
			r.rules[name] = pr
			obj = pr
		default:
			return nil, fmt.Errorf("unexpected %s %s", kind, name)
		}
		if err := yaml.UnmarshalStrict(y, obj); err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, name, err)
		}
	}
	sort.Strings(r.kindsByName)
	return r, nil
}

// TestKustomization: the kustomization builds, and yields exactly the
// objects deploy/README.md lists, in tcpd's namespace, each decoding
// strictly into the Kubernetes or Prometheus Operator type of its kind.
func TestKustomization(t *testing.T) {
	r := render(t)
	var got []string
	for _, k := range r.kindsByName {
		// The generated ConfigMap's name ends in a hash of its contents.
		got = append(got, regexp.MustCompile(`^(ConfigMap/tcpd/tcpd-config)-[a-z0-9]+$`).ReplaceAllString(k, "$1-HASH"))
	}
	want := []string{
		"ConfigMap/tcpd/tcpd-config-HASH",
		"DaemonSet/tcpd/tcpd",
		"Namespace//tcpd",
		"PodMonitor/tcpd/tcpd",
		"PriorityClass//tcpd-gateway",
		"PrometheusRule/tcpd/tcpd",
		"PrometheusRule/tcpd/tcpd-fleet",
		"ServiceAccount/tcpd/tcpd",
	}
	if !slices.Equal(got, want) {
		t.Errorf("objects:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if r.namespace == nil || r.namespace.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Error("the namespace does not allow privileged pods (host network, NET_ADMIN)")
	}
	if r.account == nil || r.account.AutomountServiceAccountToken == nil || *r.account.AutomountServiceAccountToken {
		t.Error("the service account mounts an API token; tcpd never uses one")
	}
}

// container returns the DaemonSet's tcpd container.
func container(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "tcpd" {
		t.Fatalf("containers %v, want one named tcpd", cs)
	}
	return &cs[0]
}

// gatewayConfig is the part of the ConfigMap's tcpd.yaml the tests read.
type gatewayConfig struct {
	Metrics struct {
		Listen string `json:"listen"`
	} `json:"metrics"`
	Admin struct {
		Socket string `json:"socket"`
	} `json:"admin"`
	ShutdownGrace string `json:"shutdown_grace"`
	Limits        struct {
		MaxConnections *int64 `json:"max_connections"`
		Memory         string `json:"memory"`
	} `json:"limits"`
}

func configMapConfig(t *testing.T, r *rendered) (string, gatewayConfig) {
	t.Helper()
	if r.configMap == nil {
		t.Fatal("no ConfigMap")
	}
	text, ok := r.configMap.Data["tcpd.yaml"]
	if !ok || len(r.configMap.Data) != 1 {
		t.Fatalf("ConfigMap data keys %v, want tcpd.yaml", slices.Collect(mapKeys(r.configMap.Data)))
	}
	var c gatewayConfig
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatal(err)
	}
	return text, c
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

var tcpdBin struct {
	once sync.Once
	path string
	err  error
}

// buildTCPD builds the daemon from the repository once.
func buildTCPD(t *testing.T) string {
	t.Helper()
	tcpdBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "tcpd-k8s-test-")
		if err != nil {
			tcpdBin.err = err
			return
		}
		tcpdBin.path = filepath.Join(dir, "tcpd")
		cmd := exec.Command("go", "build", "-o", tcpdBin.path, "./cmd/tcpd")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			tcpdBin.err = errors.New(string(out))
		}
	})
	if tcpdBin.err != nil {
		t.Fatalf("go build ./cmd/tcpd: %v", tcpdBin.err)
	}
	return tcpdBin.path
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if tcpdBin.path != "" {
		os.RemoveAll(filepath.Dir(tcpdBin.path))
	}
	if err := closeLabs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// TestConfigMap: the configuration the pods get passes "tcpd check-config"
// and is mounted where the container's command reads it.
func TestConfigMap(t *testing.T) {
	r := render(t)
	text, cfg := configMapConfig(t, r)
	f := filepath.Join(t.TempDir(), "tcpd.yaml")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(buildTCPD(t), "check-config", f).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpd check-config on the ConfigMap's tcpd.yaml: %v\n%s", err, out)
	}
	c := container(t, r.daemonSet)
	if !slices.Equal(c.Args, []string{"run", "--config", "/etc/tcpd/tcpd.yaml"}) {
		t.Errorf("args %q", c.Args)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	vols := map[string]corev1.Volume{}
	for _, v := range r.daemonSet.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	cv := vols["config"].ConfigMap
	if cv == nil || cv.Name != r.configMap.Name || mounts["config"].MountPath != "/etc/tcpd" || !mounts["config"].ReadOnly {
		t.Errorf("the config volume %+v / mount %+v does not put ConfigMap %s at /etc/tcpd", vols["config"], mounts["config"], r.configMap.Name)
	}
	// The admin socket lives in a writable volume (the root file system is
	// read-only).
	if dir := filepath.Dir(cfg.Admin.Socket); cfg.Admin.Socket != "" && (mounts["run"].MountPath != dir || vols["run"].EmptyDir == nil) {
		t.Errorf("admin.socket %s is not in the emptyDir mounted at %s", cfg.Admin.Socket, mounts["run"].MountPath)
	}
}

// TestDaemonSet checks what makes the DaemonSet a safe gateway: the host's
// network, CAP_NET_ADMIN alone and no root, /dev/net/tun, probes on the
// daemon's own health endpoints and port, a grace period above
// shutdown_grace, one gateway at a time in a rollout, and a memory limit
// that tcpd's own (limits.memory) fits in.
func TestDaemonSet(t *testing.T) {
	r := render(t)
	ds := r.daemonSet
	ps := ds.Spec.Template.Spec
	c := container(t, ds)
	_, cfg := configMapConfig(t, r)

	if !ps.HostNetwork {
		t.Error("not on the host network: tcpd's TUN and upstream sockets must be the node's")
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("the pod mounts an API token")
	}
	if ps.PriorityClassName != r.priority.Name {
		t.Errorf("priorityClassName %q, want %q", ps.PriorityClassName, r.priority.Name)
	}

	// Who it runs as. 65532 is the image's user (deploy/image).
	sc, psc := c.SecurityContext, ps.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and runAsUser 65532", psc)
	}
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no container securityContext with capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("capabilities drop %v add %v, want drop [ALL] add [NET_ADMIN]", sc.Capabilities.Drop, sc.Capabilities.Add)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the root file system is writable")
	}

	// The TUN device.
	var tun *corev1.Volume
	for i, v := range ps.Volumes {
		if v.HostPath != nil && v.HostPath.Path == "/dev/net/tun" {
			tun = &ps.Volumes[i]
		}
	}
	if tun == nil || tun.HostPath.Type == nil || *tun.HostPath.Type != corev1.HostPathCharDev {
		t.Fatalf("no hostPath /dev/net/tun of type CharDevice: %+v", tun)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == tun.Name && m.MountPath == "/dev/net/tun" }) {
		t.Error("/dev/net/tun is not mounted at /dev/net/tun")
	}
	for _, v := range ps.Volumes {
		if v.HostPath != nil && v.Name != tun.Name {
			t.Errorf("volume %s: hostPath %s; tcpd needs only /dev/net/tun from the host", v.Name, v.HostPath.Path)
		}
	}

	// Probes: the daemon's paths, on the port the configuration listens on.
	_, port, err := net.SplitHostPort(cfg.Metrics.Listen)
	if err != nil {
		t.Fatalf("metrics.listen %q: %v", cfg.Metrics.Listen, err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Metrics.Listen); host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("metrics.listen %q: the kubelet probes and Prometheus scrapes the node's address, not %s", cfg.Metrics.Listen, host)
	}
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	if p, ok := ports["metrics"]; !ok || strconv.Itoa(int(p.ContainerPort)) != port || p.Protocol != corev1.ProtocolTCP {
		t.Errorf("container port metrics %+v, want TCP %s (metrics.listen %s)", p, port, cfg.Metrics.Listen)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, metrics.ReadyzPath},
		{"readinessProbe", c.ReadinessProbe, metrics.ReadyzPath},
		{"livenessProbe", c.LivenessProbe, metrics.HealthzPath},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: no httpGet", pr.name)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path {
			t.Errorf("%s path %s, want %s", pr.name, g.Path, pr.path)
		}
		if g.Port != intstr.FromString("metrics") && g.Port.String() != port {
			t.Errorf("%s port %s, want metrics (%s)", pr.name, g.Port.String(), port)
		}
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s scheme %s: tcpd serves plain HTTP", pr.name, g.Scheme)
		}
	}
	// Liveness gives a wedged loop no less time than the watchdog does
	// (tcpd calls itself wedged after 5 s on one batch), and the start
	// gets longer than liveness would.
	if l, s := c.LivenessProbe, c.StartupProbe; l != nil && s != nil {
		if kill := l.PeriodSeconds * l.FailureThreshold; kill < 10 {
			t.Errorf("liveness kills after %ds of failures; give it at least 10s", kill)
		}
		if start := s.PeriodSeconds * s.FailureThreshold; start < 30 {
			t.Errorf("the startup probe allows %ds; give a start at least 30s", start)
		}
	}

	// Shutdown: the pod's grace period covers tcpd's drain.
	grace, err := time.ParseDuration(cfg.ShutdownGrace)
	if err != nil {
		t.Fatalf("shutdown_grace %q: %v", cfg.ShutdownGrace, err)
	}
	if tg := ps.TerminationGracePeriodSeconds; tg == nil || time.Duration(*tg)*time.Second < grace+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v is not above shutdown_grace %v by 5s or more", fmtPtr(tg), grace)
	}

	// Rollout: one gateway at a time, never two tcpd on a node.
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil {
		t.Fatalf("updateStrategy %+v, want RollingUpdate", u)
	}
	if mu := u.RollingUpdate.MaxUnavailable; mu == nil || *mu != intstr.FromInt32(1) {
		t.Errorf("maxUnavailable %v, want 1", mu)
	}
	if ms := u.RollingUpdate.MaxSurge; ms != nil && ms.IntValue() != 0 {
		t.Errorf("maxSurge %v, want 0", ms)
	}
	if ds.Spec.MinReadySeconds < 5 {
		t.Errorf("minReadySeconds %d: the next gateway would go before this one has settled", ds.Spec.MinReadySeconds)
	}

	// Memory: tcpd's own limit within the container's, leaving the quarter
	// tcpd leaves for the kernel's socket buffers.
	lim, ok := c.Resources.Limits[corev1.ResourceMemory]
	req := c.Resources.Requests[corev1.ResourceMemory]
	if !ok || lim.IsZero() {
		t.Fatal("no memory limit")
	}
	if req.Cmp(lim) != 0 {
		t.Errorf("memory request %s != limit %s: a gateway should not be the first evicted", req.String(), lim.String())
	}
	if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
		t.Error("no CPU request")
	}
	if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit throttles the packet loop; request CPU instead")
	}
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			t.Errorf("GOMEMLIMIT=%s overrides tcpd's own memory limit (limits.memory)", e.Value)
		}
	}
	own, why := tcpdMemoryLimit(t, cfg)
	share := float64(own) / float64(lim.Value())
	if share > 0.75 || share < 0.5 {
		t.Errorf("tcpd's own memory limit %s (%s) is %.0f%% of the container's %s: it must fit in the 3/4 tcpd allows itself, and use at least half",
			fmtMiB(own), why, 100*share, lim.String())
	}
	t.Logf("tcpd's memory limit %s (%s), %.0f%% of the container's %s", fmtMiB(own), why, 100*share, lim.String())
}

// The auto memory limit, as cmd/tcpd/memlimit.go computes it: 64 MiB and
// 64 KiB per connection limits.max_connections allows. (Capped at 3/4 of
// the container's memory, which TestDaemonSet requires it to fit in; the
// podman test reads the limit the running tcpd chose.)
const (
	memBase    = 64 << 20
	memPerConn = 64 << 10
)

// tcpdMemoryLimit is the memory limit tcpd sets itself for the gateway
// configuration, and why.
func tcpdMemoryLimit(t *testing.T, cfg gatewayConfig) (int64, string) {
	t.Helper()
	conns := int64(65536) // limits.max_connections' default
	if cfg.Limits.MaxConnections != nil {
		conns = *cfg.Limits.MaxConnections
	}
	switch m := cfg.Limits.Memory; m {
	case "", "auto":
		return memBase + conns*memPerConn, fmt.Sprintf("auto, %d connections", conns)
	case "off":
		t.Fatal("limits.memory: off: tcpd would set no memory limit of its own")
	default:
		n, err := parseGoMemLimit(m)
		if err != nil {
			t.Fatalf("limits.memory %q: %v", m, err)
		}
		return n, "limits.memory"
	}
	return 0, ""
}

func fmtMiB(n int64) string { return strconv.FormatInt(n>>20, 10) + "MiB" }

// parseGoMemLimit parses a size as limits.memory and GOMEMLIMIT take it:
// bytes with an optional B, KiB, MiB, GiB or TiB suffix.
func parseGoMemLimit(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("not a byte count the Go runtime reads")
	}
	return n * mult, nil
}

// TestPodMonitor: Prometheus finds the pods, on the metrics port, with the
// job label the rules select and the node as the instance.
func TestPodMonitor(t *testing.T) {
	r := render(t)
	pm, ds := r.podMonitor, r.daemonSet
	if pm == nil {
		t.Fatal("no PodMonitor")
	}
	podLabels := ds.Spec.Template.Labels
	for k, v := range pm.Spec.Selector.MatchLabels {
		if podLabels[k] != v {
			t.Errorf("selector %s=%s does not match the pods' labels %v", k, v, podLabels)
		}
	}
	if len(pm.Spec.Selector.MatchLabels) == 0 && len(pm.Spec.Selector.MatchExpressions) == 0 {
		t.Error("the PodMonitor selects every pod")
	}
	if pm.Namespace != ds.Namespace && !slices.Contains(pm.Spec.NamespaceSelector.MatchNames, ds.Namespace) {
		t.Errorf("PodMonitor in %s does not look in %s", pm.Namespace, ds.Namespace)
	}
	// The rules select job="tcpd".
	if job := podLabels[pm.Spec.JobLabel]; job != "tcpd" {
		t.Errorf("jobLabel %q gives job %q, want tcpd", pm.Spec.JobLabel, job)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || *ep.Port != "metrics" {
		t.Errorf("endpoint port %v, want metrics", ep.Port)
	}
	if !slices.ContainsFunc(container(t, ds).Ports, func(p corev1.ContainerPort) bool { return ep.Port != nil && p.Name == *ep.Port }) {
		t.Errorf("the container has no port %v", ep.Port)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("path %q", ep.Path)
	}
	instance := false
	for _, rl := range ep.RelabelConfigs {
		if rl.TargetLabel == "instance" && slices.Equal(rl.SourceLabels, []monitoringv1.LabelName{"__meta_kubernetes_pod_node_name"}) {
			instance = true
		}
	}
	if !instance {
		t.Error("instance is not the node's name: one gateway per node")
	}
}

// ruleFiles maps each PrometheusRule to the rule file it must carry.
var ruleFiles = map[string]struct{ file, manifest string }{
	"tcpd":       {"deploy/prometheus/alerts.yaml", "prometheusrule.yaml"},
	"tcpd-fleet": {"deploy/prometheus/fleet.yaml", "prometheusrule-fleet.yaml"},
}

// TestPrometheusRules: each PrometheusRule carries exactly the groups of
// its rule file in deploy/prometheus, which promtool tests. go test
// -update rewrites the manifests from the files.
func TestPrometheusRules(t *testing.T) {
	if *update {
		for name, f := range ruleFiles {
			writeRuleManifest(t, name, f.file, f.manifest)
		}
	}
	r := render(t)
	for name, f := range ruleFiles {
		pr, ok := r.rules[name]
		if !ok {
			t.Errorf("no PrometheusRule %s", name)
			continue
		}
		var want monitoringv1.PrometheusRuleSpec
		b, err := os.ReadFile(filepath.Join(repoRoot(t), f.file))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, &want); err != nil {
			t.Fatalf("%s as a PrometheusRule spec: %v", f.file, err)
		}
		got, _ := yaml.Marshal(pr.Spec)
		exp, _ := yaml.Marshal(want)
		if !bytes.Equal(got, exp) {
			t.Errorf("PrometheusRule %s differs from %s; run go test ./... -update in deploy/kubernetes", name, f.file)
		}
		n := 0
		for _, g := range want.Groups {
			n += len(g.Rules)
		}
		if n == 0 {
			t.Errorf("%s has no rules", f.file)
		}
		if pr.Labels["app.kubernetes.io/name"] != "tcpd" {
			t.Errorf("PrometheusRule %s labels %v", name, pr.Labels)
		}
	}
}

// writeRuleManifest writes a PrometheusRule whose spec is the rule file's
// text, indented, so that comments and block scalars stay as they are.
func writeRuleManifest(t *testing.T, name, file, manifest string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "# Generated from %s by \"go test ./... -update\" in deploy/kubernetes;\n", file)
	out.WriteString("# edit that file, not this one. Give it the label your Prometheus'\n")
	out.WriteString("# ruleSelector matches (kustomize \"labels:\").\n")
	fmt.Fprintf(&out, "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: %s\n  labels:\n    app.kubernetes.io/name: tcpd\nspec:\n", name)
	body := false
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !body && (strings.HasPrefix(line, "#") || line == "") {
			continue // the file's own header
		}
		body = true
		if line == "" {
			out.WriteString("\n")
		} else {
			out.WriteString("  " + line + "\n")
		}
	}
	if err := os.WriteFile(manifest, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImageName: the kustomization runs the image "make image" names
// (localhost/tcpd:<version>) until the operator points it at a registry.
func TestImageName(t *testing.T) {
	c := container(t, render(t).daemonSet)
	if !strings.HasPrefix(c.Image, "localhost/tcpd:") {
		t.Errorf("image %q, want localhost/tcpd:<tag> as make image names it", c.Image)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy %q", c.ImagePullPolicy)
	}
}

// TestKubernetesSDExample: the Prometheus example for Kubernetes discovery
// without the Operator keeps exactly the DaemonSet's pods.
func TestKubernetesSDExample(t *testing.T) {
	r := render(t)
	var cfg struct {
		ScrapeConfigs []struct {
			JobName             string `json:"job_name"`
			KubernetesSDConfigs []struct {
				Role       string `json:"role"`
				Namespaces struct {
					Names []string `json:"names"`
				} `json:"namespaces"`
			} `json:"kubernetes_sd_configs"`
			RelabelConfigs []struct {
				SourceLabels []string `json:"source_labels"`
				Regex        string   `json:"regex"`
				Action       string   `json:"action"`
				TargetLabel  string   `json:"target_label"`
			} `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/prometheus/examples/kubernetes-sd.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.ScrapeConfigs) != 1 || len(cfg.ScrapeConfigs[0].KubernetesSDConfigs) != 1 {
		t.Fatalf("want one job with one kubernetes_sd_configs: %+v", cfg)
	}
	sc := cfg.ScrapeConfigs[0]
	sd := sc.KubernetesSDConfigs[0]
	if sd.Role != "pod" || !slices.Contains(sd.Namespaces.Names, r.daemonSet.Namespace) {
		t.Errorf("discovers role %s in %v, want pods in %s", sd.Role, sd.Namespaces.Names, r.daemonSet.Namespace)
	}
	// The meta labels Prometheus gives a pod of the DaemonSet.
	c := container(t, r.daemonSet)
	meta := map[string]string{
		"__meta_kubernetes_pod_container_port_name": c.Ports[0].Name,
		"__meta_kubernetes_pod_node_name":           "node-1",
		"__meta_kubernetes_pod_name":                "tcpd-x7k2p",
	}
	for k, v := range r.daemonSet.Spec.Template.Labels {
		meta["__meta_kubernetes_pod_label_"+regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(k, "_")] = v
	}
	for _, rl := range sc.RelabelConfigs {
		var vals []string
		for _, l := range rl.SourceLabels {
			vals = append(vals, meta[l])
		}
		v := strings.Join(vals, ";")
		switch rl.Action {
		case "keep":
			if !regexp.MustCompile("^(?:" + rl.Regex + ")$").MatchString(v) {
				t.Errorf("relabel keep %v=~%q drops the DaemonSet's pod (%q)", rl.SourceLabels, rl.Regex, v)
			}
		case "", "replace":
			meta[rl.TargetLabel] = v
		}
	}
	if sc.JobName != "tcpd" || meta["instance"] != "node-1" {
		t.Errorf("job %q instance %q, want tcpd and the node", sc.JobName, meta["instance"])
	}
}

func fmtPtr[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}
