package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// readSecret reads a password or secret: from file ("-" = standard input), else by a
// prompt without echo when standard input is a terminal (twice when confirm), else the
// first line of standard input. The trailing newline is dropped; an empty secret is an
// error.
func readSecret(cmd *cobra.Command, file, prompt string, confirm bool) (string, error) {
	switch {
	case file == "-":
		return firstLine(cmd.InOrStdin(), "standard input")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("password file: %w", err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return "", fmt.Errorf("password file %s is empty", file)
		}
		return s, nil
	}
	if f, ok := cmd.InOrStdin().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		pw, err := promptSecret(cmd, f, prompt)
		if err != nil || !confirm {
			return pw, err
		}
		again, err := promptSecret(cmd, f, "Repeat "+strings.ToLower(prompt[:1])+prompt[1:])
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("the passwords do not match")
		}
		return pw, nil
	}
	return firstLine(cmd.InOrStdin(), "standard input")
}

// promptSecret prompts on standard error and reads a line without echo.
func promptSecret(cmd *cobra.Command, f *os.File, prompt string) (string, error) {
	fmt.Fprint(cmd.ErrOrStderr(), prompt+": ")
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("empty password")
	}
	return string(b), nil
}

// firstLine reads the first line of r.
func firstLine(r io.Reader, what string) (string, error) {
	s, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	s = strings.TrimRight(s, "\r\n")
	if s == "" {
		return "", fmt.Errorf("no password on %s (use --password-file, or run on a terminal to be prompted)", what)
	}
	return s, nil
}
