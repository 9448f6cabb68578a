// Package hypervisor is chime's libvirt driver: it defines, starts, stops,
// undefines and live-migrates the qemu domains of VMs, tags each domain with
// chime metadata (VM id and placement generation), and streams lifecycle events.
//
// It talks to libvirtd over its RPC protocol (digitalocean/go-libvirt), bounds
// every call with a timeout (go-libvirt has none), and keeps the connection
// alive: when libvirtd goes away the Driver backs off, reconnects, resubscribes
// to lifecycle events and reports EventReconnected so its user can do a full
// reconcile. Domains without chime metadata are listed but never overwritten.
package hypervisor
