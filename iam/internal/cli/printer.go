package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// printer writes command results as a table (for people) or as JSON, one object per line.
// It is used by one command at a time.
type printer struct {
	w    io.Writer
	json bool
}

func newPrinter(w io.Writer, format string) (*printer, error) {
	switch format {
	case "table", "":
		return &printer{w: w}, nil
	case "json":
		return &printer{w: w, json: true}, nil
	}
	return nil, fmt.Errorf("--output %q: must be table or json", format)
}

var protoJSON = protojson.MarshalOptions{UseProtoNames: true}

// messages prints each message as one protojson line in json mode, or as a table with
// header and one row per message built by row.
func printMessages[M proto.Message](p *printer, msgs []M, header []string, row func(M) []string) error {
	if p.json {
		for _, m := range msgs {
			if err := p.message(m); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, m := range msgs {
		fmt.Fprintln(tw, strings.Join(row(m), "\t"))
	}
	return tw.Flush()
}

// message prints one protojson line.
func (p *printer) message(m proto.Message) error {
	b, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// result prints msg as one protojson line in json mode, or calls table.
func (p *printer) result(msg proto.Message, table func(w io.Writer)) error {
	if p.json {
		return p.message(msg)
	}
	table(p.w)
	return nil
}

// value prints v as one JSON line in json mode, or calls table.
func (p *printer) value(v any, table func(w io.Writer)) error {
	if p.json {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	table(p.w)
	return nil
}

// fields prints label/value pairs aligned, for one object in table mode.
func fields(w io.Writer, kv ...string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], kv[i+1])
	}
	tw.Flush()
}

// ts formats a timestamp for tables ("-" when unset).
func ts(t *timestamppb.Timestamp) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// orDash returns s, or "-" when empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// yesNo formats a flag for tables.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
