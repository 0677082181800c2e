package image

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
)

// PullImage pulls an image, unpacks it into the snapshotter and returns its
// id. Credentials come from the request; registry endpoints from the
// registry config dir.
func (s *Service) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	id, err := s.Pull(ctx, r.GetImage().GetImage(), r.GetAuth())
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

// Pull pulls ref with the given credentials (nil for anonymous) and returns
// the image id.
func (s *Service) Pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	start := time.Now()
	id, size, err := s.pull(ctx, ref, auth)
	s.metrics.ImagePulled(time.Since(start).Seconds(), size, err != nil)
	return id, err
}

// pull is Pull, which also returns the size of the image pulled.
func (s *Service) pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (_ string, _ int64, retErr error) {
	named, err := NormalizeRef(ref)
	if err != nil {
		return "", 0, err
	}
	name := named.String()
	ctx, cancel := context.WithTimeout(ctx, s.pullTO)
	defer cancel()
	ctx = s.withNamespace(ctx)
	log := s.logger.With("image", name)
	steps := timing.Start()
	ctx, calls := timing.WithCalls(ctx)
	// "unpacked" (pullUnpacked) or "containerd" (containerd's pull).
	path := "unpacked"
	defer func() {
		steps.Log(ctx, log, "pull image steps", append(calls.Attrs("remote"), "path", path, "ok", retErr == nil)...)
	}()

	unlock, err := s.pulls.lock(ctx, name)
	if err != nil {
		return "", 0, fmt.Errorf("pull image %q: wait for another pull: %w", name, err)
	}
	defer unlock()
	steps.Done("lock")

	start := time.Now()
	log.InfoContext(ctx, "pulling image")
	labels := map[string]string{LabelManaged: "managed"}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: s.registryHosts(ctx, auth),
	})
	// One lease holds what the pull writes until the image's records do;
	// it is made while the registry resolves the reference.
	leased := s.pullLease(ctx, log)
	defer leased.release()

	// The image the name pointed at before: if the name moves, that image
	// keeps records of its own.
	prev, err := s.record(ctx, name)
	hadPrev := err == nil
	keepPrev := func(target ocispec.Descriptor) error {
		if !hadPrev || target.Digest == "" || prev.Target.Digest == target.Digest {
			return nil
		}
		if err := s.keepMovedFrom(ctx, prev); err != nil {
			return fmt.Errorf("pull image %q: keep the image it named: %w", name, err)
		}
		hadPrev = false
		return nil
	}

	var target ocispec.Descriptor
	var meta imageMeta
	up, err := s.pullUnpacked(ctx, resolver, name, leased.ctx, steps)
	if err := keepPrev(up.target); err != nil {
		return "", 0, err
	}
	if err == nil {
		target, meta = up.target, up.meta
		s.keepMeta(target.Digest, meta)
		// One record, of the name pulled: the image's repo digest follows
		// from a tag's record (splitRef), its id from its config.
		if err := s.putRecord(ctx, name, target, labels); err != nil {
			return "", 0, fmt.Errorf("pull image %q: record: %w", name, err)
		}
		steps.Done("record")
	} else {
		if ctx.Err() != nil {
			return "", 0, fmt.Errorf("pull image %q: %w", name, err)
		}
		path = "containerd"
		log.DebugContext(ctx, "pull through containerd", "reason", err)
		steps.Done("try_unpacked")
		// containerd's pull makes the name's record.
		if target, meta, err = s.pullContainerd(ctx, log, name, resolver, labels, leased, steps); err != nil {
			return "", 0, err
		}
		// The registry may have moved the name since pullUnpacked
		// resolved it.
		if err := keepPrev(target); err != nil {
			return "", 0, err
		}
	}
	_, repoDigest := splitRef(name, target.Digest.String())
	log.InfoContext(ctx, "pulled image", "id", meta.id, "repo_digest", repoDigest, "size", meta.size, "took", time.Since(start).Round(time.Millisecond))
	return meta.id, meta.size, nil
}

