package osinfo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// peers keeps one mutual-TLS connection per peer, made on the first call
// that names it and kept until Close: gRPC reconnects it by itself when
// the peer restarts, and a call to a peer that is down fails at once
// (Unavailable) within its own deadline.
type peers struct {
	mu     sync.Mutex
	conns  map[string]*client.Client
	closed bool
}

// conn is the connection to the named peer, dialed (bounded by ctx) when
// there is none yet.
func (s *Service) conn(ctx context.Context, node string) (*client.Client, error) {
	addr, ok := s.cfg.Peers[node]
	if !ok {
		return nil, fmt.Errorf("unknown node %q: not this node (%s) and no --peer names it: %w", node, s.cfg.NodeName, errdefs.ErrNotFound)
	}
	p := &s.peers
	p.mu.Lock()
	if c := p.conns[node]; c != nil || p.closed {
		p.mu.Unlock()
		if c == nil {
			return nil, fmt.Errorf("node %q: the os service is closed: %w", node, errdefs.ErrUnavailable)
		}
		return c, nil
	}
	p.mu.Unlock()
	if !strings.Contains(addr, "://") {
		addr = "tcp://" + addr
	}
	c, err := client.Dial(ctx, addr, client.WithTLS(s.cfg.PeerCert, s.cfg.PeerKey, s.cfg.PeerCA))
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev := p.conns[node]; prev != nil || p.closed {
		// Another call dialed it meanwhile (or Close ran): keep one.
		_ = c.Close()
		if prev == nil {
			return nil, fmt.Errorf("node %q: the os service is closed: %w", node, errdefs.ErrUnavailable)
		}
		return prev, nil
	}
	if p.conns == nil {
		p.conns = map[string]*client.Client{}
	}
	p.conns[node] = c
	s.log.Info("connected to peer", "node", node, "address", addr)
	return c, nil
}

// Close closes the peers' connections.
func (s *Service) Close() error {
	p := &s.peers
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, c := range p.conns {
		errs = append(errs, c.Close())
	}
	p.conns = nil
	return errors.Join(errs...)
}
