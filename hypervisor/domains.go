package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

// statePollInterval is how often Shutdown looks whether the guest is off.
const statePollInterval = 200 * time.Millisecond

// Capacity returns the host's CPU count and memory in MiB.
func (d *Driver) Capacity(ctx context.Context) (vcpus int, memoryMiB int, err error) {
	var memKiB uint64
	var cpus int32
	err = d.call(ctx, "node info", func(lv *libvirt.Libvirt) error {
		var err error
		_, memKiB, cpus, _, _, _, _, _, err = lv.NodeGetInfo()
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("host capacity: %w", err)
	}
	return int(cpus), int(memKiB / 1024), nil
}

// List returns every domain libvirt knows (running and defined-only), with
// its state and chime metadata. A domain with malformed chime metadata is
// listed with Meta nil (so it is never touched) and logged.
func (d *Driver) List(ctx context.Context) ([]Domain, error) {
	var doms []libvirt.Domain
	err := d.call(ctx, "list domains", func(lv *libvirt.Libvirt) error {
		var err error
		doms, _, err = lv.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive|libvirt.ConnectListDomainsInactive)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	out := make([]Domain, 0, len(doms))
	for _, dom := range doms {
		info, err := d.describe(ctx, dom)
		if errors.Is(err, ErrNotFound) {
			continue // undefined since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("list domains: %w", err)
		}
		out = append(out, info)
	}
	return out, nil
}

// Get returns one domain by UUID, or an error wrapping ErrNotFound.
func (d *Driver) Get(ctx context.Context, id string) (*Domain, error) {
	dom, err := d.lookup(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("get domain %s: %w", id, err)
	}
	info, err := d.describe(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("get domain %s: %w", id, err)
	}
	return &info, nil
}

// Define defines the domain of spec, or redefines it with the new spec and
// metadata. It refuses (ErrForeign) to redefine a domain with the same UUID
// that carries no chime metadata. Redefining a running domain changes its
// persistent definition (effective at next start) and its live metadata.
func (d *Driver) Define(ctx context.Context, spec DomainSpec) error {
	domXML, err := DomainXML(spec, d.domainType)
	if err != nil {
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	}
	existing, err := d.lookup(ctx, spec.VMID)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	default:
		var cur string
		err := d.call(ctx, "get domain xml", func(lv *libvirt.Libvirt) error {
			var err error
			cur, err = lv.DomainGetXMLDesc(existing, libvirt.DomainXMLInactive)
			return err
		})
		if err != nil {
			return fmt.Errorf("define vm %s: %w", spec.VMID, mapNotFound(err))
		}
		meta, err := ParseMeta(cur)
		if err != nil || meta == nil {
			return fmt.Errorf("define vm %s: domain %q has the same uuid: %w", spec.VMID, existing.Name, ErrForeign)
		}
	}
	var dom libvirt.Domain
	err = d.call(ctx, "define domain", func(lv *libvirt.Libvirt) error {
		var err error
		dom, err = lv.DomainDefineXML(domXML)
		return err
	})
	if err != nil {
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	}
	state, _, err := d.state(ctx, dom)
	if err != nil {
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	}
	if isActive(state) {
		// The running instance keeps its old definition until it restarts;
		// its metadata must still say which placement it belongs to now.
		err = d.call(ctx, "set live metadata", func(lv *libvirt.Libvirt) error {
			return lv.DomainSetMetadata(dom, int32(libvirt.DomainMetadataElement),
				libvirt.OptString{metaElementBare(Meta{VMID: spec.VMID, Generation: spec.Generation})},
				libvirt.OptString{metaPrefix}, libvirt.OptString{MetaNamespace}, libvirt.DomainAffectLive)
		})
		if err != nil {
			return fmt.Errorf("define vm %s: update running domain: %w", spec.VMID, mapNotFound(err))
		}
	}
	d.log.Info("defined domain", "uuid", spec.VMID, "name", DomainName(spec.Name), "generation", spec.Generation)
	return nil
}

// Start starts a defined domain. A domain that is already running is left alone.
//
// It is on the path of every restart after a crash (issue 14), so it asks
// libvirt no more than it must: the lookup, then the create. libvirt
// refuses to create a running domain (operation invalid), and only then is
// the state read, to tell "already running" from a real failure.
func (d *Driver) Start(ctx context.Context, id string) error {
	dom, err := d.lookup(ctx, id)
	if err != nil {
		return fmt.Errorf("start domain %s: %w", id, err)
	}
	err = d.call(ctx, "create domain", func(lv *libvirt.Libvirt) error { return lv.DomainCreate(dom) })
	if err != nil {
		// Running already, or someone else started it meanwhile.
		if st, _, serr := d.state(ctx, dom); serr == nil && isActive(st) {
			return nil
		}
		if diskLocked(err) {
			d.log.Warn("start refused: a disk of the domain is locked by another qemu", "uuid", id, "name", dom.Name, "error", err)
			return fmt.Errorf("start domain %s: %w: %w", id, ErrDiskLocked, err)
		}
		return fmt.Errorf("start domain %s: %w", id, mapNotFound(err))
	}
	d.log.Info("started domain", "uuid", id, "name", dom.Name)
	return nil
}

// Shutdown asks the guest to power off (ACPI), waits up to grace, then
// destroys it. A domain that is not running is left alone.
func (d *Driver) Shutdown(ctx context.Context, id string, grace time.Duration) error {
	dom, err := d.lookup(ctx, id)
	if err != nil {
		return fmt.Errorf("shut down domain %s: %w", id, err)
	}
	state, _, err := d.state(ctx, dom)
	if err != nil {
		return fmt.Errorf("shut down domain %s: %w", id, err)
	}
	if !isActive(state) {
		return nil
	}
	err = d.call(ctx, "shutdown domain", func(lv *libvirt.Libvirt) error {
		return lv.DomainShutdownFlags(dom, libvirt.DomainShutdownAcpiPowerBtn)
	})
	if err != nil {
		d.log.Debug("acpi shutdown refused; destroying", "uuid", id, "error", err)
	} else {
		deadline := time.NewTimer(grace)
		defer deadline.Stop()
		tick := time.NewTicker(statePollInterval)
		defer tick.Stop()
	wait:
		for {
			st, _, err := d.state(ctx, dom)
			if errors.Is(err, ErrNotFound) {
				return nil // a transient domain vanishes when it stops
			}
			if err != nil {
				return fmt.Errorf("shut down domain %s: %w", id, err)
			}
			if !isActive(st) {
				d.log.Info("domain shut down", "uuid", id, "name", dom.Name)
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("shut down domain %s: %w", id, ctx.Err())
			case <-deadline.C:
				break wait
			case <-tick.C:
			}
		}
		d.log.Info("guest did not power off in time; destroying", "uuid", id, "grace", grace)
	}
	return d.destroy(ctx, id, dom)
}

// Destroy stops a domain's qemu process at once. A domain that is not running
// is left alone.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	dom, err := d.lookup(ctx, id)
	if err != nil {
		return fmt.Errorf("destroy domain %s: %w", id, err)
	}
	return d.destroy(ctx, id, dom)
}

