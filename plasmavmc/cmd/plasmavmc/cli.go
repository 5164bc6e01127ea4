package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/resilience"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
	"plasmacloud.dev/proto/plasmavmc/v1/plasmavmcv1connect"
)

// Environment variables the client flags read.
const (
	envEndpoints    = "PLASMA_PLASMAVMC_ENDPOINTS"
	envToken        = "PLASMA_TOKEN"
	defaultEndpoint = "http://127.0.0.1:7003"
)

// globals are the client flags every client command takes (persistent flags of each
// top-level command).
type globals struct {
	endpoints []string
	tokenFile string
	output    cliout.Output
	timeout   time.Duration
	out       io.Writer
}

func (g *globals) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringSliceVar(&g.endpoints, "endpoints", nil, "PlasmaVMC controller URLs (env "+envEndpoints+"; default "+defaultEndpoint+")")
	f.StringVar(&g.tokenFile, "token-file", "", "file holding the access token (iam login's file or a bare token; default ~/.config/plasmacloud/token; "+envToken+" is used instead when set and this flag is not)")
	g.output.Human = "table"
	g.output.Register(f, "output: table or json (one object per line)")
	f.DurationVar(&g.timeout, "timeout", 30*time.Second, "bound of the whole command, retries included")
}

// token returns the bearer token ("" when none is configured: --auth none servers).
func (g *globals) token() (string, error) {
	if g.tokenFile == "" {
		if t := os.Getenv(envToken); t != "" {
			return strings.TrimSpace(t), nil
		}
		home, err := os.UserHomeDir()
		if err != nil {
			return "", nil
		}
		p := filepath.Join(home, ".config", "plasmacloud", "token")
		if _, err := os.Stat(p); err != nil {
			return "", nil
		}
		g.tokenFile = p
	}
	b, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var saved struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal(b, &saved); err != nil {
			return "", fmt.Errorf("--token-file %s: %w", g.tokenFile, err)
		}
		return saved.AccessToken, nil
	}
	return string(b), nil
}

// api is the set of service clients of one endpoint.
type api struct {
	vms    plasmavmcv1connect.VMServiceClient
	hosts  plasmavmcv1connect.HostServiceClient
	images plasmavmcv1connect.ImageServiceClient
	ops    plasmavmcv1connect.OperationServiceClient
}

// call runs fn against the endpoints in turn, moving on when one is unreachable or
// answers Unavailable, until one answers or the timeout passes. Every call of the CLI
// is safe to repeat (creates carry a request id).
func (g *globals) call(cmd *cobra.Command, fn func(ctx context.Context, a api) error) error {
	eps := g.endpoints
	if len(eps) == 0 {
		if v := os.Getenv(envEndpoints); v != "" {
			eps = strings.Split(v, ",")
		} else {
			eps = []string{defaultEndpoint}
		}
	}
	tok, err := g.token()
	if err != nil {
		return err
	}
	var opts []connect.ClientOption
	if tok != "" {
		opts = append(opts, connect.WithInterceptors(auth.BearerInterceptor(func(context.Context) (string, error) { return tok, nil })))
	}
	hc := resilience.NewHTTPClient(resilience.TransportOptions{})
	ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
	defer cancel()
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		ep := strings.TrimRight(strings.TrimSpace(eps[attempt%len(eps)]), "/")
		if !strings.Contains(ep, "://") {
			ep = "http://" + ep
		}
		a := api{
			vms:    plasmavmcv1connect.NewVMServiceClient(hc, ep, opts...),
			hosts:  plasmavmcv1connect.NewHostServiceClient(hc, ep, opts...),
			images: plasmavmcv1connect.NewImageServiceClient(hc, ep, opts...),
			ops:    plasmavmcv1connect.NewOperationServiceClient(hc, ep, opts...),
		}
		err := fn(ctx, a)
		if err == nil {
			return nil
		}
		code := connect.CodeOf(err)
		if (code != connect.CodeUnavailable && code != connect.CodeUnknown) || ctx.Err() != nil {
			return cliError(err)
		}
		if attempt%len(eps) == len(eps)-1 {
			select {
			case <-ctx.Done():
				return cliError(err)
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// cliError formats a server error as "<code>: <message>".
func cliError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %s", ce.Code(), ce.Message())
	}
	return err
}

// printer returns the output printer of the command (checkOutput has validated the format).
func (g *globals) printer() *cliout.Printer {
	return cliout.NewPrinter(g.out, g.output.Format == cliout.JSON)
}

// printOne prints one message: JSON, or "field: value" lines (multi-line protojson).
func printOne(g *globals, m proto.Message) error {
	p := g.printer()
	if p.JSON() {
		return p.Message(m)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(g.out, "%s\n", b)
	return err
}

func enumName(s fmt.Stringer, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), prefix))
}

