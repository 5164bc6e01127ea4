package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// printer writes command results in the chosen format: "simple" (etcdctl's
// human format) or "json" (one JSON object per line). It is used by one
// command at a time.
type printer struct {
	w    io.Writer
	json bool
}

func newPrinter(w io.Writer, format string) (*printer, error) {
	switch format {
	case "simple", "":
		return &printer{w: w}, nil
	case "json":
		return &printer{w: w, json: true}, nil
	}
	return nil, fmt.Errorf("--output %q: must be simple or json", format)
}

var protoJSON = protojson.MarshalOptions{UseProtoNames: true}

// result prints msg as one protojson line in json mode, or calls simple.
func (p *printer) result(msg proto.Message, simple func(w io.Writer)) error {
	if p.json {
		b, err := protoJSON.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	simple(p.w)
	return nil
}

// value prints v as one JSON line in json mode, or calls simple.
func (p *printer) value(v any, simple func(w io.Writer)) error {
	if p.json {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	simple(p.w)
	return nil
}

// rawJSON embeds a protojson message in a json.Marshal'ed value.
func rawJSON(msg proto.Message) json.RawMessage {
	b, err := protoJSON.Marshal(msg)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return b
}

// humanBytes formats n like etcdctl's status (SI units: "20 kB").
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, exp := float64(n)/unit, 0
	for v >= unit && exp < 5 {
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", v, "kMGTPE"[exp])
}
