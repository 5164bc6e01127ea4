package cli

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

var projectHeader = []string{"NAME", "DESCRIPTION", "CREATED"}

func projectRow(p *iamv1.Project) []string {
	return []string{p.GetName(), orDash(p.GetDescription()), ts(p.GetCreateTime())}
}

// projectCommand is `iam project ...`.
func projectCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "project",
		Short: "Manage projects (create, get, list, delete)",
	})
	one := cobra.ExactArgs(1)

	var description string
	create := &cobra.Command{Use: "create NAME", Short: "Create a project", Args: one}
	create.Flags().StringVar(&description, "description", "", "what the project is for")
	create.RunE = clientCommand(g, nameArg("project"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: args[0], Description: description}})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Project{resp.GetProject()}, projectHeader, projectRow)
	})

	get := &cobra.Command{Use: "get NAME", Short: "Show a project", Args: one}
	get.RunE = clientCommand(g, nameArg("project"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: args[0]})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Project{resp.GetProject()}, projectHeader, projectRow)
	})

	list := &cobra.Command{Use: "list", Short: "List projects", Args: cobra.NoArgs}
	list.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListProjects(ctx, &iamv1.ListProjectsRequest{})
		if err != nil {
			return err
		}
		return cliout.Messages(p, resp.GetProjects(), projectHeader, projectRow)
	})

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a project (refused while bindings or service accounts refer to it)",
		Args:  one,
	}
	del.RunE = clientCommand(g, nameArg("project"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		if _, err := c.DeleteProject(ctx, &iamv1.DeleteProjectRequest{Name: args[0]}); err != nil {
			return err
		}
		return deleted(p, "project", args[0])
	})

	cmd.AddCommand(create, get, list, del)
	return cmd
}

var roleHeader = []string{"NAME", "BUILTIN", "PERMISSIONS", "DESCRIPTION"}

func roleRow(r *iamv1.Role) []string {
	return []string{r.GetName(), yesNo(r.GetBuiltin()), strings.Join(r.GetPermissions(), ","), orDash(r.GetDescription())}
}

// permissionRE is the syntax of a permission pattern.
var permissionRE = regexp.MustCompile(`^[a-z*][a-z0-9-]*(\.[a-z*][a-z0-9-]*)*$`)

// checkPermissions validates --permission values.
func checkPermissions(perms []string) error {
	if len(perms) == 0 {
		return fmt.Errorf("--permission is required (e.g. --permission vm.create,vm.get or --permission 'vm.*')")
	}
	for _, p := range perms {
		if !permissionRE.MatchString(p) {
			return fmt.Errorf("permission %q: must be dot-separated segments of lowercase letters, digits, '-', or '*' (e.g. vm.create, network.*, *.get)", p)
		}
	}
	return nil
}

// roleCommand is `iam role ...`.
func roleCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "role",
		Short: "Manage roles (create, get, list, update, delete); admin, member and reader are built in",
	})
	one := cobra.ExactArgs(1)

	var perms []string
	var description string
	create := &cobra.Command{Use: "create NAME --permission P[,P...]", Short: "Create a role", Args: one}
	create.Flags().StringSliceVarP(&perms, "permission", "p", nil, "permission patterns (repeat or comma-separate)")
	create.Flags().StringVar(&description, "description", "", "what the role is for")
	create.RunE = clientCommand(g, func(args []string) error {
		if err := checkName("role", args[0]); err != nil {
			return err
		}
		return checkPermissions(perms)
	}, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.CreateRole(ctx, &iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: args[0], Permissions: perms, Description: description}})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Role{resp.GetRole()}, roleHeader, roleRow)
	})

	get := &cobra.Command{Use: "get NAME", Short: "Show a role", Args: one}
	get.RunE = clientCommand(g, nameArg("role"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.GetRole(ctx, &iamv1.GetRoleRequest{Name: args[0]})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Role{resp.GetRole()}, roleHeader, roleRow)
	})

	list := &cobra.Command{Use: "list", Short: "List roles", Args: cobra.NoArgs}
	list.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListRoles(ctx, &iamv1.ListRolesRequest{})
		if err != nil {
			return err
		}
		return cliout.Messages(p, resp.GetRoles(), roleHeader, roleRow)
	})

	var upPerms []string
	var upDescription string
	update := &cobra.Command{
		Use:   "update NAME --permission P[,P...]",
		Short: "Replace a role's permissions (takes effect everywhere within about a second)",
		Args:  one,
	}
	update.Flags().StringSliceVarP(&upPerms, "permission", "p", nil, "the new permission patterns (replace the old ones)")
	update.Flags().StringVar(&upDescription, "description", "", "new description")
	update.RunE = clientCommand(g, func(args []string) error {
		if err := checkName("role", args[0]); err != nil {
			return err
		}
		return checkPermissions(upPerms)
	}, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		req := &iamv1.UpdateRoleRequest{Name: args[0], Permissions: upPerms}
		if update.Flags().Changed("description") {
			req.Description = &upDescription
		}
		resp, err := c.UpdateRole(ctx, req)
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Role{resp.GetRole()}, roleHeader, roleRow)
	})

	del := &cobra.Command{Use: "delete NAME", Short: "Delete a role (refused for built-in roles and roles still bound)", Args: one}
	del.RunE = clientCommand(g, nameArg("role"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		if _, err := c.DeleteRole(ctx, &iamv1.DeleteRoleRequest{Name: args[0]}); err != nil {
			return err
		}
		return deleted(p, "role", args[0])
	})

	cmd.AddCommand(create, get, list, update, del)
	return cmd
}

