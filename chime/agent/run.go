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
	a, err := New(cfg, drv)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}
