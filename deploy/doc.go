// Package deploy holds no code: its tests check the files in this directory
// that put tcpd into production, against the real tools and a real tcpd.
// systemd/ (the unit and the sysusers file) is verified with systemd-analyze
// and run under a real systemd in a systemd-nspawn container; grafana/ (the
// dashboard) and prometheus/ (the alerting and fleet recording rules, the
// example configurations) are checked against live tcpd gateways scraped by
// real Prometheus servers and with promtool; deb/ builds the Debian package
// that "make deb" makes; the image that "make image" builds (image/, a
// module of its own) is run under podman. Tests that need root or a missing
// tool skip, saying which.
package deploy
