// Package kubernetes holds no code: its tests check the manifests in this
// directory (a kustomization running tcpd as a DaemonSet, with a PodMonitor
// and PrometheusRules) by building them with kustomize's own library and
// decoding every object strictly into the upstream types, and run the
// DaemonSet's pod under podman in a network namespace. It is a Go module of
// its own so that tcpd's go.mod carries none of Kubernetes' dependencies.
package kubernetes
