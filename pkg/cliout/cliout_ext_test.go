package cliout_test

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/proto/mvccpb"
)

func TestOutputValidate(t *testing.T) {
	tests := []struct {
		format, human, wantErr string
	}{
		{"", "table", ""},
		{"table", "table", ""},
		{"json", "simple", ""},
		{"yaml", "table", `--output "yaml": must be table or json`},
		{"table", "simple", `--output "table": must be simple or json`},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.human, func(t *testing.T) {
			err := cliout.Output{Format: tt.format, Human: tt.human}.Validate()
			if got := errString(err); got != tt.wantErr {
				t.Fatalf("Validate = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestOutputRegister(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	o := cliout.Output{Human: "simple"}
	o.Register(fs, "output format: simple or json")
	if o.Format != "simple" {
		t.Fatalf("default %q, want simple", o.Format)
	}
	if err := fs.Parse([]string{"-o", "json"}); err != nil {
		t.Fatal(err)
	}
	if p, err := o.Printer(nil); err != nil || !p.JSON() {
		t.Fatalf("Printer after -o json: json=%v err=%v", p != nil && p.JSON(), err)
	}
}

func TestPrinter(t *testing.T) {
	kvs := []*mvccpb.KeyValue{{Key: []byte("a"), Version: 1}, {Key: []byte("bb"), Version: 22}}
	row := func(kv *mvccpb.KeyValue) []string { return []string{string(kv.Key), "v"} }
	tests := []struct {
		name  string
		json  bool
		print func(p *cliout.Printer) error
		want  string
	}{
		{"table", false, func(p *cliout.Printer) error {
			return cliout.Messages(p, kvs, []string{"KEY", "VERSION"}, row)
		}, "KEY  VERSION\na    v\nbb   v\n"},
		{"json lines", true, func(p *cliout.Printer) error {
			return cliout.Messages(p, kvs, nil, row)
		}, "{\"key\":\"YQ==\",\"version\":\"1\"}\n{\"key\":\"YmI=\",\"version\":\"22\"}\n"},
		{"value json", true, func(p *cliout.Printer) error {
			return p.Value(map[string]int{"n": 1}, nil)
		}, "{\"n\":1}\n"},
		{"value human", false, func(p *cliout.Printer) error {
			return p.Value(nil, func(w io.Writer) { cliout.Fields(w, "name", "a", "revision", "7") })
		}, "name:      a\nrevision:  7\n"},
		{"result json", true, func(p *cliout.Printer) error {
			return p.Result(kvs[0], nil)
		}, "{\"key\":\"YQ==\",\"version\":\"1\"}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.print(cliout.NewPrinter(&buf, tt.json)); err != nil {
				t.Fatal(err)
			}
			got := buf.String()
			if tt.json {
				got = strings.ReplaceAll(got, " ", "") // protojson varies its spacing on purpose
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func ExamplePrinter() {
	o := cliout.Output{Human: "table", Format: "json"}
	p, _ := o.Printer(os.Stdout)
	_ = p.Value(map[string]string{"name": "vm1"}, nil)
	// Output: {"name":"vm1"}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
