package osinfo

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

// NodesKey is the gRPC metadata key naming the nodes a call is for (as in
// Talos' apid): comma-separated names, or the key repeated.
const NodesKey = "nodes"

// dmesgBuffer bounds the kernel log records of several nodes waiting for a
// slow reader: the nodes' streams wait when it is full.
const dmesgBuffer = 64

// nodesOf returns the nodes the call names, in order, without repeats.
func nodesOf(ctx context.Context) []string {
	md, _ := metadata.FromIncomingContext(ctx)
	var out []string
	seen := map[string]bool{}
	for _, v := range md.Get(NodesKey) {
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// peerCall is a method of the generated client.
type peerCall[Req, Resp proto.Message] func(osapi.OSServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error)

// fanOut answers req on this node when the call names no nodes, else on
// each node named (this one, or a peer) in parallel, each bounded by
// NodeTimeout, and merges the answers: every node's messages with
// metadata.hostname set to the node's name, and for a node that failed one
// message whose metadata.error says why.
func fanOut[Req, Resp proto.Message](ctx context.Context, s *Service, req Req, local func(context.Context, Req) (Resp, error), remote peerCall[Req, Resp]) (Resp, error) {
	nodes := nodesOf(ctx)
	if len(nodes) == 0 {
		return local(ctx, req)
	}
	answers := make([]Resp, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, s.cfg.NodeTimeout)
			defer cancel()
			if node == s.cfg.NodeName {
				answers[i], errs[i] = local(ctx, req)
				return
			}
			c, err := s.conn(ctx, node)
			if err != nil {
				errs[i] = err
				return
			}
			answers[i], errs[i] = remote(osapi.NewOSServiceClient(c.Conn), ctx, req)
		}()
	}
	wg.Wait()
	var zero Resp
	out := zero.ProtoReflect().New()
	field := out.Descriptor().Fields().ByName("messages")
	list := out.Mutable(field).List()
	for i, node := range nodes {
		if errs[i] != nil {
			s.log.Warn("node call failed", "node", node, "error", errs[i])
			m := list.NewElement()
			setMetadata(m.Message(), &commonapi.Metadata{Hostname: node, Error: errs[i].Error()})
			list.Append(m)
			continue
		}
		msgs := answers[i].ProtoReflect().Get(field).List()
		for j := range msgs.Len() {
			m := msgs.Get(j)
			setMetadata(m.Message(), &commonapi.Metadata{Hostname: node})
			list.Append(m)
		}
	}
	return out.Interface().(Resp), nil
}

// setMetadata sets m's metadata field.
func setMetadata(m protoreflect.Message, md *commonapi.Metadata) {
	m.Set(m.Descriptor().Fields().ByName("metadata"), protoreflect.ValueOfMessage(md.ProtoReflect()))
}

// fanOutDmesg streams this node's kernel log, or, when the call names
// nodes, each named node's records as they come, with metadata.hostname;
// a node that fails sends one record with metadata.error.
func (s *Service) fanOutDmesg(req *osapi.DmesgRequest, ss osapi.OSService_DmesgServer) error {
	nodes := nodesOf(ss.Context())
	if len(nodes) == 0 {
		return readKmsg(ss.Context(), req, func(d *commonapi.Data) error {
			d.Metadata = s.meta()
			return ss.Send(d)
		})
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	out := make(chan *commonapi.Data, dmesgBuffer)
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			push := func(d *commonapi.Data) error {
				select {
				case out <- d:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			err := s.dmesgOn(ctx, node, req, func(d *commonapi.Data) error {
				d.Metadata = &commonapi.Metadata{Hostname: node}
				return push(d)
			})
			if err != nil && ctx.Err() == nil {
				s.log.Warn("node call failed", "node", node, "error", err)
				_ = push(&commonapi.Data{Metadata: &commonapi.Metadata{Hostname: node, Error: err.Error()}})
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	for d := range out {
		if err := ss.Send(d); err != nil {
			cancel()
			for range out {
			}
			return err
		}
	}
	return nil
}

// dmesgOn streams the kernel log of one node to send.
func (s *Service) dmesgOn(ctx context.Context, node string, req *osapi.DmesgRequest, send func(*commonapi.Data) error) error {
	if node == s.cfg.NodeName {
		return readKmsg(ctx, req, send)
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.NodeTimeout)
	c, err := s.conn(dctx, node)
	cancel()
	if err != nil {
		return err
	}
	stream, err := osapi.NewOSServiceClient(c.Conn).Dmesg(ctx, req)
	if err != nil {
		return err
	}
	for {
		d, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := send(d); err != nil {
			return err
		}
	}
}
