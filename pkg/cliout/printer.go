package cliout

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Printer writes a command's results to one writer, for people or as JSON lines. It is
// used by one command at a time (not safe for concurrent use) and does not own the writer.
type Printer struct {
	w    io.Writer
	json bool
}

// NewPrinter returns a printer that writes to w: JSON lines when json is set, else the
// human format each call describes.
func NewPrinter(w io.Writer, json bool) *Printer { return &Printer{w: w, json: json} }

// Printer returns the printer for o's format, or o.Validate's error.
func (o Output) Printer(w io.Writer) (*Printer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return NewPrinter(w, o.Format == JSON), nil
}

// JSON reports whether p writes JSON lines.
func (p *Printer) JSON() bool { return p.json }

// Writer is the writer p prints to.
func (p *Printer) Writer() io.Writer { return p.w }

var protoJSON = protojson.MarshalOptions{UseProtoNames: true}

// Message writes m as one protojson line (proto field names), whatever the format.
func (p *Printer) Message(m proto.Message) error {
	b, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// JSONValue writes v as one json.Marshal line, whatever the format.
func (p *Printer) JSONValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// Result writes msg as one protojson line in JSON mode, or calls human with p's writer.
func (p *Printer) Result(msg proto.Message, human func(w io.Writer)) error {
	if p.json {
		return p.Message(msg)
	}
	human(p.w)
	return nil
}

// Value writes v as one JSON line in JSON mode, or calls human with p's writer.
func (p *Printer) Value(v any, human func(w io.Writer)) error {
	if p.json {
		return p.JSONValue(v)
	}
	human(p.w)
	return nil
}

// Messages writes each message as one protojson line in JSON mode, or a table with header
// and one row per message built by row.
func Messages[M proto.Message](p *Printer, msgs []M, header []string, row func(M) []string) error {
	if p.json {
		for _, m := range msgs {
			if err := p.Message(m); err != nil {
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

// Fields writes label/value pairs ("label:  value"), values aligned, for one object in a
// human format. kv alternates labels and values; an odd last label is ignored.
func Fields(w io.Writer, kv ...string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[i], kv[i+1])
	}
	tw.Flush()
}

// RawMessage is msg's protojson (proto field names) for embedding in a json.Marshal'ed
// value; JSON null when msg cannot be marshaled.
func RawMessage(msg proto.Message) json.RawMessage {
	b, err := protoJSON.Marshal(msg)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return b
}
