package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
)

// clientFlags are the flags every client subcommand shares.
type clientFlags struct {
	endpoints []string
	tokenFile string
}

func (c *clientFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&c.endpoints, "endpoints", nil, "WatchBus replica URLs (env PLASMA_WATCHBUS_ENDPOINTS; default http://127.0.0.1:7002)")
	f.StringVar(&c.tokenFile, "token-file", "", "file holding the access token (a bare token, or the JSON `iam login` saves); default: env PLASMA_TOKEN")
}

func (c *clientFlags) resolve() (endpoints []string, token string, err error) {
	endpoints = c.endpoints
	if len(endpoints) == 0 {
		if v := os.Getenv("PLASMA_WATCHBUS_ENDPOINTS"); v != "" {
			endpoints = strings.Split(v, ",")
		} else {
			endpoints = []string{"http://127.0.0.1:7002"}
		}
	}
	for i, e := range endpoints {
		if !strings.Contains(e, "://") {
			endpoints[i] = "http://" + e
		}
	}
	switch {
	case c.tokenFile != "":
		b, rerr := os.ReadFile(c.tokenFile)
		if rerr != nil {
			return nil, "", fmt.Errorf("--token-file: %w", rerr)
		}
		token = strings.TrimSpace(string(b))
		var saved struct {
			AccessToken string `json:"access_token"`
		}
		if strings.HasPrefix(token, "{") && json.Unmarshal(b, &saved) == nil {
			token = saved.AccessToken
		}
	default:
		token = os.Getenv("PLASMA_TOKEN")
	}
	return endpoints, token, nil
}

// bearer adds the token to streaming calls.
type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }
func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, s connect.Spec) connect.StreamingClientConn {
		c := next(ctx, s)
		if b != "" {
			c.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return c
	}
}
func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Exit codes of subscribe beyond 0 and 1.
const (
	exitCompacted = 3 // the start revision is compacted: relist
)

