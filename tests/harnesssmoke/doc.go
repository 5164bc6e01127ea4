// Package harnesssmoke is a smoke test of pkg/harness's network namespaces from outside
// ChainFire's module: two busybox web servers, each in a host of a harness.Network, that
// a partition separates and Heal reconnects. It shows the minimum another service's test
// needs (a go.mod requiring plasmacloud.dev/pkg, root, ip, nft and busybox) and fails
// first when the machine cannot run network faults at all.
//
// Run it as root: go test ./tests/harnesssmoke/...
package harnesssmoke
