// Command tcpdbench measures tcpd against the kernel's own forwarding path
// in the same run and prints a table: bulk throughput, new connections per
// second, connect latency, memory per idle connection, CPU per GB and what
// each new connection costs tcpd (CPU, system calls, goroutines, context
// switches); with --base, a second tcpd binary alongside. It
// needs root (network namespaces, a TUN device); `sudo make bench` runs it.
// Progress goes to stderr, the table to stdout and everything, with the
// machine and the command, to the -out JSON file.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tcpd/bench"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == bench.IdleServerArg {
		// The idle test's server, started by the benchmark itself.
		if err := bench.RunIdleServer(os.Args[2], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tcpdbench idle-server:", err)
			os.Exit(1)
		}
		return
	}
	var cfg bench.Config
	flag.StringVar(&cfg.TCPD, "tcpd", "bin/tcpd", "tcpd `binary` to measure")
	flag.StringVar(&cfg.Base, "base", "", "a second tcpd `binary` (say, bin/tcpd-base from `make bench-base`) measured\nalongside, interleaved, for before/after figures from one run")
	flag.StringVar(&cfg.LossDetection, "loss-detection", "", "tcp.loss_detection (`mode`: rack or dupack) of the tcpd path instead of its default")
	flag.StringVar(&cfg.BaseLossDetection, "base-loss-detection", "", "tcp.loss_detection (`mode`) of the base path; with --base bin/tcpd, an A/B of loss\ndetection in one run")
	only := flag.String("only", "", "comma-separated `list` of the measurements to run: bulk, rate, count, latency, queues,\nidle, wireguard, soak (default: all but soak)")
	flag.DurationVar(&cfg.Soak, "soak", 3*time.Minute, "length of the soak (runs only with --only soak)")
	flag.StringVar(&cfg.Perf, "perf", "perf", "perf `binary` of the counting phase (system calls and goroutines per connection)")
	out := flag.String("out", "bench/out/results.json", "write the results as JSON to `file` (\"\" for none)")
	flag.IntVar(&cfg.Runs, "runs", 3, "repetitions of each measurement; the table shows medians")
	flag.DurationVar(&cfg.Bulk, "bulk", 5*time.Second, "length of one bulk transfer in one direction")
	flag.IntVar(&cfg.Streams, "streams", 0, "if above 1, also measure bulk throughput with this many parallel streams")
	flag.IntVar(&cfg.QueueStreams, "queue-streams", 8, "parallel streams each way of the bulk rows that compare tun.queues 1 and auto")
	flag.DurationVar(&cfg.ConnRate, "connrate", 3*time.Second, "length of one connection-rate run")
	flag.IntVar(&cfg.Workers, "workers", 64, "concurrent clients of the connection-rate test")
	flag.DurationVar(&cfg.Stuck, "stuck", 2*time.Second, "a connection of the rate test taking longer than this counts as stuck")
	flag.IntVar(&cfg.Connects, "connects", 1000, "sequential connects timed by the latency test")
	flag.IntVar(&cfg.Idle, "idle", 0, "idle connections to open; 0 (the default) opens as many as the open-file limits allow")
	flag.DurationVar(&cfg.IdleTimeWait, "idle-time-wait", 10*time.Second, "tcp.time_wait of the idle test's tcpd instances")
	flag.DurationVar(&cfg.IdleAfter, "idle-after", 10*time.Second, "read tcpd's RSS this long after TIME_WAIT has drained")
	flag.StringVar(&cfg.Offload, "offload", "", "set tcpd's tun.offload to `mode` (auto, on, off) instead of its default")
	flag.StringVar(&cfg.Queues, "queues", "", "set tun.queues of tcpd (and the base) to `n` (a number or auto) outside the queues phase")
	flag.StringVar(&cfg.ProfileCmd, "profile-cmd", "", "shell `command` run during each tcpd bulk transfer and stopped with SIGINT;\n{pid}, {seconds} and {name} are replaced, e.g.\n'perf record -g -p {pid} -o bench/out/{name}.perf.data'")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tcpdbench: needs root to create network namespaces and a TUN device (try: sudo make bench)")
		os.Exit(2)
	}
	cfg.Progress = os.Stderr
	os.Exit(run(cfg, *out))
}

func run(cfg bench.Config, out string) int {
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The first SIGINT or SIGTERM cancels the run, which then removes its
	// labs and processes; later ones are ignored so that the cleanup
	// finishes.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for range sigs {
			if n == 0 {
				fmt.Fprintln(os.Stderr, "tcpdbench: interrupted; removing the labs and stopping tcpd")
				cancel()
			} else {
				fmt.Fprintln(os.Stderr, "tcpdbench: still cleaning up, please wait")
			}
			n++
		}
	}()

	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "tcpdbench: interrupted; everything removed")
			return 130
		}
		fmt.Fprintln(os.Stderr, "tcpdbench:", err)
		return 1
	}
	rep.Command = os.Args
	fmt.Println()
	if err := rep.WriteTable(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tcpdbench:", err)
		return 1
	}
	if rep.Soak != nil {
		if err := rep.Soak.Write(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tcpdbench:", err)
			return 1
		}
	}
	if out != "" {
		if err := writeJSON(out, rep); err != nil {
			fmt.Fprintln(os.Stderr, "tcpdbench:", err)
			return 1
		}
		fmt.Printf("results: %s\n", out)
	}
	fmt.Printf("total time: %v (%d CPUs, Linux %s, %s)\n", time.Since(start).Round(100*time.Millisecond),
		rep.Machine.NProc, rep.Machine.Kernel, rep.Machine.GoVersion)
	return 0
}

func writeJSON(path string, rep *bench.Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