func checkOutput(g *globals) error {
	if f := g.output.Format; f != "table" && f != cliout.JSON {
		return fmt.Errorf("--output %q: must be table or json", f)
	}
	return nil
}

// clientCommands are vm, host, image and operation.
func clientCommands() []*cobra.Command {
	return []*cobra.Command{vmCommand(), hostCommand(), imageCommand(), operationCommand()}
}

func group(use, short string, g *globals, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.out = cmd.OutOrStdout()
			return checkOutput(g)
		}}
	g.register(c)
	c.AddCommand(subs...)
	return c
}

func vmRow(vm *pb.VM) []string {
	return []string{vm.Id, vm.Project, vm.Name, enumName(vm.GetStatus().GetState(), "VM_STATE_"), enumName(vm.PowerState, "POWER_STATE_"),
		orDash(vm.Host), strconv.Itoa(int(vm.GetSpec().GetVcpus())), strconv.FormatInt(vm.GetSpec().GetMemoryMib(), 10), vm.GetStatus().GetReason()}
}

var vmHeader = []string{"ID", "PROJECT", "NAME", "STATE", "POWER", "HOST", "VCPUS", "MEMORY_MIB", "REASON"}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func opRow(op *pb.Operation) []string {
	target := op.VmId
	if target == "" && op.Host != "" {
		target = "host:" + op.Host
	}
	return []string{op.Id, op.Kind, orDash(target), enumName(op.State, "OPERATION_STATE_"), op.Reason}
}

var opHeader = []string{"OPERATION", "KIND", "VM", "STATE", "REASON"}