// pullContainerd pulls and unpacks name with containerd's pull, under the
// pull's lease, and reads what pullUnpacked reads of the image.
func (s *Service) pullContainerd(ctx context.Context, log *slog.Logger, name string, resolver remotes.Resolver, labels map[string]string, leased *pullLease, steps *timing.Steps) (ocispec.Descriptor, imageMeta, error) {
	lctx, err := leased.ctx()
	if err != nil {
		return ocispec.Descriptor{}, imageMeta{}, fmt.Errorf("pull image %q: %w", name, err)
	}
	img, err := s.puller.Pull(lctx, name,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(s.snapshotter),
		containerd.WithPullLabels(labels),
	)
	if err != nil {
		err = fmt.Errorf("pull image %q: %w", name, classifyPullError(err))
		log.WarnContext(ctx, "pull failed", "error", err)
		return ocispec.Descriptor{}, imageMeta{}, err
	}
	steps.Done("pull_unpack")
	s.idx.put(s.idx.begin(), img.Metadata())
	cfg, err := img.Config(ctx)
	if err != nil {
		return ocispec.Descriptor{}, imageMeta{}, fmt.Errorf("pull image %q: config descriptor: %w", name, err)
	}
	// What an ImageStatus or a container create reads of the image (its
	// config, size, chain id) is read now and kept: the call that follows
	// a pull finds it.
	m, err := s.readMeta(ctx, img, cfg)
	if err != nil {
		log.DebugContext(ctx, "read the pulled image's config", "error", err)
		m = imageMeta{id: cfg.Digest.String()}
	}
	steps.Done("meta")
	return img.Target(), m, nil
}

// pullLease is the lease of one pull, created in the background from the
// start of the pull; ctx waits for it.
type pullLease struct {
	s    *Service
	done chan struct{}
	lctx context.Context
	err  error
	drop func(context.Context) error
	log  *slog.Logger
}

func (s *Service) pullLease(ctx context.Context, log *slog.Logger) *pullLease {
	l := &pullLease{s: s, done: make(chan struct{}), log: log}
	go func() {
		defer close(l.done)
		l.lctx, l.drop, l.err = s.client.WithLease(ctx)
		if l.err != nil {
			l.err = fmt.Errorf("lease: %w", l.err)
		}
	}()
	return l
}

// ctx is the pull's context carrying the lease.
func (l *pullLease) ctx() (context.Context, error) {
	<-l.done
	return l.lctx, l.err
}

// release deletes the lease off the pull's path: what it held is held by
// the image's records by then, or is garbage. A removal, which collects
// the garbage, waits for the deletions begun before it (awaitLeaseDrops),
// and so does Close; a lease a crash leaves expires (containerd's client
// gives it a day).
func (l *pullLease) release() {
	dropped := make(chan struct{})
	l.s.dropsMu.Lock()
	l.s.drops[l] = dropped
	l.s.dropsMu.Unlock()
	go func() {
		defer func() {
			l.s.dropsMu.Lock()
			delete(l.s.drops, l)
			l.s.dropsMu.Unlock()
			close(dropped)
		}()
		<-l.done
		if l.err != nil {
			return
		}
		if l.s.beforeLeaseDrop != nil {
			l.s.beforeLeaseDrop()
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(l.lctx), l.s.callTO)
		defer cancel()
		if err := l.drop(ctx); err != nil {
			l.log.WarnContext(ctx, "delete the pull's lease", "error", err)
		}
	}()
}

// awaitLeaseDrops waits for the pull leases being deleted now.
func (s *Service) awaitLeaseDrops() {
	s.dropsMu.Lock()
	pending := make([]chan struct{}, 0, len(s.drops))
	for _, ch := range s.drops {
		pending = append(pending, ch)
	}
	s.dropsMu.Unlock()
	for _, ch := range pending {
		<-ch
	}
}

// keepMovedFrom gives the image prev points at records of its own (by id
// and by repo digest, as containerd's CRI plugin keeps them) before the
// name of prev moves to another image: an image in use stays listed, and
// held, when its tag moves on.
func (s *Service) keepMovedFrom(ctx context.Context, prev images.Image) error {
	meta, err := s.metaFor(ctx, prev)
	if err != nil {
		// Its content is gone: nothing to keep.
		s.logger.DebugContext(ctx, "moved image record has no content", "image", prev.Name, "error", err)
		return nil
	}
	names := []string{meta.id}
	if _, dgst := splitRef(prev.Name, prev.Target.Digest.String()); dgst != "" && dgst != prev.Name {
		names = append(names, dgst)
	}
	var g errgroup.Group
	for _, n := range names {
		g.Go(func() error { return s.putRecord(ctx, n, prev.Target, prev.Labels) })
	}
	return g.Wait()
}

