// Module plasmavmc is PlasmaCloud's VM control plane: the controller (API, scheduler, HA)
// and the per-host agent driving QEMU through libvirt (docs/plasmavmc/).
package plasmavmc