func vmCommand() *cobra.Command {
	g := &globals{}
	return group("vm", "Create, list, show, start, stop, reboot, delete and migrate VMs", g,
		vmCreateCommand(g), vmListCommand(g), vmShowCommand(g),
		vmActionCommand(g, "start", "Start a stopped VM"), vmActionCommand(g, "stop", "Stop a VM (ACPI, forced after --timeout-seconds)"),
		vmActionCommand(g, "reboot", "Reboot a running VM"), vmActionCommand(g, "delete", "Delete a VM with its domain and disks"),
		vmMigrateCommand(g))
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func vmCreateCommand(g *globals) *cobra.Command {
	var (
		project, kernel, initrd, cmdline, restart, watchdog, requestID string
		vcpus                                                          int32
		memory                                                         int64
		maxRestarts, window                                            int32
		disks, nics, labels, anti                                      []string
		stopped, failover                                              bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM (idempotent by --request-id)",
		Example: `  plasmavmc vm create web --project demo --vcpus 1 --memory 128 --kernel tiny-kernel --initrd tiny-initrd
  plasmavmc vm create db --project demo --vcpus 2 --memory 2048 --disk name=root,image=debian,pool=shared,size=20`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := &pb.VMSpec{Vcpus: vcpus, MemoryMib: memory, AntiAffinity: anti}
			for _, d := range disks {
				disk := &pb.Disk{Pool: "local"}
				for _, kv := range strings.Split(d, ",") {
					k, v, _ := strings.Cut(kv, "=")
					switch k {
					case "name":
						disk.Name = v
					case "image":
						disk.Image = v
					case "pool":
						disk.Pool = v
					case "size":
						n, err := strconv.ParseInt(v, 10, 64)
						if err != nil {
							return fmt.Errorf("--disk %q: size: %w", d, err)
						}
						disk.SizeGib = n
					default:
						return fmt.Errorf("--disk %q: unknown key %q (name, image, pool, size)", d, k)
					}
				}
				spec.Disks = append(spec.Disks, disk)
			}
			if kernel != "" || initrd != "" || cmdline != "" {
				spec.Boot = &pb.Boot{KernelImage: kernel, InitrdImage: initrd, Cmdline: cmdline}
			}
			for _, n := range nics {
				spec.Nics = append(spec.Nics, &pb.NIC{PortId: n})
			}
			ha := &pb.HAPolicy{MaxRestarts: maxRestarts, RestartWindowSeconds: window, Failover: failover}
			switch restart {
			case "always", "":
				ha.Restart = pb.RestartPolicy_RESTART_POLICY_ALWAYS
			case "never":
				ha.Restart = pb.RestartPolicy_RESTART_POLICY_NEVER
			default:
				return fmt.Errorf("--restart %q: always or never", restart)
			}
			spec.Ha = ha
			switch watchdog {
			case "", "reset":
				spec.Watchdog = pb.WatchdogAction_WATCHDOG_ACTION_RESET
			case "poweroff":
				spec.Watchdog = pb.WatchdogAction_WATCHDOG_ACTION_POWEROFF
			case "none":
				spec.Watchdog = pb.WatchdogAction_WATCHDOG_ACTION_NONE
			default:
				return fmt.Errorf("--watchdog %q: reset, poweroff or none", watchdog)
			}
			lm := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--label %q: must be key=value", l)
				}
				lm[k] = v
			}
			if requestID == "" {
				requestID = newRequestID()
			}
			req := &pb.CreateVMRequest{Name: args[0], Project: project, Spec: spec, Labels: lm, RequestId: requestID, Stopped: stopped}
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.vms.CreateVM(ctx, connect.NewRequest(req))
				if err != nil {
					return err
				}
				if g.output.Format == cliout.JSON {
					return g.printer().Message(resp.Msg)
				}
				return cliout.Messages(g.printer(), []*pb.VM{resp.Msg.Vm}, vmHeader, vmRow)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&project, "project", "", "project (default: the token's project)")
	f.Int32Var(&vcpus, "vcpus", 1, "virtual CPUs")
	f.Int64Var(&memory, "memory", 512, "memory in MiB")
	f.StringArrayVar(&disks, "disk", nil, "disk name=N,image=I,pool=local|shared,size=GiB (repeatable; the first is the boot disk)")
	f.StringVar(&kernel, "kernel", "", "registered kernel image (direct kernel boot)")
	f.StringVar(&initrd, "initrd", "", "registered initrd image")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line")
	f.StringArrayVar(&nics, "nic", nil, "PrismNet port id (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.StringArrayVar(&anti, "anti-affinity", nil, "never share a host with a VM of the project labelled key=value (repeatable)")
	f.StringVar(&restart, "restart", "always", "restart policy when QEMU dies: always or never")
	f.Int32Var(&maxRestarts, "max-restarts", 0, "restarts per window before FAILED (0: default 5)")
	f.Int32Var(&window, "restart-window", 0, "restart window in seconds (0: default 600)")
	f.BoolVar(&failover, "failover", false, "restart on another host when the host dies (HA)")
	f.StringVar(&watchdog, "watchdog", "reset", "i6300esb action: reset, poweroff or none")
	f.BoolVar(&stopped, "stopped", false, "create without starting")
	f.StringVar(&requestID, "request-id", "", "idempotency key (default: a random UUID; reuse it to retry safely)")
	return cmd
}

