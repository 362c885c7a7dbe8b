// Command istiod-harness runs Istio's own discovery server (with the ambient index) and
// Istio's CA server on one TLS port over a fake Kubernetes cluster, for meshd's end-to-end
// tests: the peer meshd talks to is istiod's code, not meshd's reading of it.
//
// It prints one JSON line {"ready":true,"address":...} when serving, then answers JSON
// requests on stdin with one JSON line each on stdout (see control.go); it stops when stdin
// closes or on SIGTERM. Logs go to stderr.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	istiolog "istio.io/istio/pkg/log"
)

// ambientEnv must be set before istio's packages initialise: pilot/pkg/features reads it
// (and the ambient-only flags derived from it) in package initialisers, before main runs.
const ambientEnv = "PILOT_ENABLE_AMBIENT"

func main() {
	if os.Getenv(ambientEnv) != "true" {
		reexecWithAmbient()
	}
	var opts options
	flag.StringVar(&opts.dir, "dir", "", "state dir: the root CA, token key and cluster state (created if absent, reused if present)")
	flag.StringVar(&opts.addr, "addr", "127.0.0.1:0", "address of the TLS port (istiod's 15012)")
	flag.StringVar(&opts.trustDomain, "trust-domain", "cluster.local", "the mesh's trust domain")
	flag.StringVar(&opts.clusterID, "cluster-id", "Kubernetes", "the cluster's ID (istiod's CLUSTER_ID; callers send it in the clusterid header)")
	flag.StringVar(&opts.config, "config", "", "YAML file of the cluster's objects at start (replaces the state dir's)")
	flag.Parse()
	if opts.dir == "" {
		log.Fatal("--dir is required")
	}

	replies := stdoutForReplies()
	configureLogs()

	h, err := start(opts)
	if err != nil {
		log.Fatalf("istiod harness: %v", err)
	}
	ready, _ := json.Marshal(map[string]any{
		"ready":       true,
		"address":     h.listener.Addr().String(),
		"rootCert":    filepath.Join(opts.dir, rootCertFile),
		"trustDomain": opts.trustDomain,
		"clusterId":   opts.clusterID,
	})
	_, _ = replies.Write(append(ready, '\n'))

	done := make(chan struct{})
	go func() {
		h.serveControl(os.Stdin, replies)
		close(done)
	}()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-signals:
	}
	h.stop()
}

// reexecWithAmbient runs this binary again with PILOT_ENABLE_AMBIENT=true (istiod refuses
// ztunnel nodes without it, and the ambient index is built only with it).
func reexecWithAmbient() {
	self, err := os.Executable()
	if err != nil {
		log.Fatalf("istiod harness: own path: %v", err)
	}
	env := append(os.Environ(), ambientEnv+"=true")
	err = syscall.Exec(self, os.Args, env)
	log.Fatalf("istiod harness: re-exec with %s=true: %v", ambientEnv, err)
}

// stdoutForReplies keeps the process's stdout for control replies only and points file
// descriptor 1 at stderr, so nothing a library prints can be mistaken for a reply.
func stdoutForReplies() *os.File {
	fd, err := syscall.Dup(1)
	if err != nil {
		log.Fatalf("istiod harness: dup stdout: %v", err)
	}
	if err := syscall.Dup3(2, 1, 0); err != nil {
		log.Fatalf("istiod harness: stdout to stderr: %v", err)
	}
	return os.NewFile(uintptr(fd), "replies")
}

// configureLogs sends istio's logs to stderr at istiod's default level: its info lines
// (pushes, refused connections with the reason) are what explain a failed test.
func configureLogs() {
	o := istiolog.DefaultOptions()
	o.OutputPaths = []string{"stderr"}
	o.ErrorOutputPaths = []string{"stderr"}
	if err := istiolog.Configure(o); err != nil {
		log.Printf("istiod harness: configure logs: %v", err)
	}
}
