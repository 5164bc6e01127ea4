// Package harness runs real PlasmaCloud binaries as child processes of a Go test and
// injects process faults into them: SIGKILL, SIGSTOP/SIGCONT, SIGTERM with a deadline,
// restart on the same arguments (and therefore the same data directory).
//
// It is the third and fourth tier of the testing pyramid in docs: the suite's services are
// started exactly as an operator starts them, on loopback ports from [FreePorts], and a
// test talks to them over the network like any client.
//
// A typical test:
//
//	bin := harness.Binary(t, "plasmacloud.dev/chainfire/cmd/chainfire")
//	ports, err := harness.FreePorts(2)
//	if err != nil {
//		t.Fatal(err)
//	}
//	c := harness.NewCluster(t)
//	c.Add(harness.ProcessConfig{
//		Name:     "cf1",
//		Path:     bin,
//		Args:     []string{"server", "--name", "cf1", "--data-dir", t.TempDir(), ...},
//		ReadyURL: fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[0]),
//	})
//	if err := c.Start(); err != nil {
//		t.Fatal(err)
//	}
//	if err := c.WaitReady(ctx); err != nil {
//		t.Fatal(err)
//	}
//	c.Proc(0).Kill() // SIGKILL, then Restart() on the same data directory
//
// # Ownership and cleanup
//
// Every [Process] belongs to the testing.TB it was created with. When that test ends the
// harness kills the process and every process in its process group, and, if the test
// failed, prints the last lines of each process's log (stdout and stderr interleaved) to
// the test output; when PLASMA_TEST_LOG_DIR is set, the full logs are also copied there.
//
// # Binaries
//
// [Binary] returns $PLASMA_BIN_DIR/<name> when that variable is set (`make test` sets it
// after `make build`), and otherwise builds the command from the workspace once per test
// binary with [Build].
//
// # Extending with network namespaces
//
// All processes are spawned in one place, from [ProcessConfig]; its Wrap hook rewrites
// the argv just before exec, so that a fault-injection layer can run a node inside a
// network namespace (`ip netns exec NAME ...`, which execs in place and keeps the pid)
// without changing how tests drive processes. Such tests call [RequireRoot] first.
//
// The package imports nothing from PlasmaCloud's services, so any module may use it;
// a test enforces that.
package harness
