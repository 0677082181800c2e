package pods

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// ContainerInfo is what the node service shows of a container.
type ContainerInfo struct {
	Status *podsv0.ContainerStatus
	// PodLabels are its pod's labels.
	PodLabels map[string]string
	// Annotations are its OCI spec's (aurae-cri's name the Kubernetes
	// namespace, container name and image).
	Annotations map[string]string
}

// Containers lists the containers, from memory and their bundles' specs,
// in the order of their ids; containers being started are left out.
func (s *Service) Containers() []ContainerInfo {
	type entry struct {
		c      *container
		labels map[string]string
	}
	var all []entry
	s.mu.RLock()
	for _, c := range s.ctrs {
		if p, ok := s.pods[c.podID]; ok && !c.reserved() {
			all = append(all, entry{c, p.spec.GetLabels()})
		}
	}
	s.mu.RUnlock()
	sort.Slice(all, func(i, j int) bool { return all[i].c.id < all[j].c.id })
	out := make([]ContainerInfo, 0, len(all))
	for _, e := range all {
		info := ContainerInfo{Status: e.c.status(), PodLabels: e.labels}
		var sp struct {
			Annotations map[string]string `json:"annotations"`
		}
		if b, err := os.ReadFile(filepath.Join(s.bundleDir(e.c.id), "config.json")); err == nil && json.Unmarshal(b, &sp) == nil {
			info.Annotations = sp.Annotations
		}
		out = append(out, info)
	}
	return out
}
