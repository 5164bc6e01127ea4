// Package etcdcompat proves that etcd's own tools work against ChainFire unchanged: etcdctl
// 3.4 (Debian's etcd-client) and go.etcd.io/etcd/client/v3 against a real 3-member cluster.
// It lives in a module of its own so that etcd's client and its gRPC dependency never enter
// ChainFire's build.
package etcdcompat
