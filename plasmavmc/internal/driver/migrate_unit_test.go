package driver

import (
	"errors"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"
)

func TestRewriteStateDir(t *testing.T) {
	for _, c := range []struct {
		name, in, from, to, want string
	}{
		{"attribute, single quotes", `<source path='/run/a/vm1/serial.log'/>`, "/run/a", "/srv/b",
			`<source path='/srv/b/vm1/serial.log'/>`},
		{"attribute, double quotes, trailing slash", `<source path="/run/a/vm1/hb.sock" mode="bind"/>`, "/run/a/", "/srv/b",
			`<source path="/srv/b/vm1/hb.sock" mode="bind"/>`},
		{"text node", `<kernel>/run/a/k</kernel>`, "/run/a", "/b", `<kernel>/b/k</kernel>`},
		{"a longer sibling directory stays", `<source file='/run/ab/x'/>`, "/run/a", "/b", `<source file='/run/ab/x'/>`},
		{"inside another path stays", `<source file='/x/run/a/y'/>`, "/run/a", "/b", `<source file='/x/run/a/y'/>`},
		{"escaped characters", `<source path='/tmp/a&amp;b/vm/s'/>`, "/tmp/a&b", "/tmp/c&d",
			`<source path='/tmp/c&amp;d/vm/s'/>`},
		{"empty", "", "/a", "/b", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := rewriteStateDir(c.in, c.from, c.to); got != c.want {
				t.Fatalf("rewriteStateDir(%q, %q, %q) = %q, want %q", c.in, c.from, c.to, got, c.want)
			}
		})
	}
}

func TestParamInt(t *testing.T) {
	params := []libvirt.TypedParam{
		{Field: "a", Value: *libvirt.NewTypedParamValueUllong(7)},
		{Field: "b", Value: *libvirt.NewTypedParamValueInt(-3)},
		{Field: "c", Value: *libvirt.NewTypedParamValueString("x")},
	}
	for _, c := range []struct {
		name string
		want int64
		ok   bool
	}{{"a", 7, true}, {"b", -3, true}, {"c", 0, false}, {"missing", 0, false}} {
		if got, ok := paramInt(params, c.name); got != c.want || ok != c.ok {
			t.Errorf("paramInt(%s) = %d, %v; want %d, %v", c.name, got, ok, c.want, c.ok)
		}
	}
	p := progressOf([]libvirt.TypedParam{
		{Field: libvirt.DomainJobDataTotal, Value: *libvirt.NewTypedParamValueUllong(100)},
		{Field: libvirt.DomainJobMemoryIteration, Value: *libvirt.NewTypedParamValueUllong(3)},
	}, PhasePrecopy, 0)
	if p.DataTotal != 100 || p.Iterations != 3 || p.Phase != PhasePrecopy {
		t.Fatalf("progressOf = %+v", p)
	}
}

func TestMigrationError(t *testing.T) {
	err := wrapMigration("vm1", "qemu+tls://h/system", "timed out after 2m; the domain keeps running on the source",
		[]error{ErrDisconnected})
	if !errors.Is(err, ErrMigration) || !errors.Is(err, ErrDisconnected) || errors.Is(err, ErrNotFound) {
		t.Fatalf("errors.Is on %v", err)
	}
	want := "driver: migrate vm1 to qemu+tls://h/system: driver: migration failed: timed out after 2m; the domain keeps running on the source"
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
}
