package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// moveLeaderCommand is `chainfire move-leader ID`.
func moveLeaderCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "move-leader ID",
		Short: "Transfer leadership to member ID (hex)",
		Args:  cobra.ExactArgs(1),
	})
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		target, err := parseMemberID(args[0])
		if err != nil {
			return err
		}
		resp, err := c.MoveLeader(ctx, target)
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			fmt.Fprintf(w, "Leadership transferred from %x to %x\n", resp.GetHeader().GetMemberId(), target)
		})
	})
	return cmd
}

// endpointStatus is one row of `status`.
type endpointStatus struct {
	Endpoint string          `json:"endpoint"`
	Status   json.RawMessage `json:"status,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// statusCommand is `chainfire status`: one row per endpoint, asked in parallel.
func statusCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "status",
		Short: "Show every endpoint's status",
		Long: "Status prints one row per endpoint: endpoint, member ID, version, database size,\n" +
			"is leader, is learner, raft term, raft index, raft applied index, errors.\n" +
			"Endpoints that do not answer are reported on stderr and make the command fail.",
		Args: cobra.NoArgs,
	})
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, _ []string) error {
		eps := c.Endpoints()
		statuses := make([]*pb.StatusResponse, len(eps))
		errs := make([]error, len(eps))
		var wg sync.WaitGroup
		for i, ep := range eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A live member answers in milliseconds; do not let a dead
				// one hold the table for the whole command timeout.
				sctx, cancel := context.WithTimeout(ctx, g.dialTimeout+time.Second)
				defer cancel()
				statuses[i], errs[i] = c.Status(sctx, ep)
			}()
		}
		wg.Wait()
		var failed []error
		for i, ep := range eps {
			st := statuses[i]
			if errs[i] != nil {
				failed = append(failed, fmt.Errorf("endpoint %s: %w", ep, errs[i]))
				if p.JSON() {
					if err := p.Value(endpointStatus{Endpoint: ep, Error: errs[i].Error()}, nil); err != nil {
						return err
					}
				}
				continue
			}
			err := p.Value(endpointStatus{Endpoint: ep, Status: cliout.RawMessage(st)}, func(w io.Writer) {
				fmt.Fprintf(w, "%s, %x, %s, %s, %v, %v, %d, %d, %d, %s\n",
					ep, st.GetHeader().GetMemberId(), st.Version, humanBytes(st.DbSize),
					st.Leader != 0 && st.Leader == st.GetHeader().GetMemberId(), st.IsLearner,
					st.RaftTerm, st.RaftIndex, st.RaftAppliedIndex, joinErrors(st.Errors))
			})
			if err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("status of %d of %d endpoints failed: %w", len(failed), len(eps), errors.Join(failed...))
		}
		return nil
	})
	return cmd
}

func joinErrors(errs []string) string {
	out := ""
	for i, e := range errs {
		if i > 0 {
			out += "; "
		}
		out += e
	}
	return out
}

// snapshotCommand is the `chainfire snapshot` parent with `save`; the
// binary adds the offline subcommands (see the package documentation).
func snapshotCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "snapshot",
		Short: "Save (and, offline, restore) snapshots of the key-value store",
		Args:  cobra.NoArgs,
	})
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Stream a member's snapshot into FILE",
		Long: "Save writes the snapshot to FILE.part and renames it to FILE once complete and\n" +
			"synced, so FILE is never a partial snapshot. --command-timeout does not apply;\n" +
			"interrupt it with Ctrl-C.",
		Args: cobra.ExactArgs(1),
	}
	save.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		defer c.Close()
		n, err := saveSnapshot(cmdContext(cmd), c, args[0])
		if err != nil {
			return err
		}
		return g.printer(cmd).Value(map[string]any{"path": args[0], "bytes": n}, func(w io.Writer) {
			fmt.Fprintf(w, "Snapshot saved at %s (%s)\n", args[0], humanBytes(n))
		})
	}
	cmd.AddCommand(save)
	return cmd
}

// saveSnapshot streams the snapshot into path atomically.
func saveSnapshot(ctx context.Context, c *chainfire.Client, path string) (int64, error) {
	rc, err := c.Snapshot(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	part := path + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, rc)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(part, path)
	}
	if err != nil {
		_ = os.Remove(part)
		return 0, fmt.Errorf("snapshot save %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return n, nil
}
