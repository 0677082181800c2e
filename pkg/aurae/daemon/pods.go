package daemon

import "context"

// addPods adds the PodService (once it exists in this tree).
func (d *Daemon) addPods(ctx context.Context, cfg Config) error { return nil }
