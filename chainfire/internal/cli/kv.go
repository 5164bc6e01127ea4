package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// putCommand is `chainfire put KEY [VALUE]`.
func putCommand() *cobra.Command {
	var lease string
	var prevKV bool
	cmd, g := topLevel(&cobra.Command{
		Use:   "put KEY [VALUE]",
		Short: "Put a key (VALUE from stdin when omitted)",
		Long: "Put sets KEY to VALUE; without VALUE the value is read from standard input.\n" +
			"Prints OK (and, with --prev-kv, the previous key and value).",
		Args: cobra.RangeArgs(1, 2),
	})
	cmd.Flags().StringVar(&lease, "lease", "", "attach the key to this lease (hex ID)")
	cmd.Flags().BoolVar(&prevKV, "prev-kv", false, "print the previous key-value")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		var value string
		if len(args) == 2 {
			value = args[1]
		} else {
			b, err := io.ReadAll(cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("read value from stdin: %w", err)
			}
			value = string(b)
		}
		var opts []chainfire.OpOption
		if lease != "" {
			id, err := parseLeaseID(lease)
			if err != nil {
				return err
			}
			opts = append(opts, chainfire.WithLease(id))
		}
		if prevKV {
			opts = append(opts, chainfire.WithPrevKV())
		}
		resp, err := c.Put(ctx, args[0], value, opts...)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			fmt.Fprintln(w, "OK")
			if resp.PrevKv != nil {
				printKV(w, resp.PrevKv, false)
			}
		})
	})
	return cmd
}

// rangeFlags are the key-range flags of get and del.
type rangeFlags struct {
	prefix  bool
	fromKey bool
}

func (r *rangeFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&r.prefix, "prefix", false, "every key with KEY as prefix")
	cmd.Flags().BoolVar(&r.fromKey, "from-key", false, "every key >= KEY")
}

// opts turns the range flags and an optional END argument into options.
func (r *rangeFlags) opts(args []string) ([]chainfire.OpOption, error) {
	n := 0
	var opts []chainfire.OpOption
	if r.prefix {
		n++
		opts = append(opts, chainfire.WithPrefix())
	}
	if r.fromKey {
		n++
		opts = append(opts, chainfire.WithFromKey())
	}
	if len(args) == 2 {
		n++
		opts = append(opts, chainfire.WithRange(args[1]))
	}
	if n > 1 {
		return nil, fmt.Errorf("use only one of END, --prefix and --from-key")
	}
	return opts, nil
}

// getCommand is `chainfire get KEY [END]`.
func getCommand() *cobra.Command {
	var (
		rf                              rangeFlags
		rev, limit                      int64
		keysOnly, countOnly, printValue bool
		consistency                     string
	)
	cmd, g := topLevel(&cobra.Command{
		Use:   "get KEY [END]",
		Short: "Get a key or a range of keys",
		Long: "Get prints each key and its value on their own lines (keys only with --keys-only,\n" +
			"the count only with --count-only). END makes the range [KEY, END).",
		Args: cobra.RangeArgs(1, 2),
	})
	rf.register(cmd)
	cmd.Flags().Int64Var(&rev, "rev", 0, "read at this revision (0 = latest)")
	cmd.Flags().Int64Var(&limit, "limit", 0, "maximum number of keys (0 = no limit)")
	cmd.Flags().BoolVar(&keysOnly, "keys-only", false, "print keys only")
	cmd.Flags().BoolVar(&countOnly, "count-only", false, "print the number of keys only")
	cmd.Flags().BoolVar(&printValue, "print-value-only", false, "print values only")
	cmd.Flags().StringVar(&consistency, "consistency", "l", "l (linearizable) or s (serializable)")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		opts, err := rf.opts(args)
		if err != nil {
			return err
		}
		switch consistency {
		case "l":
		case "s":
			opts = append(opts, chainfire.WithSerializable())
		default:
			return fmt.Errorf("--consistency %q: must be l or s", consistency)
		}
		if rev != 0 {
			opts = append(opts, chainfire.WithRev(rev))
		}
		if limit != 0 {
			opts = append(opts, chainfire.WithLimit(limit))
		}
		if keysOnly {
			opts = append(opts, chainfire.WithKeysOnly())
		}
		if countOnly {
			opts = append(opts, chainfire.WithCountOnly())
		}
		resp, err := c.Get(ctx, args[0], opts...)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			if countOnly {
				fmt.Fprintln(w, resp.Count)
				return
			}
			for _, kv := range resp.Kvs {
				switch {
				case printValue:
					fmt.Fprintf(w, "%s\n", kv.Value)
				default:
					printKV(w, kv, keysOnly)
				}
			}
		})
	})
	return cmd
}

