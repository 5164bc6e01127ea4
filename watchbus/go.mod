module plasmacloud.dev/watchbus

go 1.26.0

require (
	plasmacloud.dev/pkg v0.0.0
	plasmacloud.dev/proto v0.0.0
)

replace (
	plasmacloud.dev/pkg => ../pkg
	plasmacloud.dev/proto => ../proto
)
