package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// parseMemberID parses a member ID written in hex, as member list prints it.
func parseMemberID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("member ID %q: must be hexadecimal", s)
	}
	return id, nil
}

// splitURLs splits a comma-separated URL list, dropping blanks.
func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// memberCommand is the `chainfire member` parent: list, add, update,
// remove, promote. Member IDs are hexadecimal, as etcdctl prints them.
func memberCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "member",
		Short: "List, add, remove, update and promote cluster members",
		Args:  cobra.NoArgs,
	})
	cmd.AddCommand(
		&cobra.Command{
			Use:   "list",
			Short: "List members: ID, status, name, peer URLs, client URLs, is learner",
			Args:  cobra.NoArgs,
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, _ []string) error {
				resp, err := c.MemberList(ctx)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) {
					for _, m := range resp.Members {
						status := "started"
						if m.Name == "" {
							status = "unstarted"
						}
						fmt.Fprintf(w, "%x, %s, %s, %s, %s, %v\n", m.ID, status, m.Name,
							strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ","), m.IsLearner)
					}
				})
			}),
		},
		memberAddCommand(g),
		memberUpdateCommand(g),
		&cobra.Command{
			Use:   "remove ID",
			Short: "Remove a member (hex ID)",
			Args:  cobra.ExactArgs(1),
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
				id, err := parseMemberID(args[0])
				if err != nil {
					return err
				}
				resp, err := c.MemberRemove(ctx, id)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) {
					fmt.Fprintf(w, "Member %16x removed from cluster %16x\n", id, resp.GetHeader().GetClusterId())
				})
			}),
		},
		&cobra.Command{
			Use:   "promote ID",
			Short: "Promote a learner to a voting member (hex ID)",
			Args:  cobra.ExactArgs(1),
			RunE: clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
				id, err := parseMemberID(args[0])
				if err != nil {
					return err
				}
				resp, err := c.MemberPromote(ctx, id)
				if err != nil {
					return err
				}
				return p.Result(resp, func(w io.Writer) {
					fmt.Fprintf(w, "Member %16x promoted in cluster %16x\n", id, resp.GetHeader().GetClusterId())
				})
			}),
		},
	)
	return cmd
}

// memberAddCommand is `chainfire member add NAME --peer-urls URLS`; it
// prints the environment the new member must start with.
func memberAddCommand(g *globals) *cobra.Command {
	var (
		peerURLs string
		learner  bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME --peer-urls URLS",
		Short: "Add a member; prints the settings to start it with",
		Long: "Add registers a new member reachable by its peers at --peer-urls, then prints the\n" +
			"environment (CHAINFIRE_* = the server's etcd-named flags) the new member must be\n" +
			"started with to join.",
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&peerURLs, "peer-urls", "", "comma-separated peer URLs of the new member (required)")
	cmd.Flags().BoolVar(&learner, "learner", false, "add as a non-voting learner")
	_ = cmd.MarkFlagRequired("peer-urls")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		name := args[0]
		urls := splitURLs(peerURLs)
		if len(urls) == 0 {
			return fmt.Errorf("--peer-urls: at least one URL required")
		}
		var resp *pb.MemberAddResponse
		var err error
		if learner {
			resp, err = c.MemberAddAsLearner(ctx, urls)
		} else {
			resp, err = c.MemberAdd(ctx, urls)
		}
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			kind := "Member"
			if learner {
				kind = "Learner"
			}
			fmt.Fprintf(w, "%s %16x added to cluster %16x\n\n", kind, resp.Member.GetID(), resp.GetHeader().GetClusterId())
			var initial []string
			for _, m := range resp.Members {
				mname := m.Name
				if m.ID == resp.Member.GetID() {
					mname = name
				}
				if mname == "" {
					continue
				}
				for _, u := range m.PeerURLs {
					initial = append(initial, mname+"="+u)
				}
			}
			fmt.Fprintf(w, "CHAINFIRE_NAME=%q\n", name)
			fmt.Fprintf(w, "CHAINFIRE_INITIAL_CLUSTER=%q\n", strings.Join(initial, ","))
			fmt.Fprintf(w, "CHAINFIRE_INITIAL_ADVERTISE_PEER_URLS=%q\n", strings.Join(urls, ","))
			fmt.Fprintf(w, "CHAINFIRE_INITIAL_CLUSTER_STATE=\"existing\"\n")
		})
	})
	return cmd
}

// memberUpdateCommand is `chainfire member update ID --peer-urls URLS`.
func memberUpdateCommand(g *globals) *cobra.Command {
	var peerURLs string
	cmd := &cobra.Command{
		Use:   "update ID --peer-urls URLS",
		Short: "Change a member's peer URLs (hex ID)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&peerURLs, "peer-urls", "", "comma-separated new peer URLs (required)")
	_ = cmd.MarkFlagRequired("peer-urls")
	cmd.RunE = clientCommand(g, func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error {
		id, err := parseMemberID(args[0])
		if err != nil {
			return err
		}
		resp, err := c.MemberUpdate(ctx, id, splitURLs(peerURLs))
		if err != nil {
			return err
		}
		return p.Result(resp, func(w io.Writer) {
			fmt.Fprintf(w, "Member %16x updated in cluster %16x\n", id, resp.GetHeader().GetClusterId())
		})
	})
	return cmd
}
