package pods

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// TestListPodsPages lists pods as large as Kubernetes allows (256 KiB of
// annotations each) a page at a time: every pod once, in id order, each
// page within its size budget and page size, the containers with their pod.
func TestListPodsPages(t *testing.T) {
	s := &Service{pods: map[string]*pod{}, ctrs: map[string]*container{}}
	const n = 40
	big := strings.Repeat("a", 256<<10)
	for i := range n {
		id := fmt.Sprintf("pod-%03d", i)
		s.pods[id] = &pod{spec: &podsv0.Pod{Id: id, Annotations: map[string]string{"big": big}}, paths: &podsv0.AllocateResponse{PodId: id}}
		cid := "ctr-" + id
		s.ctrs[cid] = &container{id: cid, podID: id, rec: ctrRecord{ID: cid, PodID: id}}
	}
	s.pods["reserved"] = &pod{spec: &podsv0.Pod{Id: "reserved"}, reserved: true}

	for _, size := range []int32{0, 7, 1000} {
		var seen []string
		token, pages := "", 0
		for {
			resp, err := s.ListPods(context.Background(), &podsv0.ListPodsRequest{PageSize: size, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if b := proto.Size(resp); b > listPageBytes+(300<<10) {
				t.Fatalf("page of %d bytes, budget %d", b, listPageBytes)
			}
			if size > 0 && len(resp.GetPods()) > int(size) {
				t.Fatalf("page of %d pods, asked for %d", len(resp.GetPods()), size)
			}
			for _, p := range resp.GetPods() {
				seen = append(seen, p.GetPod().GetId())
				if cs := p.GetContainers(); len(cs) != 1 || cs[0].GetPodId() != p.GetPod().GetId() {
					t.Fatalf("pod %s containers %v", p.GetPod().GetId(), cs)
				}
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
			if pages > n {
				t.Fatal("paging does not end")
			}
		}
		if len(seen) != n {
			t.Fatalf("page size %d: saw %d pods, want %d: %v", size, len(seen), n, seen)
		}
		for i, id := range seen {
			if want := fmt.Sprintf("pod-%03d", i); id != want {
				t.Fatalf("page size %d: pod %d is %s, want %s", size, i, id, want)
			}
		}
		if pages < 3 {
			t.Errorf("page size %d: %d pages for %d pods of 256 KiB: no size budget", size, pages, n)
		}
	}
}