// putRecord creates or points an image record at target.
func (s *Service) putRecord(ctx context.Context, name string, target ocispec.Descriptor, labels map[string]string) error {
	store := s.client.ImageService()
	rec := images.Image{Name: name, Target: target, Labels: labels}
	created, err := store.Create(ctx, rec)
	if err == nil {
		s.idx.put(s.idx.begin(), created)
		return nil
	}
	if !errdefs.IsAlreadyExists(err) {
		return err
	}
	old, err := store.Get(ctx, name)
	if err != nil {
		return err
	}
	if old.Target.Digest == target.Digest && old.Labels[LabelManaged] == labels[LabelManaged] {
		return nil
	}
	updated, err := store.Update(ctx, rec, "target", "labels."+LabelManaged)
	if err != nil {
		return err
	}
	s.idx.put(s.idx.begin(), updated)
	return nil
}

// registryHosts configures registry endpoints from the hosts.toml dir, with
// the request's credentials.
func (s *Service) registryHosts(ctx context.Context, auth *runtimeapi.AuthConfig) docker.RegistryHosts {
	opts := config.HostOptions{
		Credentials: func(host string) (string, string, error) {
			return parseAuth(auth, host)
		},
		// Each registry request counts in the pull's step timing
		// ("remote_ms.registry/<method>", beside containerd's calls).
		UpdateClient: func(c *http.Client) error {
			c.Transport = timedTransport{cmp.Or[http.RoundTripper](c.Transport, http.DefaultTransport)}
			return nil
		},
	}
	if s.hostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(s.hostsDir)
	}
	return config.ConfigureHosts(ctx, opts)
}

// parseAuth returns the username and secret of a CRI AuthConfig for host:
// username and password, an identity token, or a base64 "user:password" auth
// string. Credentials for another server address are not sent.
func parseAuth(auth *runtimeapi.AuthConfig, host string) (string, string, error) {
	if auth == nil {
		return "", "", nil
	}
	if addr := auth.GetServerAddress(); addr != "" {
		h := addr
		if strings.Contains(addr, "://") {
			u, err := url.Parse(addr)
			if err != nil {
				return "", "", fmt.Errorf("parse auth server address %q: %w: %w", addr, errdefs.ErrInvalidArgument, err)
			}
			h = u.Host
		}
		h = strings.TrimSuffix(h, "/")
		if h != host && (host != "registry-1.docker.io" || (h != "docker.io" && h != "index.docker.io")) {
			return "", "", nil
		}
	}
	switch {
	case auth.GetUsername() != "":
		return auth.GetUsername(), auth.GetPassword(), nil
	case auth.GetIdentityToken() != "":
		return "", auth.GetIdentityToken(), nil
	case auth.GetAuth() != "":
		dec, err := base64.StdEncoding.DecodeString(auth.GetAuth())
		if err != nil {
			return "", "", fmt.Errorf("decode auth: %w: %w", errdefs.ErrInvalidArgument, err)
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return "", "", fmt.Errorf("decoded auth is not user:password: %w", errdefs.ErrInvalidArgument)
		}
		return user, strings.Trim(pass, "\x00"), nil
	}
	return "", "", nil
}

// classifyPullError gives registry failures an errdefs class: a missing
// image is NotFound, rejected credentials Unauthenticated, a forbidden one
// PermissionDenied.
func classifyPullError(err error) error {
	if status, ok := errors.AsType[remoteerrors.ErrUnexpectedStatus](err); ok {
		switch status.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("%w: %w", errdefs.ErrUnauthenticated, err)
		case http.StatusForbidden:
			return fmt.Errorf("%w: %w", errdefs.ErrPermissionDenied, err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
		case http.StatusTooManyRequests:
			return fmt.Errorf("%w: %w", errdefs.ErrResourceExhausted, err)
		}
	}
	if errors.Is(err, docker.ErrInvalidAuthorization) {
		return fmt.Errorf("%w: %w", errdefs.ErrUnauthenticated, err)
	}
	return err
}

// timedTransport adds the time of each registry request to the calls of
// the pull it serves (timing.CallsFrom).
type timedTransport struct{ next http.RoundTripper }

func (t timedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	timing.CallsFrom(req.Context()).Add("registry/"+req.Method, time.Since(start))
	return resp, err
}
