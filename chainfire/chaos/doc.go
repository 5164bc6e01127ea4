// Package chaos is ChainFire's fault-injection suite: real `chainfire server` processes
// (started by pkg/chainfiretest) run a register workload of several concurrent clients
// while a nemesis kills, pauses, restarts, partitions or reconfigures members, and the
// recorded histories are then checked:
//
//   - for linearizability with porcupine, against a key-value model with
//     compare-and-swap, one register per key (model.go, check.go);
//   - for revisions that respect real time, per client and across clients;
//   - against the event streams of resumable watchers: every acknowledged write is
//     there, at its revision, exactly once and in order, every watcher saw the same
//     stream, and no write the client was told had failed shows up;
//   - against every member's store at a quiet point at the end: the same keys, values
//     and hash on each, equal to what the watchers saw (no acknowledged write lost).
//
// The non-test files hold the pieces that do not need a cluster: the history recorder,
// the workload and watchers (which talk to any endpoints through pkg/chainfire), the
// model and the checkers. The tests (TestChaos*) own the clusters and the nemeses; `make
// chaos` runs them. CHAOS_SOAK=1 makes every test run longer and repeat more.
//
// A failed check writes porcupine's visualization and the full history under
// $PLASMA_TEST_LOG_DIR/chaos (or a fresh temporary directory) and prints the path and
// the offending part of the history.
package chaos