var bindingHeader = []string{"PRINCIPAL", "ROLE", "PROJECT", "EFFECT", "CREATED"}

func bindingRow(b *iamv1.Binding) []string {
	project := b.GetProject()
	if project == "" {
		project = "(global)"
	}
	effect := "allow"
	if b.GetEffect() == iamv1.Effect_EFFECT_DENY {
		effect = "deny"
	}
	return []string{b.GetPrincipal(), b.GetRole(), project, effect, ts(b.GetCreateTime())}
}

// bindingArgs validates PRINCIPAL ROLE and --project.
func bindingArgs(project *string) func(args []string) error {
	return func(args []string) error {
		if err := checkPrincipal(args[0]); err != nil {
			return err
		}
		if err := checkName("role", args[1]); err != nil {
			return err
		}
		if *project != "" {
			return checkName("project", *project)
		}
		return nil
	}
}

// bindCommand is `iam bind PRINCIPAL ROLE`.
func bindCommand() *cobra.Command {
	var project string
	var deny bool
	cmd, g := topLevel(&cobra.Command{
		Use:   "bind PRINCIPAL ROLE",
		Short: "Give a principal a role in a project (--project) or everywhere",
		Long: "Bind gives PRINCIPAL (user:NAME or serviceaccount:NAME) the permissions of ROLE in\n" +
			"--project, or in every project when --project is omitted. With --deny the binding\n" +
			"removes the role's permissions instead, whatever else allows them (deny always wins).",
		Args: cobra.ExactArgs(2),
	})
	cmd.Flags().StringVar(&project, "project", "", "project the binding applies to (omitted: global)")
	cmd.Flags().BoolVar(&deny, "deny", false, "deny the role's permissions instead of allowing them")
	cmd.RunE = clientCommand(g, bindingArgs(&project), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		effect := iamv1.Effect_EFFECT_ALLOW
		if deny {
			effect = iamv1.Effect_EFFECT_DENY
		}
		resp, err := c.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
			Principal: args[0], Role: args[1], Project: project, Effect: effect,
		}})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.Binding{resp.GetBinding()}, bindingHeader, bindingRow)
	})
	return cmd
}

// unbindCommand is `iam unbind PRINCIPAL ROLE`.
func unbindCommand() *cobra.Command {
	var project string
	cmd, g := topLevel(&cobra.Command{
		Use:   "unbind PRINCIPAL ROLE",
		Short: "Remove a binding (allow or deny) of a principal to a role",
		Args:  cobra.ExactArgs(2),
	})
	cmd.Flags().StringVar(&project, "project", "", "project of the binding (omitted: the global binding)")
	cmd.RunE = clientCommand(g, bindingArgs(&project), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		if _, err := c.DeleteBinding(ctx, &iamv1.DeleteBindingRequest{Principal: args[0], Role: args[1], Project: project}); err != nil {
			return err
		}
		where := "globally"
		if project != "" {
			where = "in project " + project
		}
		return p.Value(map[string]any{"unbound": true, "principal": args[0], "role": args[1], "project": project}, func(w io.Writer) {
			fmt.Fprintf(w, "Removed the binding of %s to %s %s\n", args[0], args[1], where)
		})
	})
	return cmd
}

// bindingsCommand is `iam bindings`.
func bindingsCommand() *cobra.Command {
	var principal, project string
	cmd, g := topLevel(&cobra.Command{
		Use:   "bindings",
		Short: "List bindings, filtered by --principal and/or --project ('*' = global bindings only)",
		Args:  cobra.NoArgs,
	})
	cmd.Flags().StringVar(&principal, "principal", "", "only this principal's bindings")
	cmd.Flags().StringVar(&project, "project", "", "only bindings in this project ('*': only global bindings)")
	cmd.RunE = clientCommand(g, func([]string) error {
		if principal != "" {
			if err := checkPrincipal(principal); err != nil {
				return err
			}
		}
		if project != "" && project != "*" {
			return checkName("project", project)
		}
		return nil
	}, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListBindings(ctx, &iamv1.ListBindingsRequest{Principal: principal, Project: project})
		if err != nil {
			return err
		}
		return cliout.Messages(p, resp.GetBindings(), bindingHeader, bindingRow)
	})
	return cmd
}
