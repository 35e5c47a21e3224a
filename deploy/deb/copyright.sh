#!/bin/sh
# Prints the Debian copyright file (machine-readable format 1.0) of a tcpd
# binary: deploy/deb/copyright.sh BINARY. build.sh runs it. First tcpd's own
# paragraphs (deploy/deb/copyright), then one for the Go standard library
# and one for each module the binary was linked with (go version -m), with
# the copyright lines and the text of its licence and NOTICE files: the
# binary is static, so it carries their code, and their licences ask for
# their notices to go with it. Environment: GO (default go); the modules
# must be in the module cache, as they are after the build.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 BINARY" >&2
	exit 2
fi
bin=$1
go=${GO:-go}
root=$(cd "$(dirname "$0")/../.." && pwd)

# indent prints a file as the continuation lines of a field: each line
# after one space, an empty line as " .", without the leading empty lines.
indent() {
	sed -e '/[^[:space:]]/,$!d' -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$@"
}

# paragraph NAME DIR: the paragraph of the code in DIR, whose licence file
# it looks for there.
paragraph() {
	name=$1 dir=$2
	license=
	for f in LICENSE LICENSE.txt LICENSE.md LICENCE COPYING; do
		if [ -f "$dir/$f" ]; then
			license=$dir/$f
			break
		fi
	done
	if [ -z "$license" ]; then
		echo "$0: $name: no licence file in $dir" >&2
		exit 1
	fi
	notice=
	[ -f "$dir/NOTICE" ] && notice=$dir/NOTICE

	# The licences' own words; a file may hold more than one.
	names=
	grep -q 'Apache License' "$license" && grep -q 'Version 2\.0' "$license" && names="${names:+$names and }Apache-2.0"
	grep -q 'Permission is hereby granted, free of charge' "$license" && names="${names:+$names and }Expat"
	if grep -q 'Redistribution and use in source and binary forms' "$license"; then
		if grep -Eq 'Neither the name|names of its contributors' "$license"; then
			names="${names:+$names and }BSD-3-clause"
		else
			names="${names:+$names and }BSD-2-clause"
		fi
	fi
	grep -q 'Mozilla Public License' "$license" && names="${names:+$names and }MPL-2.0"
	[ -n "$names" ] || names=other

	# Copyright lines, but not the Apache licence's template for them.
	holders=$(cat "$license" ${notice:+"$notice"} | sed -n 's/^[[:space:]]*\(Copyright .*\)/\1/p' |
		grep -v '\[yyyy\]\|{yyyy}' | sed 's/[[:space:]]*$//' | LC_ALL=C sort -u)
	[ -n "$holders" ] || holders="the authors of $name"

	echo
	echo "Files: $name/*"
	echo "Copyright: $(printf '%s\n' "$holders" | head -n 1)"
	printf '%s\n' "$holders" | tail -n +2 | sed 's/^/ /'
	echo "License: $names"
	if [ "$names" = Apache-2.0 ]; then
		echo " On Debian systems the full text of the Apache License 2.0 is in"
		echo " /usr/share/common-licenses/Apache-2.0."
	else
		indent "$license"
	fi
	echo "Comment: statically linked into /usr/bin/tcpd."
	if [ -n "$notice" ]; then
		echo " Its NOTICE file:"
		echo " ."
		indent "$notice"
	fi
}

cat "$root/deploy/deb/copyright"

goroot=$(cd "$root" && "$go" env GOROOT)
goversion=$("$go" version "$bin" | sed 's/^.*: //')
paragraph "std@$goversion" "$goroot"

# dep lines: "dep PATH VERSION SUM", each followed by "=> PATH VERSION SUM"
# if replaced; the module cache holds the replacement.
"$go" version -m "$bin" | awk '
	$1 == "dep" { if (p != "") print p; p = $2 "@" $3 }
	$1 == "=>" { p = $2 "@" $3 }
	END { if (p != "") print p }' |
	while read -r mod; do
		dir=$(cd "$root" && "$go" mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
		if [ -z "$dir" ]; then
			echo "$0: $mod: not in the module cache" >&2
			exit 1
		fi
		paragraph "$mod" "$dir"
	done
