package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

var userHeader = []string{"NAME", "DISPLAY NAME", "DISABLED", "CREATED", "UPDATED"}

func userRow(u *iamv1.User) []string {
	return []string{u.GetName(), orDash(u.GetDisplayName()), yesNo(u.GetDisabled()), ts(u.GetCreateTime()), ts(u.GetUpdateTime())}
}

func printUsers(p *cliout.Printer, us ...*iamv1.User) error {
	return cliout.Messages(p, us, userHeader, userRow)
}

// userCommand is `iam user ...`.
func userCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "user",
		Short: "Manage users (create, get, list, update, delete, set-password, disable, enable)",
	})
	one := cobra.ExactArgs(1)

	var displayName, passwordFile string
	var disabled bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user (password from --password-file, a prompt, or standard input)",
		Args:  one,
	}
	create.Flags().StringVar(&displayName, "display-name", "", "human-readable name")
	create.Flags().StringVar(&passwordFile, "password-file", "", `file holding the password ("-" = standard input); at least 8 characters`)
	create.Flags().BoolVar(&disabled, "disabled", false, "create the user disabled")
	create.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkName("user", args[0]); err != nil {
			return err
		}
		pw, err := readSecret(cmd, passwordFile, "Password for "+args[0], true)
		if err != nil {
			return err
		}
		return clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
			resp, err := c.CreateUser(ctx, &iamv1.CreateUserRequest{
				User:     &iamv1.User{Name: args[0], DisplayName: displayName, Disabled: disabled},
				Password: pw,
			})
			if err != nil {
				return err
			}
			return printUsers(p, resp.GetUser())
		})(cmd, args)
	}

	get := &cobra.Command{Use: "get NAME", Short: "Show a user", Args: one}
	get.RunE = clientCommand(g, nameArg("user"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.GetUser(ctx, &iamv1.GetUserRequest{Name: args[0]})
		if err != nil {
			return err
		}
		return printUsers(p, resp.GetUser())
	})

	list := &cobra.Command{Use: "list", Short: "List users", Args: cobra.NoArgs}
	list.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListUsers(ctx, &iamv1.ListUsersRequest{})
		if err != nil {
			return err
		}
		return printUsers(p, resp.GetUsers()...)
	})

	var upDisplay string
	var upDisabled bool
	update := &cobra.Command{Use: "update NAME", Short: "Change a user's display name or disabled flag", Args: one}
	update.Flags().StringVar(&upDisplay, "display-name", "", "new display name")
	update.Flags().BoolVar(&upDisabled, "disabled", false, "disable (true) or enable (false) the user")
	update.RunE = clientCommand(g, func(args []string) error {
		if err := checkName("user", args[0]); err != nil {
			return err
		}
		if !update.Flags().Changed("display-name") && !update.Flags().Changed("disabled") {
			return fmt.Errorf("nothing to update: give --display-name and/or --disabled")
		}
		return nil
	}, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		req := &iamv1.UpdateUserRequest{Name: args[0]}
		if update.Flags().Changed("display-name") {
			req.DisplayName = &upDisplay
		}
		if update.Flags().Changed("disabled") {
			req.Disabled = &upDisabled
		}
		resp, err := c.UpdateUser(ctx, req)
		if err != nil {
			return err
		}
		return printUsers(p, resp.GetUser())
	})

	setDisabled := func(use, short string, value bool) *cobra.Command {
		c := &cobra.Command{Use: use + " NAME", Short: short, Args: one}
		c.RunE = clientCommand(g, nameArg("user"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
			resp, err := c.UpdateUser(ctx, &iamv1.UpdateUserRequest{Name: args[0], Disabled: &value})
			if err != nil {
				return err
			}
			return printUsers(p, resp.GetUser())
		})
		return c
	}

	var newPasswordFile string
	setPassword := &cobra.Command{Use: "set-password NAME", Short: "Set a user's password", Args: one}
	setPassword.Flags().StringVar(&newPasswordFile, "password-file", "", `file holding the new password ("-" = standard input)`)
	setPassword.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkName("user", args[0]); err != nil {
			return err
		}
		pw, err := readSecret(cmd, newPasswordFile, "New password for "+args[0], true)
		if err != nil {
			return err
		}
		return clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
			resp, err := c.UpdateUser(ctx, &iamv1.UpdateUserRequest{Name: args[0], Password: &pw})
			if err != nil {
				return err
			}
			return printUsers(p, resp.GetUser())
		})(cmd, args)
	}

	del := &cobra.Command{Use: "delete NAME", Short: "Delete a user (its tokens are revoked)", Args: one}
	del.RunE = clientCommand(g, nameArg("user"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		if _, err := c.DeleteUser(ctx, &iamv1.DeleteUserRequest{Name: args[0]}); err != nil {
			return err
		}
		return deleted(p, "user", args[0])
	})

	cmd.AddCommand(create, get, list, update, del, setPassword,
		setDisabled("disable", "Disable a user (revokes every token issued to it)", true),
		setDisabled("enable", "Enable a disabled user", false))
	return cmd
}