func (d *Driver) destroy(ctx context.Context, id string, dom libvirt.Domain) error {
	state, _, err := d.state(ctx, dom)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("destroy domain %s: %w", id, err)
	}
	if !isActive(state) {
		return nil
	}
	err = d.call(ctx, "destroy domain", func(lv *libvirt.Libvirt) error { return lv.DomainDestroy(dom) })
	if err != nil {
		st, _, serr := d.state(ctx, dom)
		if errors.Is(serr, ErrNotFound) || (serr == nil && !isActive(st)) {
			return nil // it stopped by itself meanwhile
		}
		return fmt.Errorf("destroy domain %s: %w", id, mapNotFound(err))
	}
	d.log.Info("destroyed domain", "uuid", id, "name", dom.Name)
	return nil
}

// Undefine destroys a running domain and removes its definition. A missing
// domain is not an error. Disk images are never deleted.
func (d *Driver) Undefine(ctx context.Context, id string) error {
	dom, err := d.lookup(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("undefine domain %s: %w", id, err)
	}
	if err := d.destroy(ctx, id, dom); err != nil {
		return fmt.Errorf("undefine domain %s: %w", id, err)
	}
	err = d.call(ctx, "undefine domain", func(lv *libvirt.Libvirt) error {
		return lv.DomainUndefineFlags(dom, libvirt.DomainUndefineManagedSave|
			libvirt.DomainUndefineSnapshotsMetadata|libvirt.DomainUndefineCheckpointsMetadata|
			libvirt.DomainUndefineNvram)
	})
	if err != nil && !libvirt.IsNotFound(err) {
		return fmt.Errorf("undefine domain %s: %w", id, err)
	}
	d.log.Info("undefined domain", "uuid", id, "name", dom.Name)
	return nil
}

