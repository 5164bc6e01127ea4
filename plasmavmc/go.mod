module plasmacloud.dev/plasmavmc

go 1.26.0

require (
	connectrpc.com/connect v1.21.1
	github.com/digitalocean/go-libvirt v0.0.0-20261013170128-efbbdf578ac8
	github.com/prometheus/client_golang v1.25.0
	google.golang.org/protobuf v1.36.12
	plasmacloud.dev/pkg v0.0.0
	plasmacloud.dev/proto v0.0.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cenkalti/backoff/v5 v5.0.3 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	golang.org/x/crypto v0.48.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace (
	plasmacloud.dev/pkg => ../pkg
	plasmacloud.dev/proto => ../proto
)
