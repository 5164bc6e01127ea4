package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// parseLeaseID parses a lease ID written in hex, as etcdctl prints it.
func parseLeaseID(s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("lease ID %q: must be hexadecimal", s)
	}
	return id, nil
}

// leaseCommand is the `chainfire lease` parent: grant, revoke, list,
// timetolive, keep-alive.
func leaseCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "lease",
		Short: "Grant, revoke, renew and inspect leases",
		Args:  cobra.NoArgs,
	})
	cmd.AddCommand(
		&cobra.Command{
			Use:   "grant TTL",
			Short: "Create a lease of TTL seconds",
			Args:  cobra.ExactArgs(1),
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
				ttl, err := strconv.ParseInt(args[0], 10, 64)
				if err != nil || ttl <= 0 {
					return fmt.Errorf("TTL %q: must be a positive number of seconds", args[0])
				}
				resp, err := c.Grant(ctx, ttl)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) {
					fmt.Fprintf(w, "lease %016x granted with TTL(%ds)\n", resp.ID, resp.TTL)
				})
			}),
		},
		&cobra.Command{
			Use:   "revoke ID",
			Short: "Revoke a lease, deleting its keys",
			Args:  cobra.ExactArgs(1),
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
				id, err := parseLeaseID(args[0])
				if err != nil {
					return err
				}
				resp, err := c.Revoke(ctx, id)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) { fmt.Fprintf(w, "lease %016x revoked\n", id) })
			}),
		},
		&cobra.Command{
			Use:   "list",
			Short: "List all leases",
			Args:  cobra.NoArgs,
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
				resp, err := c.Leases(ctx)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) {
					fmt.Fprintf(w, "found %d leases\n", len(resp.Leases))
					for _, l := range resp.Leases {
						fmt.Fprintf(w, "%016x\n", l.ID)
					}
				})
			}),
		},
		timeToLiveCommand(g),
		keepAliveCommand(g),
	)
	return cmd
}

// timeToLiveCommand is `chainfire lease timetolive ID [--keys]`.
func timeToLiveCommand(g *globals) *cobra.Command {
	var keys bool
	cmd := &cobra.Command{
		Use:   "timetolive ID",
		Short: "Show a lease's remaining TTL (and attached keys with --keys)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().BoolVar(&keys, "keys", false, "list the keys attached to the lease")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		id, err := parseLeaseID(args[0])
		if err != nil {
			return err
		}
		resp, err := c.TimeToLive(ctx, id, keys)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			if resp.TTL == -1 {
				fmt.Fprintf(w, "lease %016x already expired\n", id)
				return
			}
			fmt.Fprintf(w, "lease %016x granted with TTL(%ds), remaining(%ds)", id, resp.GrantedTTL, resp.TTL)
			if keys {
				ks := make([]string, len(resp.Keys))
				for i, k := range resp.Keys {
					ks[i] = string(k)
				}
				fmt.Fprintf(w, ", attached keys(%v)", ks)
			}
			fmt.Fprintln(w)
		})
	})
	return cmd
}

// keepAliveCommand is `chainfire lease keep-alive ID`: it renews until
// interrupted and fails when the lease is gone.
func keepAliveCommand(g *globals) *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "keep-alive ID",
		Short: "Keep a lease alive until interrupted",
		Long: "Keep-alive renews the lease until Ctrl-C, printing each renewal, and survives\n" +
			"member failures. It fails when the lease expires or is revoked.\n" +
			"--command-timeout bounds only the first renewal.",
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().BoolVar(&once, "once", false, "renew once and exit")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		id, err := parseLeaseID(args[0])
		if err != nil {
			return err
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		defer c.Close()
		p := g.printer(cmd)
		print := func(r *pb.LeaseKeepAliveResponse) error {
			return p.Result(r, func(w io.Writer) {
				fmt.Fprintf(w, "lease %016x keepalived with TTL(%d)\n", r.ID, r.TTL)
			})
		}
		if once {
			ctx, cancel := g.timeoutCtx(cmd)
			defer cancel()
			r, err := c.KeepAliveOnce(ctx, id)
			if err != nil {
				return err
			}
			return print(r)
		}
		ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
		defer stop()
		// The first renewal, bounded by --command-timeout, proves the lease
		// exists and the cluster answers; then renew until interrupted.
		fctx, cancel := g.bound(ctx)
		_, err = c.KeepAliveOnce(fctx, id)
		cancel()
		if err != nil {
			return err
		}
		ch, err := c.KeepAlive(ctx, id)
		if err != nil {
			return err
		}
		for r := range ch {
			if err := print(r); err != nil {
				return err
			}
		}
		if ctx.Err() != nil {
			return nil // interrupted
		}
		return fmt.Errorf("lease %016x expired or revoked", id)
	}
	return cmd
}