func vmListCommand(g *globals) *cobra.Command {
	var project, host string
	cmd := &cobra.Command{
		Use: "list", Short: "List VMs you may see", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.vms.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{Project: project, Host: host}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), resp.Msg.Vms, vmHeader, vmRow)
			})
		},
	}
	cmd.Flags().StringVar(&project, "project", "", "only this project")
	cmd.Flags().StringVar(&host, "host", "", "only VMs placed on this host")
	return cmd
}

func vmShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "show ID", Short: "Show a VM with its status", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: args[0]}))
				if err != nil {
					return err
				}
				return printOne(g, resp.Msg.Vm)
			})
		},
	}
}

func vmActionCommand(g *globals, verb, short string) *cobra.Command {
	var force bool
	var timeout int32
	cmd := &cobra.Command{
		Use: verb + " ID", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return g.call(cmd, func(ctx context.Context, a api) error {
				var op *pb.Operation
				switch verb {
				case "start":
					r, err := a.vms.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: id}))
					if err != nil {
						return err
					}
					op = r.Msg.Operation
				case "stop":
					r, err := a.vms.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: id, Force: force, TimeoutSeconds: timeout}))
					if err != nil {
						return err
					}
					op = r.Msg.Operation
				case "reboot":
					r, err := a.vms.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: id}))
					if err != nil {
						return err
					}
					op = r.Msg.Operation
				case "delete":
					r, err := a.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: id}))
					if err != nil {
						return err
					}
					op = r.Msg.Operation
				}
				return cliout.Messages(g.printer(), []*pb.Operation{op}, opHeader, opRow)
			})
		},
	}
	if verb == "stop" {
		cmd.Flags().BoolVar(&force, "force", false, "power off at once (no ACPI shutdown)")
		cmd.Flags().Int32Var(&timeout, "timeout-seconds", 0, "ACPI shutdown time before forcing (0: 60 s)")
	}
	return cmd
}

// since is how long ago t was ("-" when unset).
func since(t interface{ AsTime() time.Time }, set bool) string {
	if !set {
		return "-"
	}
	return time.Since(t.AsTime()).Round(time.Second).String()
}

var hostHeader = []string{"NAME", "STATE", "REASON", "SINCE", "VCPUS", "MEMORY_MIB", "POOLS", "AGENT"}

func hostRow(h *pb.Host) []string {
	return []string{h.Name, enumName(h.State, "HOST_STATE_"), orDash(h.StateReason), since(h.StateSince, h.StateSince != nil),
		fmt.Sprintf("%d/%d", h.GetAllocated().GetVcpus(), h.GetCapacity().GetVcpus()),
		fmt.Sprintf("%d/%d", h.GetAllocated().GetMemoryMib(), h.GetCapacity().GetMemoryMib()),
		strings.Join(h.Pools, ","), orDash(h.AgentVersion)}
}

