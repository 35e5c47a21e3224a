#!/bin/sh
# Runs the packet path's scaling benchmarks (conntrack's BenchmarkTable*,
# stack's BenchmarkReceivePath) at each -cpu of SCALING_CPUS, SCALING_COUNT
# times, and prints the medians. With a commit as argument, the same
# benchmarks built from that commit run too, interleaved run by run, so
# that a noisy machine weighs on both alike. See bench/README.md.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
cpus=${SCALING_CPUS:-1,2,4,8,16}
count=${SCALING_COUNT:-3}
out=$(pwd)/bench/out
mkdir -p "$out"

build() { # source directory, name
	(cd "$1" && $GO test -c -o "$out/$2-conntrack.test" ./conntrack && $GO test -c -o "$out/$2-stack.test" ./stack)
}
versions=tcpd
build . tcpd
if [ $# -gt 0 ]; then
	src=$(mktemp -d)
	trap 'rm -rf "$src"' EXIT
	git archive "$1" | tar -x -C "$src"
	build "$src" base
	versions="base tcpd"
fi

for v in $versions; do : > "$out/scaling-$v.txt"; done
i=0
while [ $i -lt "$count" ]; do
	for v in $versions; do
		"$out/$v-conntrack.test" -test.run '^$' -test.bench 'BenchmarkTable' -test.cpu "$cpus" >> "$out/scaling-$v.txt"
		(cd stack && "$out/$v-stack.test" -test.run '^$' -test.bench 'BenchmarkReceivePath' -test.cpu "$cpus") >> "$out/scaling-$v.txt"
	done
	i=$((i + 1))
done
for v in $versions; do
	echo "== $v (medians of $count; bench/out/scaling-$v.txt has every run)"
	$GO run ./bench/cmd/benchmedian < "$out/scaling-$v.txt"
done
