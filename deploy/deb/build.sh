#!/bin/sh
# Builds the Debian package of tcpd with dpkg-deb alone (no debhelper, no
# network): deploy/deb/build.sh OUTDIR VERSION [DEBVERSION] writes
# OUTDIR/tcpd-gateway_<DEBVERSION>_<arch>.deb and prints its path. "make deb"
# runs it. VERSION is what "tcpd version" prints; DEBVERSION, the package's
# version, defaults to what deploy/deb/version.sh says of the work tree
# (ordered along main's history, which VERSION is not). Environment: GO
# (default go), DEB_MAINTAINER.
#
# The package is tcpd-gateway: "tcpd" is Debian's TCP wrappers package,
# whose higher version apt would install over ours. The command, the unit,
# the user and /etc/tcpd keep the name tcpd.
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ] || [ -z "$1" ] || [ -z "$2" ]; then
	echo "usage: $0 OUTDIR VERSION [DEBVERSION]" >&2
	exit 2
fi
out=$1
version=$2
go=${GO:-go}
maintainer=${DEB_MAINTAINER:-tcpd maintainers <tcpd@example.invalid>}
root=$(cd "$(dirname "$0")/../.." && pwd)

debversion=${3:-$(sh "$root/deploy/deb/version.sh")}
# An upstream version without a Debian revision: a digit first, then only
# the characters Debian allows there other than "-" (Policy 5.6.12).
if ! printf '%s\n' "$debversion" | grep -Eqx '[0-9][A-Za-z0-9.+~]*'; then
	echo "$0: $debversion: not a Debian version (a digit, then letters, digits and . + ~)" >&2
	exit 2
fi

goarch=$(cd "$root" && "$go" env GOARCH)
case "$goarch" in
386) arch=i386 ;;
arm) arch=armhf ;;
ppc64le) arch=ppc64el ;;
*) arch=$goarch ;; # amd64, arm64, riscv64, s390x, loong64, mips64le
esac

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/tcpd-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
chmod 0755 "$stage"

# A static binary: the package then depends on no particular libc.
(cd "$root" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w -X main.version=$version" \
	-o "$stage/usr/bin/tcpd" ./cmd/tcpd)
chmod 0755 "$stage/usr/bin/tcpd"

install -D -m 0644 "$root/deploy/systemd/tcpd.service" "$stage/lib/systemd/system/tcpd.service"
install -D -m 0644 "$root/deploy/systemd/tcpd.sysusers" "$stage/usr/lib/sysusers.d/tcpd.conf"
install -D -m 0644 "$root/configs/tcpd.yaml" "$stage/etc/tcpd/tcpd.yaml"
pkg=tcpd-gateway
doc=$stage/usr/share/doc/$pkg
install -D -m 0644 "$root/README.md" "$doc/README.md"
GO="$go" sh "$root/deploy/deb/copyright.sh" "$stage/usr/bin/tcpd" >"$doc/copyright"
chmod 0644 "$doc/copyright"
# Not under /usr/share/doc, which container images and minimal systems
# leave out (dpkg --path-exclude).
install -D -m 0644 "$root/deploy/grafana/tcpd.json" "$stage/usr/share/$pkg/grafana/tcpd.json"
install -D -m 0644 "$root/deploy/prometheus/alerts.yaml" "$stage/usr/share/$pkg/prometheus/alerts.yaml"
install -D -m 0644 "$root/deploy/prometheus/fleet.yaml" "$stage/usr/share/$pkg/prometheus/fleet.yaml"

# changelog.gz (Policy 12.7, a native package's): one entry for this
# version, listing the commits since the release tag before this commit
# (all of them before the first tag), dated as the commit is, so that the
# same commit gives the same file.
{
	echo "$pkg ($debversion) unstable; urgency=medium"
	echo
	if commits=$(cd "$root" && git rev-parse --verify --quiet HEAD >/dev/null 2>&1 &&
		since=$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD^ 2>/dev/null || true) &&
		git log --no-merges --format='  * %s' ${since:+"$since..HEAD"}) && [ -n "$commits" ]; then
		echo "$commits"
		date=$(cd "$root" && TZ=UTC LC_ALL=C git log -1 --format=%cd --date='format-local:%a, %d %b %Y %H:%M:%S +0000')
	else
		echo "  * Built from a source tree outside git, version $version."
		date=$(TZ=UTC LC_ALL=C date ${SOURCE_DATE_EPOCH:+-d "@$SOURCE_DATE_EPOCH"} '+%a, %d %b %Y %H:%M:%S +0000')
	fi
	echo
	echo " -- $maintainer  $date"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

mkdir -p "$stage/DEBIAN"
for script in postinst prerm postrm; do
	install -m 0755 "$root/deploy/deb/$script" "$stage/DEBIAN/$script"
done
echo /etc/tcpd/tcpd.yaml >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
	xargs md5sum) >"$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

# Conflicts: Debian's tcpd installs a command tcpd too, in /usr/sbin, which
# comes before /usr/bin in root's PATH. Replaces: this package's earlier
# builds were named tcpd, at versions that compare anywhere from 0~... to
# 9999999: this one takes their files over, /etc/tcpd/tcpd.yaml as the
# edited conffile it is, and removes them (see postinst).
cat >"$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: systemd
Conflicts: tcpd
Replaces: tcpd
Section: net
Priority: optional
Description: userspace TCP terminator for VPN gateways
 tcpd terminates the TCP connections of VPN clients routed into its TUN
 device in a userspace network stack (gVisor) and relays each one to its
 real destination from the host's own sockets. It tracks every connection
 through the TCP state machine on both ends and exports connection states,
 handshake latency and TIME_WAIT use to Prometheus.
 .
 The package installs the command tcpd and the systemd unit tcpd.service,
 not enabled: edit /etc/tcpd/tcpd.yaml, route the clients' traffic into
 the TUN (see /usr/share/doc/$pkg/README.md), then
 "systemctl enable --now tcpd". A Grafana dashboard and Prometheus
 alerting rules are under /usr/share/$pkg.
 .
 Not related to Wietse Venema's TCP wrappers (Debian package tcpd), with
 which it conflicts.
CONTROL

mkdir -p "$out"
deb="$out/${pkg}_${debversion}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
