package bus

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

func durationpbNew(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// wire returns m as the subscriber decodes it: events the bus sent pre-encoded (as
// unknown fields) become Events again.
func wire(m *watchbusv1.SubscribeResponse) *watchbusv1.SubscribeResponse {
	if len(m.ProtoReflect().GetUnknown()) == 0 {
		return m
	}
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	out := new(watchbusv1.SubscribeResponse)
	if err := proto.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}

// testutilCount sums every child of a counter vector.
func testutilCount(c *prometheus.CounterVec) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err == nil {
			sum += d.GetCounter().GetValue()
		}
	}
	return sum
}
