// Module watchbus is PlasmaCloud's event propagation service: it fans ChainFire watches
// out to many subscribers with resume-from-revision, bookmarks, bounded buffers and a
// slow-consumer policy (docs/watchbus/).
package watchbus