func hostCommand() *cobra.Command {
	g := &globals{}
	list := &cobra.Command{
		Use: "list", Short: "List hosts with state (and why, since when), capacity and allocation", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.hosts.ListHosts(ctx, connect.NewRequest(&pb.ListHostsRequest{}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), resp.Msg.Hosts, hostHeader, hostRow)
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Aliases: []string{"get"}, Short: "Show a host", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.hosts.GetHost(ctx, connect.NewRequest(&pb.GetHostRequest{Name: args[0]}))
				if err != nil {
					return err
				}
				return printOne(g, resp.Msg.Host)
			})
		},
	}
	var wait bool
	var waitTimeout time.Duration
	drain := &cobra.Command{
		Use:   "drain HOST",
		Short: "Put a host in maintenance and live-migrate its VMs away",
		Long: `Put a host in maintenance (no new VMs are placed on it) and move its VMs away: running
VMs by live migration one at a time, stopped VMs by record. The drain operation ends DONE
when the host is empty, or FAILED naming each VM left and why (a disk on the host-local
pool, no room, a failed migration). The host stays in maintenance until "host undrain".`,
		Example: "  plasmavmc host drain hv3 --wait",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var op *pb.Operation
			if err := g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: args[0]}))
				if err != nil {
					return err
				}
				op = resp.Msg.Operation
				return nil
			}); err != nil {
				return err
			}
			if wait {
				var err error
				if op, err = g.waitOperation(cmd, op.Id, waitTimeout, nil); err != nil {
					return err
				}
			}
			if err := cliout.Messages(g.printer(), []*pb.Operation{op}, opHeader, opRow); err != nil {
				return err
			}
			return opFailed(op, "drain")
		},
	}
	drain.Flags().BoolVar(&wait, "wait", false, "wait until the drain has finished (exit non-zero when it failed)")
	drain.Flags().DurationVar(&waitTimeout, "wait-timeout", 30*time.Minute, "with --wait: give up waiting after this long (the drain goes on)")
	undrain := &cobra.Command{
		Use: "undrain HOST", Short: "Return a drained host to service (cancels a drain still running)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.hosts.UndrainHost(ctx, connect.NewRequest(&pb.UndrainHostRequest{Name: args[0]}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), []*pb.Host{resp.Msg.Host}, hostHeader, hostRow)
			})
		},
	}
	events := &cobra.Command{
		Use: "events [HOST]", Short: "List host state transitions of the last 24 h, oldest first", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			host := ""
			if len(args) == 1 {
				host = args[0]
			}
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.hosts.ListHostEvents(ctx, connect.NewRequest(&pb.ListHostEventsRequest{Host: host}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), resp.Msg.Events, []string{"TIME", "HOST", "FROM", "TO", "REASON"}, func(e *pb.HostEvent) []string {
					return []string{e.GetTime().AsTime().Local().Format("2006-01-02 15:04:05.000"), e.Host,
						enumName(e.From, "HOST_STATE_"), enumName(e.To, "HOST_STATE_"), e.Reason}
				})
			})
		},
	}
	return group("host", "List, show, drain and undrain hosts; host events", g, list, show, drain, undrain, events)
}

// opFailed is the command's error when op ended FAILED.
func opFailed(op *pb.Operation, what string) error {
	if op.State == pb.OperationState_OPERATION_STATE_FAILED {
		return fmt.Errorf("%s failed: %s", what, op.Reason)
	}
	return nil
}

