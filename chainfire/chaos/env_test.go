package chaos

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
)

// soak reports whether CHAOS_SOAK asks for the long version of the suite.
func soak() bool { return os.Getenv("CHAOS_SOAK") != "" && os.Getenv("CHAOS_SOAK") != "0" }

// scaled returns normal, or long under CHAOS_SOAK.
func scaled[T any](normal, long T) T {
	if soak() {
		return long
	}
	return normal
}

// electionTimeout is the servers' --election-timeout: the server's default, 500 ms,
// unless CHAOS_ELECTION_TIMEOUT (a Go duration) says otherwise, for comparing settings.
func electionTimeout() time.Duration {
	if v := os.Getenv("CHAOS_ELECTION_TIMEOUT"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return 500 * time.Millisecond
}

// env is a test's cluster with the bookkeeping the nemeses need: which members are
// paused, which were removed from the cluster, and a log of the faults injected. Its
// methods are safe for concurrent use (the nemesis and the checks run on different
// goroutines).
type env struct {
	t     *testing.T
	c     *chainfiretest.Cluster
	start time.Time
	hc    *http.Client

	mu      sync.Mutex
	rng     *rand.Rand
	paused  map[int]bool
	removed map[int]bool
	faults  []string
}

// newEnv starts a cluster of size members for t.
func newEnv(t *testing.T, size int, opts chainfiretest.Options) *env {
	t.Helper()
	if opts.ElectionTimeout == 0 {
		opts.ElectionTimeout = electionTimeout()
	}
	// CHAOS_SERVER_ARGS adds server flags, e.g. "--log-store wal" to try another log store.
	opts.ExtraArgs = append(opts.ExtraArgs, strings.Fields(os.Getenv("CHAOS_SERVER_ARGS"))...)
	c := chainfiretest.Start(t, size, opts)
	seed := uint64(time.Now().UnixNano())
	t.Logf("nemesis seed %d", seed)
	return &env{t: t, c: c, start: time.Now(), hc: &http.Client{Timeout: 500 * time.Millisecond},
		rng: rand.New(rand.NewPCG(seed, 1)), paused: map[int]bool{}, removed: map[int]bool{}}
}

// logf logs with the time since the cluster started, and keeps fault lines.
func (e *env) logf(format string, args ...any) {
	msg := fmt.Sprintf("[%6.2fs] ", time.Since(e.start).Seconds()) + fmt.Sprintf(format, args...)
	e.mu.Lock()
	e.faults = append(e.faults, msg)
	e.mu.Unlock()
	e.t.Log(msg)
}

// intn is a random number below n from the env's seeded source.
func (e *env) intn(n int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rng.IntN(n)
}

// jitter returns a random duration in [d/2, 3d/2).
func (e *env) jitter(d time.Duration) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return d/2 + time.Duration(e.rng.Int64N(int64(d)))
}

// members returns the indexes of the members that belong to the cluster (not removed).
func (e *env) members() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []int
	for i := range e.c.Members {
		if !e.removed[i] {
			out = append(out, i)
		}
	}
	return out
}

// endpoints returns the client URLs of the members in idx.
func (e *env) endpoints(idx ...int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, e.c.Members[i].ClientURL)
	}
	return out
}

