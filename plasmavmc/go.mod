module plasmacloud.dev/plasmavmc

go 1.26.0

require (
	github.com/digitalocean/go-libvirt v0.0.0-20261013170128-efbbdf578ac8
	plasmacloud.dev/pkg v0.0.0
)

require (
	golang.org/x/crypto v0.48.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace (
	plasmacloud.dev/pkg => ../pkg
	plasmacloud.dev/proto => ../proto
)