// deleted reports a deletion.
func deleted(p *cliout.Printer, kind, name string) error {
	return p.Value(map[string]any{"deleted": kind, "name": name}, func(w io.Writer) {
		fmt.Fprintf(w, "Deleted %s %s\n", kind, name)
	})
}

var saHeader = []string{"NAME", "PROJECT", "DESCRIPTION", "DISABLED", "RATE LIMIT EXEMPT", "CREATED"}

func saRow(s *iamv1.ServiceAccount) []string {
	return []string{s.GetName(), orDash(s.GetProject()), orDash(s.GetDescription()), yesNo(s.GetDisabled()),
		yesNo(s.GetRateLimitExempt()), ts(s.GetCreateTime())}
}

// printSecret prints a service account's new client secret.
func printSecret(p *cliout.Printer, msg interface {
	GetClientSecret() string
}, name string, resp any) error {
	return p.Value(resp, func(w io.Writer) {
		cliout.Fields(w, "client_id", name, "client_secret", msg.GetClientSecret())
		fmt.Fprintln(w, "The secret is shown only this once; IAM keeps only its hash.")
	})
}

// serviceAccountCommand is `iam serviceaccount ...`.
func serviceAccountCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:     "serviceaccount",
		Aliases: []string{"sa"},
		Short:   "Manage service accounts (create, get, list, delete, reset-secret)",
	})
	one := cobra.ExactArgs(1)

	var description, project string
	var exempt bool
	create := &cobra.Command{Use: "create NAME", Short: "Create a service account and print its client secret once", Args: one}
	create.Flags().StringVar(&description, "description", "", "what the account is for")
	create.Flags().StringVar(&project, "project", "", "project the account belongs to (it cannot be deleted while the account exists)")
	create.Flags().BoolVar(&exempt, "rate-limit-exempt", false, "exempt from login rate limiting and lockout")
	create.RunE = clientCommand(g, func(args []string) error {
		if err := checkName("service account", args[0]); err != nil {
			return err
		}
		if project != "" {
			return checkName("project", project)
		}
		return nil
	}, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{
			Name: args[0], Description: description, Project: project, RateLimitExempt: exempt,
		}})
		if err != nil {
			return err
		}
		if p.JSON() {
			return p.Message(resp)
		}
		if err := cliout.Messages(p, []*iamv1.ServiceAccount{resp.GetServiceAccount()}, saHeader, saRow); err != nil {
			return err
		}
		fmt.Fprintln(p.Writer())
		return printSecret(p, resp, args[0], resp)
	})

	get := &cobra.Command{Use: "get NAME", Short: "Show a service account", Args: one}
	get.RunE = clientCommand(g, nameArg("service account"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.GetServiceAccount(ctx, &iamv1.GetServiceAccountRequest{Name: args[0]})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.ServiceAccount{resp.GetServiceAccount()}, saHeader, saRow)
	})

	list := &cobra.Command{Use: "list", Short: "List service accounts", Args: cobra.NoArgs}
	list.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListServiceAccounts(ctx, &iamv1.ListServiceAccountsRequest{})
		if err != nil {
			return err
		}
		return cliout.Messages(p, resp.GetServiceAccounts(), saHeader, saRow)
	})

	del := &cobra.Command{Use: "delete NAME", Short: "Delete a service account (its tokens are revoked)", Args: one}
	del.RunE = clientCommand(g, nameArg("service account"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		if _, err := c.DeleteServiceAccount(ctx, &iamv1.DeleteServiceAccountRequest{Name: args[0]}); err != nil {
			return err
		}
		return deleted(p, "service account", args[0])
	})

	reset := &cobra.Command{Use: "reset-secret NAME", Short: "Replace a service account's secret (the old one stops working at once)", Args: one}
	reset.RunE = clientCommand(g, nameArg("service account"), func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error {
		resp, err := c.ResetServiceAccountSecret(ctx, &iamv1.ResetServiceAccountSecretRequest{Name: args[0]})
		if err != nil {
			return err
		}
		if p.JSON() {
			return p.Message(resp)
		}
		return printSecret(p, resp, args[0], resp)
	})

	cmd.AddCommand(create, get, list, del, reset)
	return cmd
}