// printKV prints a key and (unless keysOnly) its value, etcdctl style.
func printKV(w io.Writer, kv *mvccpb.KeyValue, keysOnly bool) {
	fmt.Fprintf(w, "%s\n", kv.Key)
	if !keysOnly {
		fmt.Fprintf(w, "%s\n", kv.Value)
	}
}

// delCommand is `chainfire del KEY [END]`.
func delCommand() *cobra.Command {
	var (
		rf     rangeFlags
		prevKV bool
	)
	cmd, g := topLevel(&cobra.Command{
		Use:   "del KEY [END]",
		Short: "Delete a key or a range of keys",
		Long:  "Del prints the number of keys deleted (and, with --prev-kv, each deleted key and value).",
		Args:  cobra.RangeArgs(1, 2),
	})
	rf.register(cmd)
	cmd.Flags().BoolVar(&prevKV, "prev-kv", false, "print the deleted key-values")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		opts, err := rf.opts(args)
		if err != nil {
			return err
		}
		if prevKV {
			opts = append(opts, chainfire.WithPrevKV())
		}
		resp, err := c.Delete(ctx, args[0], opts...)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			fmt.Fprintln(w, resp.Deleted)
			for _, kv := range resp.PrevKvs {
				printKV(w, kv, false)
			}
		})
	})
	return cmd
}

// compactCommand is `chainfire compact REVISION`.
func compactCommand() *cobra.Command {
	var physical bool
	cmd, g := topLevel(&cobra.Command{
		Use:   "compact REVISION",
		Short: "Discard the key-value history before REVISION",
		Args:  cobra.ExactArgs(1),
	})
	cmd.Flags().BoolVar(&physical, "physical", false, "wait until the compaction is applied to storage")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		rev, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil || rev <= 0 {
			return fmt.Errorf("REVISION %q: must be a positive integer", args[0])
		}
		var opts []chainfire.OpOption
		if physical {
			opts = append(opts, chainfire.WithPhysical())
		}
		resp, err := c.Compact(ctx, rev, opts...)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) { fmt.Fprintf(w, "compacted revision %d\n", rev) })
	})
	return cmd
}

// watchCommand is `chainfire watch KEY [END]`: it runs until interrupted
// and fails on a relist signal (compaction) or a server cancel.
func watchCommand() *cobra.Command {
	var (
		rf                     rangeFlags
		rev                    int64
		prevKV, progressNotify bool
	)
	cmd, g := topLevel(&cobra.Command{
		Use:   "watch KEY [END]",
		Short: "Watch a key or a range of keys until interrupted",
		Long: "Watch prints every event (type, key, value; the previous key-value first with\n" +
			"--prev-kv) until Ctrl-C. It survives member failures by resuming on another\n" +
			"endpoint. If the revision it needs was compacted it fails: relist and watch again.\n" +
			"--command-timeout does not apply.",
		Args: cobra.RangeArgs(1, 2),
	})
	rf.register(cmd)
	cmd.Flags().Int64Var(&rev, "rev", 0, "start at this revision (0 = from now)")
	cmd.Flags().BoolVar(&prevKV, "prev-kv", false, "print each event's previous key-value")
	cmd.Flags().BoolVar(&progressNotify, "progress-notify", false, "print periodic progress notifications")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		opts, err := rf.opts(args)
		if err != nil {
			return err
		}
		if rev != 0 {
			opts = append(opts, chainfire.WithRev(rev))
		}
		if prevKV {
			opts = append(opts, chainfire.WithPrevKV())
		}
		if progressNotify {
			opts = append(opts, chainfire.WithProgressNotify())
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		defer c.Close()
		p := g.printer(cmd)
		ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
		defer stop()
		for r := range c.Watch(ctx, args[0], opts...) {
			if r.Relist || r.Err != nil {
				return r.Err
			}
			if err := printWatchResponse(p, r, progressNotify); err != nil {
				return err
			}
		}
		return nil
	}
	return cmd
}

// printWatchResponse prints one watch delivery etcdctl style, or as a
// WatchResponse message in json mode. Progress notifications are shown only
// when asked for.
func printWatchResponse(p *cliout.Printer, r chainfire.WatchResponse, progress bool) error {
	if r.IsProgressNotify() && !progress {
		return nil
	}
	msg := &pb.WatchResponse{Header: r.Header, Events: r.Events, Created: r.Created}
	return p.Result(msg, func(w io.Writer) {
		if r.IsProgressNotify() {
			fmt.Fprintf(w, "progress notify: revision %d\n", r.Revision())
			return
		}
		for _, ev := range r.Events {
			fmt.Fprintln(w, ev.Type)
			if ev.PrevKv != nil {
				printKV(w, ev.PrevKv, false)
			}
			printKV(w, ev.Kv, false)
		}
	})
}
