package pods

import (
	"context"
	"sort"

	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

const (
	// maxListPageSize is the most pods a ListPods page holds.
	maxListPageSize = 100
	// listPageBytes is the size budget of a ListPods page: a page ends
	// once it holds this much, so that it stays far below the message
	// limits however large the pods' annotations are (the largest pod
	// Kubernetes allows is about 256 KiB of labels and annotations plus
	// its config).
	listPageBytes = 4 << 20
)

// ListPods implements PodService.ListPods, from memory, a page at a time
// in the order of the pods' ids. The page token is the last id of the
// previous page, so pods allocated or freed between pages neither shift
// nor repeat the others.
func (s *Service) ListPods(_ context.Context, req *podsv0.ListPodsRequest) (*podsv0.ListPodsResponse, error) {
	limit := int(req.GetPageSize())
	if limit <= 0 || limit > maxListPageSize {
		limit = maxListPageSize
	}
	after := req.GetPageToken()
	s.mu.RLock()
	var pods []*pod
	for id, p := range s.pods {
		if !p.reserved && (after == "" || id > after) {
			pods = append(pods, p)
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].spec.GetId() < pods[j].spec.GetId() })
	more := len(pods) > limit
	if more {
		pods = pods[:limit]
	}
	byPod := make(map[string][]*container, len(pods))
	for _, p := range pods {
		byPod[p.spec.GetId()] = nil
	}
	for _, c := range s.ctrs {
		if _, ok := byPod[c.podID]; ok && !c.reserved() {
			byPod[c.podID] = append(byPod[c.podID], c)
		}
	}
	s.mu.RUnlock()
	resp := &podsv0.ListPodsResponse{}
	size := 0
	for i, p := range pods {
		ps := p.listStatus()
		cs := byPod[p.spec.GetId()]
		sort.Slice(cs, func(i, j int) bool { return cs[i].id < cs[j].id })
		for _, c := range cs {
			ps.Containers = append(ps.Containers, c.status())
		}
		n := proto.Size(ps)
		if i > 0 && size+n > listPageBytes {
			more = true
			break
		}
		size += n
		resp.Pods = append(resp.Pods, ps)
	}
	if more && len(resp.Pods) > 0 {
		resp.NextPageToken = resp.Pods[len(resp.Pods)-1].GetPod().GetId()
	}
	return resp, nil
}
