package agent

import (
	"context"
	"fmt"

	"github.com/chime-ha/chime/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// Run runs the agent until ctx ends: it opens the local state and libvirt,
// then hands over to (*Agent).Run.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "agent"})
	}
	drv, err := hypervisor.Open(ctx, hypervisor.Config{URI: cfg.LibvirtURI, DomainType: cfg.DomainType, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("open libvirt %s: %w", cfg.LibvirtURI, err)
	}
	defer drv.Close()
	var opts []Option
	if cfg.WatchdogDevice != "" {
		wd, err := newWatchdog(cfg.WatchdogDevice)
		if err != nil {
			return err
		}
		opts = append(opts, WithWatchdog(wd))
	} else if cfg.IsolationResponse == "stop" {
		cfg.Logger.Warn("isolation response stop without --watchdog: a hung or killed agent cannot stop its VMs, and the servers will count the lease all the same")
	}
	a, err := New(cfg, drv, opts...)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}
