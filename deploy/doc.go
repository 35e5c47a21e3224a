// Package deploy holds no code: its tests check the files in this directory
// that put tcpd into production, against the real tools and a real tcpd.
// systemd/ (the unit and the sysusers file) is verified with systemd-analyze
// and run under a real systemd in a systemd-nspawn container; grafana/ (the
// dashboard) and prometheus/ (the alerting rules) are checked against a
// live tcpd scraped by a real Prometheus and with promtool; deb/ builds the
// Debian package that "make deb" makes. Tests that need root or a missing
// tool skip, saying which.
package deploy