func subscribeCommand() *cobra.Command {
	var (
		cf                          clientFlags
		prefixes                    []string
		rev                         int64
		prevKV, snapshot, bookmarks bool
		output                      = cliout.Output{Human: "text"}
		interval                    time.Duration
		maxEvents                   int
		timeout                     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "subscribe --prefix P [--prefix P2] [--rev R]",
		Short: "Stream the changes under key prefixes",
		Long: `Stream the changes under key prefixes from a WatchBus replica, resuming on the next
replica from the last revision seen when a stream breaks (replica killed or draining,
slow-consumer cut). A start revision older than ChainFire's compaction ends the command
with exit status 3 and the compaction and current revisions: read the state again and
subscribe from its revision + 1.

-o json prints one object per event: {"revision","type","key","value"[,"prev_value"]};
snapshot items carry "snapshot":true and type PUT; with --bookmarks, bookmarks print as
{"revision","type":"BOOKMARK"}. Non-UTF-8 keys and values are printed base64 in
key_base64 / value_base64 instead.`,
		Example: `  watchbus subscribe --prefix /vms/ -o json
  watchbus subscribe --prefix /hosts/ --prefix /vms/ --rev 1234 --prev-kv
  watchbus subscribe --prefix /vms/ --snapshot -o json     # state, then changes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(prefixes) == 0 {
				return errors.New("--prefix: at least one is required")
			}
			if o := output.Format; o != "" && o != cliout.JSON && o != output.Human {
				return fmt.Errorf("-o %q: want json or text", o)
			}
			endpoints, token, err := cf.resolve()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			req := &watchbusv1.SubscribeRequest{StartRevision: rev, PrevKv: prevKV, Snapshot: snapshot}
			for _, p := range prefixes {
				req.Prefixes = append(req.Prefixes, []byte(p))
			}
			if interval > 0 {
				req.BookmarkInterval = durationpb.New(interval)
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			p := &printer{w: out, lines: cliout.NewPrinter(out, true), json: output.Format == cliout.JSON, bookmarks: bookmarks, max: maxEvents}
			err = subscribeLoop(ctx, endpoints, token, req, p, cmd.ErrOrStderr())
			out.Flush()
			var ce *compactedExit
			if errors.As(err, &ce) {
				fmt.Fprintln(cmd.ErrOrStderr(), "Error:", err)
				os.Exit(exitCompacted)
			}
			if errors.Is(err, errDone) || (ctx.Err() != nil && timeout > 0) {
				return nil
			}
			return err
		},
	}
	cf.register(cmd)
	f := cmd.Flags()
	f.StringArrayVar(&prefixes, "prefix", nil, "key prefix to follow (repeatable)")
	f.Int64Var(&rev, "rev", 0, "first revision to deliver (0: from now)")
	f.BoolVar(&prevKV, "prev-kv", false, "include each event's previous value")
	f.BoolVar(&snapshot, "snapshot", false, "first the state of the prefixes at --rev (or now), then the changes after it")
	f.BoolVar(&bookmarks, "bookmarks", false, "print bookmarks too")
	output.Register(f, "output format: text or json (one object per line)")
	f.DurationVar(&interval, "bookmark-interval", 0, "bookmark interval when idle (default: the server's, 5s)")
	f.IntVar(&maxEvents, "max-events", 0, "exit after printing this many events (0: never)")
	f.DurationVar(&timeout, "timeout", 0, "exit (status 0) after this long (0: never)")
	return cmd
}

var errDone = errors.New("done")

type compactedExit struct{ compact, current int64 }

func (e *compactedExit) Error() string {
	return fmt.Sprintf("start revision compacted (compact revision %d, current revision %d): relist, then subscribe from its revision + 1", e.compact, e.current)
}

// subscribeLoop runs the stream, moving to the next endpoint and resuming from the last
// revision seen after any retryable failure.
func subscribeLoop(ctx context.Context, endpoints []string, token string, req *watchbusv1.SubscribeRequest, p *printer, stderr io.Writer) error {
	hc := resilience.NewHTTPClient(resilience.TransportOptions{})
	var last int64 = -1 // last revision fully seen; -1: none yet
	delay := 100 * time.Millisecond
	for i := 0; ; i++ {
		ep := endpoints[i%len(endpoints)]
		client := watchbusv1connect.NewWatchBusServiceClient(hc, ep, connect.WithGRPC(), connect.WithInterceptors(bearer(token)))
		r := req
		if last >= 0 {
			r = &watchbusv1.SubscribeRequest{Prefixes: req.Prefixes, StartRevision: last + 1, PrevKv: req.PrevKv,
				BookmarkInterval: req.BookmarkInterval}
		}
		stream, err := client.Subscribe(ctx, connect.NewRequest(r))
		if err == nil {
			for stream.Receive() {
				msg := stream.Msg()
				if !msg.Snapshot || msg.SnapshotEnd {
					last = msg.Revision
				}
				delay = 100 * time.Millisecond
				if perr := p.print(msg); perr != nil {
					stream.Close()
					return perr
				}
			}
			err = stream.Err()
			stream.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch connect.CodeOf(err) {
		case connect.CodeOutOfRange:
			ce := &compactedExit{}
			if details := connectDetails(err); details != nil {
				ce.compact, ce.current = details.CompactRevision, details.CurrentRevision
			}
			return ce
		case connect.CodeInvalidArgument, connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeUnimplemented:
			return err
		}
		if err == nil {
			err = errors.New("stream ended")
		}
		fmt.Fprintf(stderr, "watchbus: stream on %s ended (%v); resuming from revision %d\n", ep, err, last+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func connectDetails(err error) *watchbusv1.Compacted {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if c, ok := v.(*watchbusv1.Compacted); ok {
			return c
		}
	}
	return nil
}

// printer writes messages as text or JSON lines.
type printer struct {
	w         *bufio.Writer
	lines     *cliout.Printer // JSON lines to w
	json      bool
	bookmarks bool
	max, n    int
}

type jsonEvent struct {
	Revision    int64   `json:"revision"`
	Type        string  `json:"type"`
	Key         string  `json:"key,omitempty"`
	KeyBase64   string  `json:"key_base64,omitempty"`
	Value       string  `json:"value,omitempty"`
	ValueBase64 string  `json:"value_base64,omitempty"`
	PrevValue   *string `json:"prev_value,omitempty"`
	Snapshot    bool    `json:"snapshot,omitempty"`
}

func (p *printer) print(msg *watchbusv1.SubscribeResponse) error {
	if msg.Bookmark {
		if !p.bookmarks {
			return nil
		}
		if p.json {
			return p.line(jsonEvent{Revision: msg.Revision, Type: "BOOKMARK"})
		}
		fmt.Fprintf(p.w, "BOOKMARK %d\n", msg.Revision)
		return p.w.Flush()
	}
	for _, ev := range msg.Events {
		typ := "PUT"
		if ev.Type == mvccpb.Event_DELETE {
			typ = "DELETE"
		}
		if p.json {
			je := jsonEvent{Revision: msg.Revision, Type: typ, Snapshot: msg.Snapshot}
			if k := ev.Kv.GetKey(); utf8.Valid(k) {
				je.Key = string(k)
			} else {
				je.KeyBase64 = base64.StdEncoding.EncodeToString(k)
			}
			if v := ev.Kv.GetValue(); utf8.Valid(v) {
				je.Value = string(v)
			} else {
				je.ValueBase64 = base64.StdEncoding.EncodeToString(v)
			}
			if ev.PrevKv != nil {
				pv := string(ev.PrevKv.Value)
				je.PrevValue = &pv
			}
			if err := p.line(je); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(p.w, "%s %q %q (revision %d)\n", typ, ev.Kv.GetKey(), ev.Kv.GetValue(), msg.Revision)
		}
		p.n++
		if p.max > 0 && p.n >= p.max {
			p.w.Flush()
			return errDone
		}
	}
	return p.w.Flush()
}

func (p *printer) line(v any) error {
	if err := p.lines.JSONValue(v); err != nil {
		return err
	}
	return p.w.Flush()
}
