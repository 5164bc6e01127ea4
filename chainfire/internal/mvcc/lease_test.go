package mvcc

import (
	"errors"
	"testing"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

func TestLeases(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	g := s.mustApply(grantCmd(100, 30)).GetLeaseGrant()
	if g.ID != 100 || g.TTL != 30 || g.Header.Revision != 1 {
		t.Fatalf("grant response %v", g)
	}
	s.mustApply(grantCmd(200, 60))
	if _, err := s.apply(grantCmd(100, 5)); !errors.Is(err, ErrLeaseExists) {
		t.Fatalf("regrant: %v", err)
	}
	if _, err := s.apply(grantCmd(0, 5)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("grant id 0: %v", err)
	}
	if _, err := s.apply(revokeCmd(300)); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	if li, ok, err := s.Lease(100); err != nil || !ok || li != (LeaseInfo{100, 30}) {
		t.Fatalf("Lease(100) = %v %v %v", li, ok, err)
	}
	attach := func(key string, lease int64) {
		s.mustApply(putReq(&pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: lease}))
	}
	attach("a", 100)
	attach("b", 100)
	attach("c", 100)
	attach("d", 200)
	attach("c", 200)    // reattach: leaves lease 100
	s.put("b", "plain") // put without lease detaches
	keys := func(id int64) []string {
		ks, err := s.LeaseKeys(id)
		if err != nil {
			t.Fatal(err)
		}
		out := []string{}
		for _, k := range ks {
			out = append(out, string(k))
		}
		return out
	}
	if got := keys(100); !sameStrings(got, []string{"a"}) {
		t.Errorf("keys(100) = %q", got)
	}
	if got := keys(200); !sameStrings(got, []string{"c", "d"}) {
		t.Errorf("keys(200) = %q", got)
	}
	before, _ := s.Revision()
	w, err := s.Watch([]byte{0}, []byte{0}, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	r := s.mustApply(revokeCmd(200)).GetLeaseRevoke()
	if r.Header.Revision != before+1 {
		t.Errorf("revoke header revision %d, want %d", r.Header.Revision, before+1)
	}
	b := <-w.C()
	if b.Revision != before+1 || len(b.Events) != 2 || string(b.Events[0].Kv.Key) != "c" || string(b.Events[1].Kv.Key) != "d" {
		t.Errorf("revoke events %v", b)
	}
	for _, ev := range b.Events {
		if ev.Type != 1 || ev.Kv.ModRevision != before+1 {
			t.Errorf("event %v", ev)
		}
	}
	if got := s.rangeKeys(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); !sameStrings(got, []string{"a", "b"}) {
		t.Errorf("keys after revoke %q", got)
	}
	if _, ok, _ := s.Lease(200); ok {
		t.Error("lease 200 still exists")
	}
	// Revoking a lease without keys does not raise the revision.
	s.mustApply(grantCmd(300, 1))
	cur, _ := s.Revision()
	s.mustApply(revokeCmd(300))
	if now, _ := s.Revision(); now != cur {
		t.Errorf("empty revoke raised revision %d -> %d", cur, now)
	}
	// Deleting a key detaches it.
	s.mustApply(delCmd("a", "", false))
	if got := keys(100); len(got) != 0 {
		t.Errorf("keys(100) after delete = %q", got)
	}
	ls, err := s.Leases()
	if err != nil || len(ls) != 1 || ls[0] != (LeaseInfo{100, 30}) {
		t.Errorf("Leases() = %v, %v", ls, err)
	}
}

func TestMembers(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	put := func(id uint64, name string) {
		r := s.mustApply(&peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: &peerv1.MemberPut{Id: id, Name: name, PeerUrls: []string{"http://" + name}}}})
		if r.GetEmpty() == nil {
			t.Fatalf("result %v", r)
		}
	}
	put(3, "c")
	put(1, "a")
	put(3, "c2")
	s.mustApply(&peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: &peerv1.MemberPut{Id: 2, Name: "b"}}})
	s.mustApply(&peerv1.Command{Op: &peerv1.Command_MemberDelete{MemberDelete: &peerv1.MemberDelete{Id: 2}}})
	ms, err := s.Members()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Id != 1 || ms[1].Id != 3 || ms[1].Name != "c2" || ms[1].PeerUrls[0] != "http://c2" {
		t.Fatalf("members %v", ms)
	}
	if cur, _ := s.Revision(); cur != 1 {
		t.Errorf("member commands changed revision to %d", cur)
	}
}

func TestLeaseGrantAttachRevokeInOneApply(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.put("x", "1")
	res := s.Apply([]Entry{
		{Index: 10, Term: 1, Cmd: grantCmd(5, 10)},
		{Index: 11, Term: 1, Cmd: putReq(&pb.PutRequest{Key: []byte("a"), Value: []byte("1"), Lease: 5})},
		{Index: 12, Term: 1, Cmd: putReq(&pb.PutRequest{Key: []byte("x"), Value: []byte("2"), Lease: 5})},
		{Index: 13, Term: 1, Cmd: revokeCmd(5)},
		{Index: 14, Term: 1, Cmd: putReq(&pb.PutRequest{Key: []byte("b"), Lease: 5})},
	})
	for i, r := range res[:4] {
		if r.Err != nil {
			t.Fatalf("entry %d: %v", i, r.Err)
		}
	}
	if !errors.Is(res[4].Err, ErrLeaseNotFound) {
		t.Errorf("put on revoked lease: %v", res[4].Err)
	}
	if rev := res[3].Result.GetLeaseRevoke().Header.Revision; rev != 5 {
		t.Errorf("revoke revision %d, want 5", rev)
	}
	if got := s.rangeKeys(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); len(got) != 0 {
		t.Errorf("keys left %q", got)
	}
}