// waitOperation polls operation id until it is no longer RUNNING or bound passes;
// progress (may be nil) sees every version read.
func (g *globals) waitOperation(cmd *cobra.Command, id string, bound time.Duration, progress func(*pb.Operation)) (*pb.Operation, error) {
	deadline := time.Now().Add(bound)
	for {
		var op *pb.Operation
		if err := g.call(cmd, func(ctx context.Context, a api) error {
			resp, err := a.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: id}))
			if err != nil {
				return err
			}
			op = resp.Msg.Operation
			return nil
		}); err != nil {
			return nil, err
		}
		if progress != nil {
			progress(op)
		}
		if op.State != pb.OperationState_OPERATION_STATE_RUNNING {
			return op, nil
		}
		if time.Now().After(deadline) {
			return op, fmt.Errorf("operation %s still running after %v (it goes on; see: plasmavmc operation show %s)", id, bound, id)
		}
		select {
		case <-cmd.Context().Done():
			return op, cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func vmMigrateCommand(g *globals) *cobra.Command {
	var (
		to                   string
		autoConverge, wait   bool
		postCopy, migTimeout time.Duration
		maxBandwidth         int64
		maxDowntime          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "migrate ID",
		Short: "Live-migrate a running VM to another host",
		Long: `Live-migrate a running VM (every disk on the shared pool) to --to HOST, or to the host the
scheduler picks. The source host's libvirtd sends it peer-to-peer to the target's; the
operation records progress, total time and downtime. On any failure the VM keeps running
on its source and the operation says why. Unset options take the controller's defaults
(--migration-* server flags). Here --timeout is the migration's completion timeout; with
--wait the command waits up to that plus 90 s.`,
		Example: `  plasmavmc vm migrate 3f2c… --to hv2 --wait
  plasmavmc vm migrate 3f2c… --post-copy-after 30s --timeout 5m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.MigrateVMRequest{Id: args[0], ToHost: to}
			f := cmd.Flags()
			if f.Changed("auto-converge") {
				req.AutoConverge = proto.Bool(autoConverge)
			}
			if f.Changed("post-copy-after") {
				req.PostCopyAfterSeconds = proto.Int32(int32(postCopy / time.Second))
			}
			if f.Changed("timeout") {
				if migTimeout < time.Second {
					return fmt.Errorf("--timeout %v: at least 1s", migTimeout)
				}
				req.TimeoutSeconds = proto.Int32(int32(migTimeout / time.Second))
			}
			if f.Changed("max-bandwidth-mib") {
				req.MaxBandwidthMib = proto.Int64(maxBandwidth)
			}
			if f.Changed("max-downtime") {
				if maxDowntime < 0 {
					return fmt.Errorf("--max-downtime %v: negative", maxDowntime)
				}
				req.MaxDowntimeMs = proto.Int32(int32(maxDowntime / time.Millisecond))
			}
			var op *pb.Operation
			if err := g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.vms.MigrateVM(ctx, connect.NewRequest(req))
				if err != nil {
					return err
				}
				op = resp.Msg.Operation
				return nil
			}); err != nil {
				return err
			}
			if wait {
				bound := 120 * time.Second
				if req.TimeoutSeconds != nil {
					bound = migTimeout
				}
				var last string
				var err error
				op, err = g.waitOperation(cmd, op.Id, bound+90*time.Second, func(o *pb.Operation) {
					if g.output.Format == cliout.JSON || o.State != pb.OperationState_OPERATION_STATE_RUNNING {
						return
					}
					if line := progressLine(o.Migration); line != last {
						fmt.Fprintln(cmd.ErrOrStderr(), line)
						last = line
					}
				})
				if err != nil {
					return err
				}
			}
			p := g.printer()
			if p.JSON() {
				if err := p.Message(op); err != nil {
					return err
				}
			} else {
				if err := cliout.Messages(p, []*pb.Operation{op}, opHeader, opRow); err != nil {
					return err
				}
				if m := op.Migration; m != nil && op.State != pb.OperationState_OPERATION_STATE_RUNNING {
					fmt.Fprintf(g.out, "%s → %s: %s, total %d ms, downtime %d ms%s\n", m.SourceHost, m.TargetHost, orDash(m.Phase), m.TotalMs, m.DowntimeMs, usedFallbacks(m))
				}
			}
			return opFailed(op, "migration")
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "target host (default: the scheduler's choice)")
	f.BoolVar(&autoConverge, "auto-converge", false, "throttle the guest's vCPUs when memory does not converge (=true or =false; unset: the controller's --migration-auto-converge, default true)")
	f.DurationVar(&postCopy, "post-copy-after", 0, "switch to post-copy after this long (0: never; unset: the controller's --migration-post-copy-after, default never)")
	f.DurationVar(&migTimeout, "timeout", 0, "abort the migration (the VM stays on its source) when not finished in this long (unset: the controller's --migration-timeout, default 2m)")
	f.Int64Var(&maxBandwidth, "max-bandwidth-mib", 0, "bandwidth cap in MiB/s (0: libvirt's default; unset: the controller's --migration-max-bandwidth-mib)")
	f.DurationVar(&maxDowntime, "max-downtime", 0, "switch-over target: the longest pause QEMU aims for (0: adaptive, 50 ms raised to 300 ms for a guest that keeps dirtying memory)")
	f.BoolVar(&wait, "wait", false, "wait until the migration has finished, showing progress (exit non-zero when it failed)")
	return cmd
}

// progressLine is one line of a running migration's progress.
func progressLine(m *pb.MigrationProgress) string {
	if m == nil {
		return "waiting for the source agent"
	}
	pct := 0.0
	if m.DataTotalBytes > 0 {
		pct = 100 * float64(m.DataProcessedBytes) / float64(m.DataTotalBytes)
	}
	return fmt.Sprintf("%s → %s: %s %.0f%% (%d of %d MiB, %d MiB left, iteration %d)", m.SourceHost, m.TargetHost, orDash(m.Phase), pct,
		m.DataProcessedBytes>>20, m.DataTotalBytes>>20, m.DataRemainingBytes>>20, m.Iterations)
}

func usedFallbacks(m *pb.MigrationProgress) string {
	var used []string
	if m.AutoConvergeUsed {
		used = append(used, "auto-converge")
	}
	if m.PostCopyUsed {
		used = append(used, "post-copy")
	}
	if len(used) == 0 {
		return ""
	}
	return " (used " + strings.Join(used, ", ") + ")"
}

func imageCommand() *cobra.Command {
	g := &globals{}
	var pool, format, path string
	var size int64
	register := &cobra.Command{
		Use: "register NAME", Short: "Register an image file present in a pool's directory", Args: cobra.ExactArgs(1),
		Example: "  plasmavmc image register tiny-kernel --pool local --format kernel --path tiny/vmlinuz",
		RunE: func(cmd *cobra.Command, args []string) error {
			img := &pb.Image{Name: args[0], Pool: pool, Format: format, Path: path, SizeBytes: size}
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.images.RegisterImage(ctx, connect.NewRequest(&pb.RegisterImageRequest{Image: img}))
				if err != nil {
					return err
				}
				return printOne(g, resp.Msg.Image)
			})
		},
	}
	register.Flags().StringVar(&pool, "pool", "local", "storage pool: local or shared")
	register.Flags().StringVar(&format, "format", "qcow2", "qcow2, raw, kernel or initrd")
	register.Flags().StringVar(&path, "path", "", "path of the file relative to the pool's directory")
	register.Flags().Int64Var(&size, "size", 0, "size in bytes (informational)")
	var listPool string
	list := &cobra.Command{
		Use: "list", Short: "List registered images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.images.ListImages(ctx, connect.NewRequest(&pb.ListImagesRequest{Pool: listPool}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), resp.Msg.Images, []string{"POOL", "NAME", "FORMAT", "PATH"}, func(i *pb.Image) []string {
					return []string{i.Pool, i.Name, i.Format, i.Path}
				})
			})
		},
	}
	list.Flags().StringVar(&listPool, "pool", "", "only this pool")
	return group("image", "Register and list images", g, register, list)
}

func operationCommand() *cobra.Command {
	g := &globals{}
	show := &cobra.Command{
		Use: "show ID", Short: "Show an operation and how it ended", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: args[0]}))
				if err != nil {
					return err
				}
				return printOne(g, resp.Msg.Operation)
			})
		},
	}
	var vmID string
	list := &cobra.Command{
		Use: "list", Short: "List operations (of one VM with --vm)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd, func(ctx context.Context, a api) error {
				resp, err := a.ops.ListOperations(ctx, connect.NewRequest(&pb.ListOperationsRequest{VmId: vmID}))
				if err != nil {
					return err
				}
				return cliout.Messages(g.printer(), resp.Msg.Operations, opHeader, opRow)
			})
		},
	}
	list.Flags().StringVar(&vmID, "vm", "", "only this VM's operations")
	return group("operation", "Show and list operations", g, show, list)
}
