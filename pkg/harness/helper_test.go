package harness_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

// helperEnv switches the test binary into the helper program of these tests: run with it
// set, the binary does what its arguments say instead of running tests (the re-exec
// pattern of os/exec's own tests).
const helperEnv = "HARNESS_TEST_HELPER=1"

func TestMain(m *testing.M) {
	if os.Getenv("HARNESS_TEST_HELPER") == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helperMain is a tiny program with one behaviour per first argument:
//
//	print A B ...     writes "out:A" to stdout and "err:B" to stderr per argument, exits 0
//	exit N            exits with status N
//	sleep             prints "ready pid=P args=..." and blocks
//	graceful N        like sleep; on SIGTERM prints "got SIGTERM" and exits N
//	ignore-term       like sleep, ignoring SIGTERM
//	serve ADDR D      serves /readyz on ADDR: 503 for duration D, then 200
//	spawn             starts a "sleep" child, prints "child pid=P" and blocks
func helperMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no command")
		return 2
	}
	ready := func() { fmt.Printf("ready pid=%d args=%s\n", os.Getpid(), strings.Join(args, " ")) }
	switch args[0] {
	case "print":
		for _, a := range args[1:] {
			fmt.Fprintln(os.Stdout, "out:"+a)
			fmt.Fprintln(os.Stderr, "err:"+a)
		}
		return 0
	case "exit":
		n, _ := strconv.Atoi(args[1])
		return n
	case "sleep":
		ready()
		select {}
	case "graceful":
		n, _ := strconv.Atoi(args[1])
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		ready()
		<-ch
		fmt.Println("got SIGTERM")
		return n
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		ready()
		select {}
	case "serve":
		delay, _ := time.ParseDuration(args[2])
		readyAt := time.Now().Add(delay)
		http.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if time.Now().Before(readyAt) {
				http.Error(w, "starting", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		fmt.Println("listening on", args[1])
		if err := http.ListenAndServe(args[1], nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "spawn":
		cmd := exec.Command(os.Args[0], "sleep")
		cmd.Env = os.Environ()
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("child pid=%d\n", cmd.Process.Pid)
		select {}
	default:
		fmt.Fprintln(os.Stderr, "helper: unknown command", args[0])
		return 2
	}
}

// helper returns the configuration of a helper process running args.
func helper(t *testing.T, name string, args ...string) harness.ProcessConfig {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Under -race the helper would sleep a second at exit (atexit_sleep_ms) to flush reports.
	env := []string{helperEnv, "GORACE=atexit_sleep_ms=0"}
	return harness.ProcessConfig{Name: name, Path: exe, Args: args, Env: env}
}
