package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// loginCommand is `iam login`.
func loginCommand() *cobra.Command {
	var username, passwordFile, project string
	cmd, g := topLevel(&cobra.Command{
		Use:   "login",
		Short: "Log in with a password and save the tokens to --token-file",
		Long: "Login runs the OAuth 2.0 password grant (TokenService.Token) and writes the access and\n" +
			"refresh tokens to --token-file (mode 0600). The password comes from --password-file\n" +
			"(\"-\" = standard input), a prompt on a terminal, or the first line of standard input.\n" +
			"Other commands use the saved access token and refresh it when it has expired.",
		Args: cobra.NoArgs,
	})
	cmd.Flags().StringVarP(&username, "username", "u", "", "user to log in as (required)")
	cmd.Flags().StringVar(&passwordFile, "password-file", "", `file holding the password ("-" = standard input)`)
	cmd.Flags().StringVar(&project, "project", "", "scope the token to this project (empty: unscoped)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := g.validate(); err != nil {
			return err
		}
		if username == "" {
			return errors.New("--username is required")
		}
		if err := checkName("user", username); err != nil {
			return err
		}
		if project != "" {
			if err := checkName("project", project); err != nil {
				return err
			}
		}
		password, err := readSecret(cmd, passwordFile, "Password for "+username, false)
		if err != nil {
			return err
		}
		ctx, cancel := g.bound(cmd)
		defer cancel()
		c, err := g.baseClient()
		if err != nil {
			return err
		}
		defer c.Close()
		resp, err := c.Token(ctx, &iamv1.TokenRequest{
			GrantType: iamclient.GrantPassword,
			Username:  username,
			Password:  password,
			Project:   project,
		})
		if err != nil {
			return apiError(err)
		}
		saved := savedFrom(resp, time.Now())
		if saved.Principal == "" {
			saved.Principal = "user:" + username
		}
		if err := writeTokenFile(g.tokenFile, saved); err != nil {
			return err
		}
		out := map[string]any{
			"principal":  saved.Principal,
			"project":    saved.Project,
			"expires_at": saved.ExpiresAt,
			"token_file": g.tokenFile,
		}
		return g.printer(cmd).Value(out, func(w io.Writer) {
			scope := "unscoped"
			if saved.Project != "" {
				scope = "project " + saved.Project
			}
			fmt.Fprintf(w, "Logged in as %s (%s); access token expires %s; saved to %s\n",
				saved.Principal, scope, saved.ExpiresAt.Local().Format(time.RFC3339), g.tokenFile)
		})
	}
	return cmd
}

// logoutCommand is `iam logout`.
func logoutCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "logout",
		Short: "Revoke the saved refresh token and delete --token-file",
		Long: "Logout revokes the refresh token saved by login (and with it every refresh token of\n" +
			"its family) and deletes the token file. The access token stays valid until it expires\n" +
			"(minutes); revoke it too with `iam token revoke --access-token`.",
		Args: cobra.NoArgs,
	})
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := g.validate(); err != nil {
			return err
		}
		t, err := readTokenFile(g.tokenFile)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("not logged in (no %s)", g.tokenFile)
		}
		if err != nil {
			return err
		}
		if t.RefreshToken != "" {
			ctx, cancel := g.bound(cmd)
			defer cancel()
			c, err := g.baseClient()
			if err != nil {
				return err
			}
			defer c.Close()
			if t.AccessToken != "" {
				// Sent along in case the replica authenticates Revoke (revoking one's own
				// refresh token needs no permission, but may need a caller).
				c = c.WithToken(iamclient.StaticToken(t.AccessToken))
			}
			if err := revokeOwnRefresh(ctx, c, t.RefreshToken); err != nil {
				return apiError(err)
			}
		}
		if err := os.Remove(g.tokenFile); err != nil {
			return err
		}
		return g.printer(cmd).Value(map[string]any{"logged_out": true, "token_file": g.tokenFile}, func(w io.Writer) {
			fmt.Fprintf(w, "Logged out; %s deleted\n", g.tokenFile)
		})
	}
	return cmd
}

// revokeOwnRefresh revokes a refresh token (no permission needed).
func revokeOwnRefresh(ctx context.Context, c *iamclient.Client, rt string) error {
	_, err := c.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_RefreshToken{RefreshToken: rt}})
	return err
}
