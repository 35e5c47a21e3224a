#!/bin/sh
# Prints the Debian version of the package built from a commit of the git
# checkout this script is in: deploy/deb/version.sh [COMMIT]. Without
# COMMIT it describes the work tree (HEAD, and "+dirty" if it has
# uncommitted changes). "make deb" runs it.
#
# dpkg must see each later commit of main as an upgrade, which commit hashes
# alone do not give (they compare in random order). The version is ordered
# by the last release tag vX.Y.Z, then by the committer date (UTC, to the
# second), then by the hash:
#
#   no tag:            0~git20261207233815.0af8a3c
#   on tag v1.2.0:     1.2.0
#   past tag v1.2.0:   1.2.0+git20261207233815.0af8a3c
#
# "0~" sorts before any release; a tag's "-rc1" becomes "~rc1", which sorts
# before the release itself. Committer dates follow main's history (a rebase
# or cherry-pick sets them anew), so two commits compare by hash only when
# committed within the same second.
set -eu

commit=${1:-HEAD}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! git rev-parse --verify --quiet "$commit^{commit}" >/dev/null; then
	echo "$0: $commit: not a commit of $root" >&2
	exit 1
fi
hash=$(git rev-parse --short "$commit^{commit}")
date=$(TZ=UTC git show -s --format=%cd --date=format-local:%Y%m%d%H%M%S "$commit^{commit}")

dirty=
if [ $# -eq 0 ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	dirty=+dirty
fi

# --long: "v1.2.0-0-gabc1234" on the tag itself, "v1.2.0-3-g..." past it.
if desc=$(git describe --tags --long --match 'v[0-9]*' "$commit" 2>/dev/null); then
	tag=${desc%-*-g*}
	distance=${desc#"$tag"-}
	distance=${distance%%-*}
	upstream=$(printf '%s' "${tag#v}" | sed -e 's/-/~/g' -e 's/[^A-Za-z0-9.+~]/+/g')
	if [ "$distance" = 0 ]; then
		echo "$upstream$dirty"
	else
		echo "$upstream+git$date.$hash$dirty"
	fi
else
	echo "0~git$date.$hash$dirty"
fi
