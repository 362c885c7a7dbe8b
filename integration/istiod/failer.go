package main

import (
	"fmt"
	"log"
	"os"
	"sync"
)

// failer is the test.Failer that istio's pilot/test/xds package asks for: outside `go test`
// a failure inside the fake discovery server cannot fail a test, so it logs and exits the
// process (the Rust fixture sees the exit and the log on stderr). Cleanups run at shutdown.
type failer struct {
	mu       sync.Mutex
	cleanups []func()
	tempDir  string
}

func (f *failer) Fail()    { f.FailNow() }
func (f *failer) FailNow() { f.exit("failed") }
func (f *failer) Fatal(args ...any) {
	f.exit(fmt.Sprint(args...))
}

func (f *failer) Fatalf(format string, args ...any) {
	f.exit(fmt.Sprintf(format, args...))
}
func (f *failer) Log(args ...any)                 { log.Print(args...) }
func (f *failer) Logf(format string, args ...any) { log.Printf(format, args...) }
func (f *failer) Helper()                         {}

// Skip has no meaning outside a test; the fake never calls it on the paths used here.
func (f *failer) Skip(args ...any) { f.exit("skip: " + fmt.Sprint(args...)) }

// TempDir hands out one temporary directory, removed at shutdown.
func (f *failer) TempDir() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tempDir == "" {
		dir, err := os.MkdirTemp("", "istiod-harness-")
		if err != nil {
			f.mu.Unlock()
			f.exit(fmt.Sprintf("temp dir: %v", err))
		}
		f.tempDir = dir
	}
	return f.tempDir
}

func (f *failer) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// runCleanups runs the registered cleanups in reverse order, as testing.T does.
func (f *failer) runCleanups() {
	f.mu.Lock()
	cleanups := f.cleanups
	f.cleanups = nil
	dir := f.tempDir
	f.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}

func (f *failer) exit(msg string) {
	log.Printf("istiod harness: fatal: %s", msg)
	os.Exit(2)
}