// except returns the members other than those in skip.
func (e *env) except(skip ...int) []int {
	var out []int
	for _, i := range e.members() {
		if !contains(skip, i) {
			out = append(out, i)
		}
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// metrics reads unlabelled gauges from member i's /metrics with a short timeout.
func (e *env) metrics(i int, names ...string) (map[string]float64, error) {
	resp, err := e.hc.Get(e.c.Members[i].ClientURL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			if v, ok := strings.CutPrefix(line, n+" "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err == nil {
					out[n] = f
				}
			}
		}
	}
	return out, sc.Err()
}

// leader returns the member that reports itself leader in the highest term, asking the
// running, unpaused members of the cluster concurrently, waiting up to timeout; -1
// when none does.
func (e *env) leader(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		type answer struct {
			i    int
			term float64
		}
		var wg sync.WaitGroup
		answers := make(chan answer, len(e.c.Members))
		for _, i := range e.members() {
			if !e.c.Members[i].Running() || e.isPaused(i) {
				continue
			}
			wg.Go(func() {
				m, err := e.metrics(i, "chainfire_server_is_leader", "chainfire_server_raft_term")
				if err == nil && m["chainfire_server_is_leader"] == 1 {
					answers <- answer{i, m["chainfire_server_raft_term"]}
				}
			})
		}
		wg.Wait()
		close(answers)
		best := answer{i: -1}
		for a := range answers {
			if best.i < 0 || a.term > best.term {
				best = a
			}
		}
		if best.i >= 0 || time.Now().After(deadline) {
			return best.i
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustLeader is leader that fails the test when there is none within 15 s.
func (e *env) mustLeader() int {
	e.t.Helper()
	l := e.leader(15 * time.Second)
	if l < 0 {
		e.t.Fatal("no leader within 15s")
	}
	return l
}

func (e *env) isPaused(i int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.paused[i]
}

// kill SIGKILLs member i.
func (e *env) kill(i int) {
	e.logf("SIGKILL %s", e.c.Members[i].Name)
	if err := e.c.Members[i].Kill(); err != nil {
		e.t.Errorf("kill %s: %v", e.c.Members[i].Name, err)
	}
}

// start starts member i again on its data directory (after kill or terminate).
func (e *env) startMember(i int) {
	e.logf("start %s", e.c.Members[i].Name)
	if err := e.c.Members[i].Start(); err != nil {
		e.t.Errorf("start %s: %v", e.c.Members[i].Name, err)
	}
}

// pause SIGSTOPs member i.
func (e *env) pause(i int) {
	e.logf("SIGSTOP %s", e.c.Members[i].Name)
	e.mu.Lock()
	e.paused[i] = true
	e.mu.Unlock()
	if err := e.c.Members[i].Stop(); err != nil {
		e.t.Errorf("stop %s: %v", e.c.Members[i].Name, err)
	}
}

// resume SIGCONTs member i.
func (e *env) resume(i int) {
	e.logf("SIGCONT %s", e.c.Members[i].Name)
	if err := e.c.Members[i].Cont(); err != nil {
		e.t.Errorf("cont %s: %v", e.c.Members[i].Name, err)
	}
	e.mu.Lock()
	delete(e.paused, i)
	e.mu.Unlock()
}

// terminate shuts member i down gracefully (SIGTERM); it must exit cleanly.
func (e *env) terminate(i int) {
	e.logf("SIGTERM %s", e.c.Members[i].Name)
	start := time.Now()
	if err := e.c.Members[i].Terminate(20 * time.Second); err != nil {
		e.t.Errorf("%s did not shut down cleanly on SIGTERM: %v", e.c.Members[i].Name, err)
	}
	e.logf("%s exited after %v", e.c.Members[i].Name, time.Since(start).Round(time.Millisecond))
}

// waitReady waits until member i answers /readyz.
func (e *env) waitReady(i int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return e.c.Members[i].WaitReady(ctx)
}

// healAll undoes every fault: resumes paused members, heals the network, starts the
// members that are down, then waits until every member is ready.
func (e *env) healAll() {
	e.t.Helper()
	for _, i := range e.members() {
		if e.isPaused(i) {
			e.resume(i)
		}
	}
	e.healNetwork()
	for _, i := range e.members() {
		if !e.c.Members[i].Running() {
			e.startMember(i)
		}
	}
	for _, i := range e.members() {
		if err := e.waitReady(i, 30*time.Second); err != nil {
			e.t.Fatalf("%s not ready after healing: %v", e.c.Members[i].Name, err)
		}
	}
}

// client returns a client on the given endpoints, closed when the test ends.
func (e *env) client(timeout time.Duration, eps ...string) *chainfire.Client {
	e.t.Helper()
	cli, err := chainfire.New(chainfire.Config{Endpoints: eps, RequestTimeout: timeout, DialTimeout: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cli.Close() })
	return cli
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