// Migrate live-migrates a running domain to another libvirtd, peer to peer:
// this libvirtd connects to destURI (e.g. qemu+tcp://10.0.0.2/system) and
// streams memory to migrateURI (e.g. tcp://10.0.0.2). migrateURI is required:
// libvirt's default uses the destination's hostname, which hosts sharing one
// machine (network namespaces) have in common. On success the domain is
// defined and running on the destination and gone from here. The call is
// bounded by ctx and MigrateTimeout; when either ends first the migration
// job is aborted and the domain keeps running here.
func (d *Driver) Migrate(ctx context.Context, id, destURI, migrateURI string) error {
	if destURI == "" || migrateURI == "" {
		return fmt.Errorf("migrate domain %s: destination uri and migration uri are both required", id)
	}
	dom, err := d.lookup(ctx, id)
	if err != nil {
		return fmt.Errorf("migrate domain %s: %w", id, err)
	}
	c := d.current()
	if c == nil {
		return fmt.Errorf("migrate domain %s: %w", id, ErrDisconnected)
	}
	params := []libvirt.TypedParam{
		{Field: libvirt.MigrateParamURI, Value: *libvirt.NewTypedParamValueString(migrateURI)},
	}
	flags := libvirt.MigrateLive | libvirt.MigratePeer2peer | libvirt.MigratePersistDest | libvirt.MigrateUndefineSource
	d.log.Info("migrating domain", "uuid", id, "name", dom.Name, "dest", destURI, "migrate_uri", migrateURI)
	start := time.Now()

	done := make(chan error, 1)
	go func() {
		_, err := c.lv.DomainMigratePerform3Params(dom, libvirt.OptString{destURI}, params, nil, flags)
		done <- err
	}()
	timer := time.NewTimer(d.cfg.MigrateTimeout)
	defer timer.Stop()
	var why error
	select {
	case err := <-done:
		if err != nil {
			if !c.lv.IsConnected() {
				err = fmt.Errorf("%w: %w", ErrDisconnected, err)
			}
			return fmt.Errorf("migrate domain %s to %s: %w", id, destURI, mapNotFound(err))
		}
		d.log.Info("migrated domain", "uuid", id, "dest", destURI, "took", time.Since(start))
		return nil
	case <-timer.C:
		why = fmt.Errorf("no result within %s", d.cfg.MigrateTimeout)
	case <-ctx.Done():
		why = ctx.Err()
	}

	// Abort the job; the perform call then returns with an error. If libvirtd
	// does not even answer the abort, the connection is dropped.
	d.log.Warn("aborting migration", "uuid", id, "reason", why)
	abortCtx, cancel := context.WithTimeout(context.Background(), d.cfg.CallTimeout)
	defer cancel()
	abortErr := d.callOn(abortCtx, c, "abort migration", d.cfg.CallTimeout, func(lv *libvirt.Libvirt) error {
		return lv.DomainAbortJob(dom)
	})
	select {
	case err := <-done:
		if err == nil {
			// It completed just before the abort arrived.
			d.log.Info("migrated domain", "uuid", id, "dest", destURI, "took", time.Since(start))
			return nil
		}
	case <-abortCtx.Done():
		c.abort()
	}
	if abortErr != nil {
		return fmt.Errorf("migrate domain %s to %s: %w (abort failed: %v)", id, destURI, why, abortErr)
	}
	return fmt.Errorf("migrate domain %s to %s: aborted: %w", id, destURI, why)
}

// lookup finds a domain by UUID; ErrNotFound when libvirt has none.
func (d *Driver) lookup(ctx context.Context, id string) (libvirt.Domain, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return libvirt.Domain{}, fmt.Errorf("domain uuid %q: %w", id, err)
	}
	var dom libvirt.Domain
	err = d.call(ctx, "lookup domain", func(lv *libvirt.Libvirt) error {
		var err error
		dom, err = lv.DomainLookupByUUID(libvirt.UUID(u))
		return err
	})
	return dom, mapNotFound(err)
}

// state returns libvirt's raw state and reason of dom.
func (d *Driver) state(ctx context.Context, dom libvirt.Domain) (int32, int32, error) {
	var state, reason int32
	err := d.call(ctx, "get domain state", func(lv *libvirt.Libvirt) error {
		var err error
		state, reason, err = lv.DomainGetState(dom, 0)
		return err
	})
	return state, reason, mapNotFound(err)
}

// describe reads a domain's state and chime metadata.
func (d *Driver) describe(ctx context.Context, dom libvirt.Domain) (Domain, error) {
	id := uuid.UUID(dom.UUID).String()
	state, reason, err := d.state(ctx, dom)
	if err != nil {
		return Domain{}, fmt.Errorf("domain %s: %w", id, err)
	}
	var domXML string
	err = d.call(ctx, "get domain xml", func(lv *libvirt.Libvirt) error {
		var err error
		domXML, err = lv.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		return Domain{}, fmt.Errorf("domain %s: %w", id, mapNotFound(err))
	}
	meta, err := ParseMeta(domXML)
	if err != nil {
		d.log.Warn("domain has malformed chime metadata; treating it as foreign", "uuid", id, "name", dom.Name, "error", err)
		meta = nil
	}
	st, why := mapState(state, reason)
	return Domain{UUID: id, Name: dom.Name, State: st, Reason: why, Meta: meta}, nil
}

// diskLocked reports whether a failed start was refused for a disk in use
// elsewhere. virtlockd refuses a lease with VIR_ERR_RESOURCE_BUSY
// ("Lockspace resource '…' is locked"); qemu's own image lock, which on a
// shared filesystem can fire first because qemu opens its images before
// libvirt acquires the leases (at CPU start), fails the launch with an
// internal error whose text names the lock.
func diskLocked(err error) bool {
	var lerr libvirt.Error
	if !errors.As(err, &lerr) {
		return false
	}
	if libvirt.ErrorNumber(lerr.Code) == libvirt.ErrResourceBusy && strings.Contains(lerr.Message, "Lockspace resource") {
		return true
	}
	return strings.Contains(lerr.Message, `Failed to get "write" lock`) || strings.Contains(lerr.Message, `Failed to get "consistent read" lock`)
}

// mapNotFound wraps libvirt's "no domain" error in ErrNotFound.
func mapNotFound(err error) error {
	if err != nil && libvirt.IsNotFound(err) && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
